//! What the dashboard reads and its sessions (`crate::db::ui` is the specification). The
//! indexes are named, as in the backlog: without statistics SQLite may pick another one. The
//! last-hour counts repeat the status list of the partial `tasks_finished_idx`: SQLite matches
//! an index's predicate only word for word.

use std::time::Duration;
use uuid::Uuid;

use super::SqliteStore;
use super::rows::{self, task_columns};
use crate::Result;
use crate::domain::{Attempt, Task};
use crate::store::{AgentOutcomes, Overview, UiSession, uuid_floor};

impl SqliteStore {
    pub(super) async fn list_task_attempts(&self, id: Uuid, limit: i64) -> Result<Vec<Attempt>> {
        Ok(sqlx::query(
            "select a.id, a.task_id, a.attempt, a.agent, t.command, a.worker_id, a.outcome,
                    a.error, a.started_at, a.finished_at
             from task_attempts a join tasks t on t.id = a.task_id
             where a.task_id = ?1
             order by a.attempt limit ?2",
        )
        .bind(id)
        .bind(limit)
        .try_map(rows::attempt)
        .fetch_all(&self.readers)
        .await?)
    }

    pub(super) async fn get_task_by_key(&self, key: &str) -> Result<Option<Task>> {
        Ok(sqlx::query(concat!(
            "select ",
            task_columns!(),
            " from tasks where idempotency_key = ?1"
        ))
        .bind(key)
        .try_map(rows::task)
        .fetch_optional(&self.readers)
        .await?)
    }

    pub(super) async fn count_overview(&self, cap: i64) -> Result<Overview> {
        let hour_ago = rows::before(rows::now(), Duration::from_secs(3600));
        let counts: (i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
            "select
                 (select count(*) from (select 1 from tasks indexed by tasks_status_id_idx
                                        where status = 'queued' limit ?1)),
                 (select count(*) from (select 1 from tasks indexed by tasks_status_id_idx
                                        where status = 'running' limit ?1)),
                 (select count(*) from (select 1 from tasks indexed by tasks_status_id_idx
                                        where status = 'succeeded' limit ?1)),
                 (select count(*) from (select 1 from tasks indexed by tasks_status_id_idx
                                        where status = 'failed' limit ?1)),
                 (select count(*) from (select 1 from tasks indexed by tasks_status_id_idx
                                        where status = 'cancelled' limit ?1)),
                 (select count(*) from (select 1 from tasks indexed by tasks_finished_idx
                                        where status = 'succeeded' and finished_at > ?2
                                          and status in ('succeeded', 'failed', 'cancelled')
                                        limit ?1)),
                 (select count(*) from (select 1 from tasks indexed by tasks_finished_idx
                                        where status = 'failed' and finished_at > ?2
                                          and status in ('succeeded', 'failed', 'cancelled')
                                        limit ?1))",
        )
        .bind(cap)
        .bind(hour_ago)
        .fetch_one(&self.readers)
        .await?;
        Ok(Overview {
            by_status: [counts.0, counts.1, counts.2, counts.3, counts.4],
            succeeded_last_hour: counts.5,
            failed_last_hour: counts.6,
        })
    }

    pub(super) async fn count_agent_outcomes(
        &self,
        window: Duration,
        cap: i64,
        limit: i64,
    ) -> Result<Vec<AgentOutcomes>> {
        let since = chrono::Utc::now()
            - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::zero());
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "select a.name,
                    (select count(*) from (select 1 from tasks t
                                           indexed by tasks_agent_status_id_idx
                                           where t.agent = a.name and t.status = 'succeeded'
                                             and t.id >= ?1 limit ?2)),
                    (select count(*) from (select 1 from tasks t
                                           indexed by tasks_agent_status_id_idx
                                           where t.agent = a.name and t.status = 'failed'
                                             and t.id >= ?1 limit ?2))
             from (select name from agents order by name limit ?3) a
             order by a.name",
        )
        .bind(uuid_floor(since))
        .bind(cap)
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(agent, succeeded, failed)| AgentOutcomes {
                agent,
                succeeded,
                failed,
            })
            .collect())
    }

    pub(super) async fn put_session(
        &self,
        token_hash: &[u8],
        csrf: &str,
        ttl: Duration,
    ) -> Result<()> {
        let now = rows::now();
        let mut conn = self.writer().await?;
        sqlx::query(
            "insert into ui_sessions (token_hash, csrf_token, expires_at, created_at)
             values (?1, ?2, ?3, ?4)",
        )
        .bind(token_hash)
        .bind(csrf)
        .bind(rows::after(now, ttl))
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub(super) async fn get_session(&self, token_hash: &[u8]) -> Result<Option<UiSession>> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "select csrf_token, expires_at from ui_sessions
             where token_hash = ?1 and expires_at > ?2",
        )
        .bind(token_hash)
        .bind(rows::now())
        .fetch_optional(&self.readers)
        .await?;
        Ok(row.map(|(csrf, expires_at)| UiSession {
            csrf,
            expires_at: chrono::DateTime::from_timestamp_micros(expires_at).unwrap_or_default(),
        }))
    }

    pub(super) async fn remove_session(&self, token_hash: &[u8]) -> Result<bool> {
        let mut conn = self.writer().await?;
        let deleted = sqlx::query("delete from ui_sessions where token_hash = ?1")
            .bind(token_hash)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    pub(super) async fn prune_session_rows(&self, limit: i64) -> Result<u64> {
        let mut conn = self.writer().await?;
        Ok(sqlx::query(
            "delete from ui_sessions where token_hash in (
                 select token_hash from ui_sessions where expires_at <= ?1
                 order by expires_at limit ?2)",
        )
        .bind(rows::now())
        .bind(limit)
        .execute(&mut *conn)
        .await?
        .rows_affected())
    }
}
