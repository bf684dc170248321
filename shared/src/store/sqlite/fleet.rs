//! Agents, workers and the paused state (`crate::db::{agents, workers, control}` are the
//! specification).

use serde_json::Value;
use std::time::Duration;

use super::SqliteStore;
use super::rows;
use crate::Result;
use crate::domain::{Agent, WorkerInfo};
use crate::store::{Heartbeat, LIVE_WINDOW};

/// Stopped workers stay listed this long after their last heartbeat.
const STOPPED_LISTED: Duration = Duration::from_secs(3600);

impl SqliteStore {
    pub(super) async fn put_agent(
        &self,
        name: &str,
        endpoint: &str,
        meta: &Value,
    ) -> Result<Agent> {
        let mut conn = self.writer().await?;
        let agent = sqlx::query(
            "insert into agents (name, endpoint, meta, created_at, updated_at)
             values (?1, ?2, ?3, ?4, ?4)
             on conflict (name) do update set endpoint = excluded.endpoint, meta = excluded.meta,
                 updated_at = excluded.updated_at
             returning name, endpoint, meta, created_at, updated_at",
        )
        .bind(name)
        .bind(endpoint)
        .bind(rows::json_text(meta))
        .bind(rows::now())
        .try_map(rows::agent)
        .fetch_one(&mut *conn)
        .await?;
        Ok(agent)
    }

    pub(super) async fn remove_agent(&self, name: &str) -> Result<bool> {
        let mut conn = self.writer().await?;
        let deleted = sqlx::query("delete from agents where name = ?1")
            .bind(name)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    pub(super) async fn list_agents(&self) -> Result<Vec<Agent>> {
        Ok(sqlx::query(
            "select name, endpoint, meta, created_at, updated_at from agents
             order by name limit 10000",
        )
        .try_map(rows::agent)
        .fetch_all(&self.readers)
        .await?)
    }

    pub(super) async fn get_agent(&self, name: &str) -> Result<Option<Agent>> {
        Ok(sqlx::query(
            "select name, endpoint, meta, created_at, updated_at from agents where name = ?1",
        )
        .bind(name)
        .try_map(rows::agent)
        .fetch_optional(&self.readers)
        .await?)
    }

    pub(super) async fn list_agent_names(&self, limit: i64) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("select name from agents order by name limit ?1")
                .bind(limit.max(0))
                .fetch_all(&self.readers)
                .await?,
        )
    }

    pub(super) async fn get_paused(&self) -> Result<bool> {
        Ok(
            sqlx::query_scalar("select paused from control where id = 1")
                .fetch_one(&self.readers)
                .await?,
        )
    }

    pub(super) async fn put_paused(&self, paused: bool, changed_by: &str) -> Result<bool> {
        let mut conn = self.writer().await?;
        let stored = sqlx::query_scalar(
            "update control set paused = ?1, changed_by = ?2, changed_at = ?3 where id = 1
             returning paused",
        )
        .bind(paused)
        .bind(changed_by)
        .bind(rows::now())
        .fetch_one(&mut *conn)
        .await?;
        Ok(stored)
    }

    /// Workers not stopped, plus those seen in the last hour, newest heartbeat first.
    pub(super) async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        Ok(sqlx::query(
            "select id, host, version, started_at, last_seen, paused, in_flight, processed,
                    stopped_at
             from workers
             where stopped_at is null or last_seen > ?1
             order by last_seen desc limit 1000",
        )
        .bind(rows::before(rows::now(), STOPPED_LISTED))
        .try_map(rows::worker)
        .fetch_all(&self.readers)
        .await?)
    }

    pub(super) async fn count_live_workers(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "select count(*) from workers where stopped_at is null and last_seen > ?1",
        )
        .bind(rows::before(rows::now(), LIVE_WINDOW))
        .fetch_one(&self.readers)
        .await?)
    }

    /// Register a worker at start, or refresh it after a restart with the same id.
    pub(super) async fn put_worker(&self, id: &str, host: &str, version: &str) -> Result<()> {
        let mut conn = self.writer().await?;
        sqlx::query(
            "insert into workers (id, host, version, started_at, last_seen)
             values (?1, ?2, ?3, ?4, ?4)
             on conflict (id) do update set host = excluded.host, version = excluded.version,
                 started_at = excluded.started_at, last_seen = excluded.last_seen,
                 stopped_at = null, in_flight = 0, processed = 0",
        )
        .bind(id)
        .bind(host)
        .bind(version)
        .bind(rows::now())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub(super) async fn beat(&self, beat: &Heartbeat<'_>) -> Result<()> {
        let mut conn = self.writer().await?;
        sqlx::query(
            "update workers set last_seen = ?2, paused = ?3, in_flight = ?4, processed = ?5
             where id = ?1",
        )
        .bind(beat.worker_id)
        .bind(rows::now())
        .bind(beat.paused)
        .bind(beat.in_flight)
        .bind(beat.processed)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Mark a worker stopped after a clean shutdown.
    pub(super) async fn stop_worker(&self, id: &str) -> Result<()> {
        let mut conn = self.writer().await?;
        sqlx::query(
            "update workers set stopped_at = ?2, last_seen = ?2, in_flight = 0 where id = ?1",
        )
        .bind(id)
        .bind(rows::now())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
