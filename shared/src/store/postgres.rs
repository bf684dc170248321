//! The PostgreSQL engine of the task store: any number of API and worker processes share one
//! database. The SQL lives in [`crate::db`]; this wraps it behind [`TaskStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use std::time::Duration;
use uuid::Uuid;

use super::{
    AgentOutcomes, AttemptOutcome, AttemptRecord, Backlog, CancelOutcome, DueBatch, Exclusive,
    Heartbeat, Inserted, LockGuard, Overview, Pruned, Reaped, Recorded, RetryFilter, RetryOutcome,
    TaskFilter, TaskStore, UiSession,
};
use crate::config::DatabaseConfig;
use crate::db;
use crate::domain::{Agent, Attempt, NewTask, Task, TaskEvent, TaskStatus, WorkerInfo};
use crate::{Error, Result};

/// Task store on PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// A store whose pool connects lazily: the process starts (and answers `/health`) while
    /// PostgreSQL is down. `application_name` shows in `pg_stat_activity`.
    pub fn connect_lazy(config: &DatabaseConfig, application_name: &str) -> Result<Self> {
        Ok(Self {
            pool: db::pool(config, application_name)?,
        })
    }

    /// Create the database named in `url` when it does not exist (dev mode, tests, benchmarks).
    pub async fn create_database(url: &str) -> Result<()> {
        db::ensure_database(url).await
    }

    /// Drop the database named in `url` (ephemeral runs, test clean-up).
    pub async fn drop_database(url: &str) -> Result<()> {
        db::drop_database(url).await
    }

    /// Migrations applied so far.
    pub async fn applied_migrations(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Close the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A stored name the schema's check constraint guarantees; anything else is a corrupt row.
fn status(name: &str) -> Result<TaskStatus> {
    name.parse()
        .map_err(|_| Error::Corrupt(format!("unknown task status {name:?}")))
}

fn outcome(name: &str) -> Result<AttemptOutcome> {
    AttemptOutcome::parse(name).ok_or_else(|| Error::Corrupt(format!("unknown outcome {name:?}")))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[async_trait]
impl TaskStore for PgStore {
    fn engine(&self) -> &'static str {
        "postgresql"
    }

    async fn migrate(&self) -> Result<()> {
        db::migrate(&self.pool).await
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        db::now(&self.pool).await
    }

    async fn ping(&self, timeout: Duration) -> bool {
        db::ping(&self.pool, timeout).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn insert_tasks(&self, tasks: &[NewTask]) -> Vec<Result<Inserted>> {
        db::tasks::insert_each(&self.pool, tasks).await
    }

    async fn mark_published(&self, ids: &[Uuid]) -> Result<u64> {
        db::tasks::mark_published(&self.pool, ids).await
    }

    async fn task(&self, id: Uuid) -> Result<Option<Task>> {
        db::tasks::get(&self.pool, id).await
    }

    async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        db::tasks::list(&self.pool, filter).await
    }

    async fn final_among(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        db::tasks::final_among(&self.pool, ids).await
    }

    async fn cancel(&self, id: Uuid) -> Result<CancelOutcome> {
        db::tasks::cancel(&self.pool, id).await
    }

    async fn retry(&self, id: Uuid) -> Result<RetryOutcome> {
        db::retry::retry(&self.pool, id).await
    }

    async fn retry_batch(&self, filter: &RetryFilter, limit: i64) -> Result<Vec<TaskEvent>> {
        db::retry::retry_batch(&self.pool, filter, limit).await
    }

    async fn attempts(&self, before: Option<i64>, limit: i64) -> Result<Vec<Attempt>> {
        db::tasks::list_attempts(&self.pool, before, limit).await
    }

    async fn upsert_agent(&self, name: &str, endpoint: &str, meta: &Value) -> Result<Agent> {
        db::agents::upsert(&self.pool, name, endpoint, meta).await
    }

    async fn delete_agent(&self, name: &str) -> Result<bool> {
        db::agents::delete(&self.pool, name).await
    }

    async fn agents(&self) -> Result<Vec<Agent>> {
        db::agents::list(&self.pool).await
    }

    async fn agent(&self, name: &str) -> Result<Option<Agent>> {
        db::agents::get(&self.pool, name).await
    }

    async fn agent_names(&self, limit: i64) -> Result<Vec<String>> {
        db::agents::names(&self.pool, limit).await
    }

    async fn paused(&self) -> Result<bool> {
        db::control::paused(&self.pool).await
    }

    async fn set_paused(&self, paused: bool, changed_by: &str) -> Result<bool> {
        db::control::set_paused(&self.pool, paused, changed_by).await
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        db::workers::list(&self.pool).await
    }

    async fn live_workers(&self) -> Result<i64> {
        db::workers::count_live(&self.pool).await
    }

    async fn register_worker(&self, id: &str, host: &str, version: &str) -> Result<()> {
        db::workers::register(&self.pool, id, host, version).await
    }

    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<()> {
        db::workers::heartbeat(
            &self.pool,
            beat.worker_id,
            beat.paused,
            beat.in_flight,
            beat.processed,
        )
        .await
    }

    async fn mark_worker_stopped(&self, id: &str) -> Result<()> {
        db::workers::mark_stopped(&self.pool, id).await
    }

    async fn claim(&self, ids: &[Uuid], worker_id: &str, lease: Duration) -> Result<Vec<Task>> {
        db::runs::claim(&self.pool, ids, worker_id, lease.as_secs().max(1)).await
    }

    async fn record(&self, worker_id: &str, records: &[AttemptRecord]) -> Result<Vec<Recorded>> {
        db::runs::record(&self.pool, worker_id, records)
            .await?
            .into_iter()
            .map(|row| {
                Ok(Recorded {
                    status: status(&row.status)?,
                    outcome: outcome(&row.outcome)?,
                    task_id: row.task_id,
                    agent: row.agent,
                    attempt: row.attempt,
                    error: row.error,
                    updated_at: row.updated_at,
                })
            })
            .collect()
    }

    async fn release(&self, worker_id: &str, tasks: &[(Uuid, i32)]) -> Result<Vec<TaskEvent>> {
        db::runs::release(&self.pool, worker_id, tasks).await
    }

    async fn renew_leases(
        &self,
        worker_id: &str,
        lease: Duration,
        held: &[Uuid],
    ) -> Result<Vec<Uuid>> {
        db::runs::renew_leases(&self.pool, worker_id, lease.as_secs().max(1), held).await
    }

    async fn reap(
        &self,
        last_attempt_grace: Duration,
        run_before: DateTime<Utc>,
    ) -> Result<Vec<Reaped>> {
        db::runs::reap(&self.pool, secs(last_attempt_grace), run_before)
            .await?
            .into_iter()
            .map(|row| {
                Ok(Reaped {
                    status: status(&row.status)?,
                    task_id: row.task_id,
                    agent: row.agent,
                    attempts: row.attempts,
                    updated_at: row.updated_at,
                })
            })
            .collect()
    }

    async fn fail_dead_lettered(&self, id: Uuid, reason: &str) -> Result<Option<TaskEvent>> {
        db::runs::fail_dead_lettered(&self.pool, id, reason).await
    }

    async fn unpublish_queued(&self, ids: &[Uuid]) -> Result<u64> {
        db::runs::unpublish_queued(&self.pool, ids).await
    }

    async fn take_due(&self, limit: usize, fresh_grace: Duration) -> Result<Box<dyn DueBatch>> {
        let mut tx = self.pool.begin().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids = db::runs::lock_unpublished(&mut tx, limit, secs(fresh_grace)).await?;
        Ok(Box::new(PgDueBatch { tx, ids }))
    }

    async fn try_lock(&self, work: Exclusive) -> Result<Option<Box<dyn LockGuard>>> {
        let mut tx = self.pool.begin().await?;
        let taken = match work {
            Exclusive::BrokerCheck => db::runs::try_lock_broker_check(&mut tx).await?,
            Exclusive::Prune => db::retention::try_lock_prune(&mut tx).await?,
        };
        Ok(taken.then(|| Box::new(PgLock { tx }) as Box<dyn LockGuard>))
    }

    async fn broker_epoch(&self) -> Result<Option<Uuid>> {
        db::runs::broker_epoch(&self.pool).await
    }

    async fn set_broker_epoch(&self, epoch: Uuid) -> Result<()> {
        db::runs::set_broker_epoch(&self.pool, epoch).await
    }

    async fn backlog(&self) -> Result<Backlog> {
        db::backlog::backlog(&self.pool).await
    }

    async fn stale_published_exists(&self, age: Duration) -> Result<bool> {
        db::runs::stale_published_exists(&self.pool, secs(age)).await
    }

    async fn unpublish_published(&self, age: Option<Duration>, limit: i64) -> Result<u64> {
        db::runs::unpublish_published(&self.pool, age.map(secs), limit).await
    }

    async fn prune_tasks(&self, status: TaskStatus, age: Duration, limit: i64) -> Result<Pruned> {
        db::retention::prune_tasks(&self.pool, status, secs(age), limit).await
    }

    async fn prune_workers(&self, age: Duration, limit: i64) -> Result<u64> {
        db::retention::prune_workers(&self.pool, secs(age), limit).await
    }

    async fn task_attempts(&self, id: Uuid, limit: i64) -> Result<Vec<Attempt>> {
        db::ui::task_attempts(&self.pool, id, limit).await
    }

    async fn task_by_key(&self, key: &str) -> Result<Option<Task>> {
        db::ui::by_key(&self.pool, key).await
    }

    async fn overview(&self, cap: i64) -> Result<Overview> {
        db::ui::overview(&self.pool, cap).await
    }

    async fn agent_outcomes(
        &self,
        window: Duration,
        cap: i64,
        limit: i64,
    ) -> Result<Vec<AgentOutcomes>> {
        db::ui::agent_outcomes(&self.pool, window, cap, limit).await
    }

    async fn insert_session(&self, token_hash: &[u8], csrf: &str, ttl: Duration) -> Result<()> {
        db::ui::insert_session(&self.pool, token_hash, csrf, ttl).await
    }

    async fn session(&self, token_hash: &[u8]) -> Result<Option<UiSession>> {
        db::ui::session(&self.pool, token_hash).await
    }

    async fn delete_session(&self, token_hash: &[u8]) -> Result<bool> {
        db::ui::delete_session(&self.pool, token_hash).await
    }

    async fn prune_sessions(&self, limit: i64) -> Result<u64> {
        db::ui::prune_sessions(&self.pool, limit).await
    }
}

/// Rows locked `FOR UPDATE SKIP LOCKED` in an open transaction, so no other relay publishes them
/// until it ends.
struct PgDueBatch {
    tx: Transaction<'static, Postgres>,
    ids: Vec<Uuid>,
}

#[async_trait]
impl DueBatch for PgDueBatch {
    fn ids(&self) -> &[Uuid] {
        &self.ids
    }

    async fn commit(mut self: Box<Self>, published: &[Uuid]) -> Result<()> {
        if !published.is_empty() {
            db::runs::mark_relayed(&mut *self.tx, published).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

/// A transaction-scoped advisory lock: released by commit, or by rollback when dropped.
struct PgLock {
    tx: Transaction<'static, Postgres>,
}

#[async_trait]
impl LockGuard for PgLock {
    async fn release(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}
