//! The embedded engine's store: every row in one SQLite file, owned by one process (`bgagent dev`
//! with nothing installed). It does what the PostgreSQL statements in `crate::db` do, with the
//! same fences and rules; the doc comments there are the specification.
//!
//! Writes go through one connection, so writers queue in the process instead of fighting for
//! SQLite's file lock; reads use a small pool of their own (WAL lets them run beside a write).
//! A batch is one statement (plus its commit), its rows carried in one JSON array the way
//! `unnest` carries them for PostgreSQL: sqlx runs every statement on the connection's own
//! thread, and that round trip, not SQLite's work, is what a statement costs (a statement per
//! row measured 3-4 times slower).
//!
//! The clock is this process's clock: every time is computed here and bound, as microseconds
//! since the Unix epoch (UTC).

mod backlog;
mod fleet;
mod retention;
mod retry;
mod rows;
mod runs;
mod tasks;
#[cfg(test)]
mod tests;
mod ui;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Sqlite, Transaction};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use crate::domain::{Agent, Attempt, NewTask, Task, TaskEvent, TaskStatus, WorkerInfo};
use crate::store::{
    AgentOutcomes, AttemptRecord, Backlog, CancelOutcome, DueBatch, Exclusive, Heartbeat, Inserted,
    LockGuard, Overview, Pruned, Reaped, Recorded, TaskFilter, TaskStore, UiSession,
};
use crate::{Error, Result};

/// Migrations embedded from `migrations/sqlite/` (the PostgreSQL migrator reads only the files
/// of `migrations/`, not its subdirectories).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Last-attempt grace of the recovery at open (the reaper's rule; unused for tasks whose worker
/// is known stopped, which all are at open).
const RECOVERY_GRACE: Duration = Duration::from_secs(30);
/// The database file in the data directory.
pub const FILE_NAME: &str = "bgagent.db";
/// The file whose lock says which process owns the data directory (it holds that process's pid).
const LOCK_FILE: &str = "bgagent.lock";
/// Read connections: enough for the API's concurrent reads beside the workers.
const READERS: u32 = 4;
/// How long a statement waits for SQLite's file lock. Only this process writes, so waiting
/// happens only around checkpoints; past this the store counts as unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for the writer connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The task store in a SQLite file. See the module documentation.
pub struct SqliteStore {
    /// The database file.
    path: PathBuf,
    /// The one writer connection.
    writer: SqlitePool,
    /// Read-only connections.
    readers: SqlitePool,
    /// One relay pass at a time: held by the [`DueBatch`] until it is committed or dropped.
    relay: Arc<tokio::sync::Mutex<()>>,
    /// [`Exclusive::BrokerCheck`].
    broker_check: Arc<tokio::sync::Mutex<()>>,
    /// [`Exclusive::Prune`].
    prune: Arc<tokio::sync::Mutex<()>>,
    /// The data directory's lock, held for the store's life.
    _owner: File,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating when absent) the store in `data_dir`: the directory, its `bgagent.db` and
    /// the schema. The process takes an exclusive lock on the directory for the store's life; a
    /// second process opening the same directory gets [`Error::Config`].
    ///
    /// Owning the directory means nothing else runs against these rows, so opening also cleans
    /// up after a process that was killed:
    /// - every worker not marked stopped is marked stopped now, and the tasks they left
    ///   `running` go back to the queue at once (or fail, on their last attempt), as the reaper
    ///   would have done once their leases expired;
    /// - every queued task is made unpublished, because the in-process queue starts empty: the
    ///   relay publishes them all again from the rows.
    pub async fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::Io(format!(
                "cannot create the data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let owner = own(data_dir)?;
        let path = data_dir.join(FILE_NAME);
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(false)
            .statement_cache_capacity(200)
            .log_statements(tracing::log::LevelFilter::Trace);
        // WAL: readers never wait for the writer. NORMAL syncs only at checkpoints: a commit
        // survives the process crashing or being killed, but a power loss may drop the last
        // commits (the database stays consistent).
        let writer_options = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let cannot_open =
            |e: sqlx::Error| Error::Io(format!("cannot open {}: {e}", path.display()));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // The connection is ours alone and never goes stale; keeping it keeps its prepared
            // statements.
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(writer_options)
            .await
            .map_err(cannot_open)?;
        MIGRATOR.run(&writer).await?;
        take_over(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(base.pragma("query_only", "on"))
            .await
            .map_err(cannot_open)?;
        let store = Self {
            path,
            writer,
            readers,
            relay: Arc::default(),
            broker_check: Arc::default(),
            prune: Arc::default(),
            _owner: owner,
        };
        // The previous owner is gone for sure (we hold its lock), so its running tasks are
        // recovered now rather than after a reaper's settling period.
        let recovered = store
            .reap(
                RECOVERY_GRACE,
                chrono::Utc::now() + chrono::Duration::minutes(1),
            )
            .await?;
        if !recovered.is_empty() {
            tracing::warn!(
                tasks = recovered.len(),
                "recovered the tasks a stopped process left running"
            );
        }
        Ok(store)
    }

    /// The database file (for banners).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Close the connections (checkpointing the WAL). The directory stays owned until the store
    /// is dropped.
    pub async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }

    /// The writer connection, for a write of one statement (atomic on its own). Holding it is
    /// holding the write lock: read the clock after taking it.
    async fn writer(&self) -> Result<PoolConnection<Sqlite>> {
        Ok(self.writer.acquire().await?)
    }

    /// A write transaction on the writer connection, for writes of several statements.
    async fn write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("begin immediate").await?)
    }
}

/// Lock the data directory for this process, or say which process holds it.
fn own(data_dir: &Path) -> Result<File> {
    let path = data_dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .map(|pid| pid.trim().to_owned())
                .filter(|pid| !pid.is_empty())
                .map(|pid| format!("pid {pid}, "))
                .unwrap_or_default();
            return Err(Error::Config(format!(
                "the data directory {} is in use by another bgagent process ({holder}lock on {})",
                data_dir.display(),
                path.display()
            )));
        }
        Err(TryLockError::Error(e)) => {
            return Err(Error::Io(format!("cannot lock {}: {e}", path.display())));
        }
    }
    // The pid is only for the message above; the lock is what counts.
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok(file)
}

/// Clean up after the previous owner of the rows (see [`SqliteStore::open`]).
async fn take_over(writer: &SqlitePool) -> Result<()> {
    let mut tx = writer.begin_with("begin immediate").await?;
    let now = rows::now();
    let workers =
        sqlx::query("update workers set stopped_at = ?1, in_flight = 0 where stopped_at is null")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let tasks = sqlx::query(
        "update tasks set published_at = null
         where status = 'queued' and published_at is not null",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    if workers > 0 || tasks > 0 {
        tracing::info!(
            workers_stopped = workers,
            tasks_to_publish = tasks,
            "took over the data directory"
        );
    }
    Ok(())
}

/// A lock of [`TaskStore::try_lock`].
struct Held {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

#[async_trait]
impl LockGuard for Held {
    async fn release(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl TaskStore for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        Ok(Utc::now())
    }

    async fn ping(&self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, sqlx::query("select 1").execute(&self.readers)).await,
            Ok(Ok(_))
        )
    }

    async fn close(&self) {
        SqliteStore::close(self).await;
    }

    async fn insert_tasks(&self, tasks: &[NewTask]) -> Vec<Result<Inserted>> {
        self.insert_each(tasks).await
    }

    async fn mark_published(&self, ids: &[Uuid]) -> Result<u64> {
        self.mark_published_rows(ids).await
    }

    async fn task(&self, id: Uuid) -> Result<Option<Task>> {
        self.get_task(id).await
    }

    async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        self.list_tasks(filter).await
    }

    async fn final_among(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        self.final_task_ids(ids).await
    }

    async fn cancel(&self, id: Uuid) -> Result<CancelOutcome> {
        self.cancel_task(id).await
    }

    async fn retry(&self, id: Uuid) -> Result<crate::store::RetryOutcome> {
        self.retry_task(id).await
    }

    async fn retry_batch(
        &self,
        filter: &crate::store::RetryFilter,
        limit: i64,
    ) -> Result<Vec<TaskEvent>> {
        self.retry_task_rows(filter, limit).await
    }

    async fn attempts(&self, before: Option<i64>, limit: i64) -> Result<Vec<Attempt>> {
        self.list_attempts(before, limit).await
    }

    async fn upsert_agent(&self, name: &str, endpoint: &str, meta: &Value) -> Result<Agent> {
        self.put_agent(name, endpoint, meta).await
    }

    async fn delete_agent(&self, name: &str) -> Result<bool> {
        self.remove_agent(name).await
    }

    async fn agents(&self) -> Result<Vec<Agent>> {
        self.list_agents().await
    }

    async fn agent(&self, name: &str) -> Result<Option<Agent>> {
        self.get_agent(name).await
    }

    async fn agent_names(&self, limit: i64) -> Result<Vec<String>> {
        self.list_agent_names(limit).await
    }

    async fn paused(&self) -> Result<bool> {
        self.get_paused().await
    }

    async fn set_paused(&self, paused: bool, changed_by: &str) -> Result<bool> {
        self.put_paused(paused, changed_by).await
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.list_workers().await
    }

    async fn live_workers(&self) -> Result<i64> {
        self.count_live_workers().await
    }

    async fn register_worker(&self, id: &str, host: &str, version: &str) -> Result<()> {
        self.put_worker(id, host, version).await
    }

    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<()> {
        self.beat(beat).await
    }

    async fn mark_worker_stopped(&self, id: &str) -> Result<()> {
        self.stop_worker(id).await
    }

    async fn claim(&self, ids: &[Uuid], worker_id: &str, lease: Duration) -> Result<Vec<Task>> {
        self.claim_tasks(ids, worker_id, lease).await
    }

    async fn record(&self, worker_id: &str, records: &[AttemptRecord]) -> Result<Vec<Recorded>> {
        self.record_attempts(worker_id, records).await
    }

    async fn release(&self, worker_id: &str, tasks: &[(Uuid, i32)]) -> Result<Vec<TaskEvent>> {
        self.release_tasks(worker_id, tasks).await
    }

    async fn renew_leases(
        &self,
        worker_id: &str,
        lease: Duration,
        held: &[Uuid],
    ) -> Result<Vec<Uuid>> {
        self.renew(worker_id, lease, held).await
    }

    async fn reap(
        &self,
        last_attempt_grace: Duration,
        run_before: DateTime<Utc>,
    ) -> Result<Vec<Reaped>> {
        self.reap_lost(last_attempt_grace, run_before).await
    }

    async fn fail_dead_lettered(&self, id: Uuid, reason: &str) -> Result<Option<TaskEvent>> {
        self.fail_dead_letter(id, reason).await
    }

    async fn unpublish_queued(&self, ids: &[Uuid]) -> Result<u64> {
        self.unpublish_queued_rows(ids).await
    }

    async fn take_due(&self, limit: usize, fresh_grace: Duration) -> Result<Box<dyn DueBatch>> {
        self.take_due_rows(limit, fresh_grace).await
    }

    async fn try_lock(&self, work: Exclusive) -> Result<Option<Box<dyn LockGuard>>> {
        let lock = match work {
            Exclusive::BrokerCheck => &self.broker_check,
            Exclusive::Prune => &self.prune,
        };
        Ok(Arc::clone(lock)
            .try_lock_owned()
            .ok()
            .map(|guard| Box::new(Held { _guard: guard }) as Box<dyn LockGuard>))
    }

    async fn broker_epoch(&self) -> Result<Option<Uuid>> {
        self.get_broker_epoch().await
    }

    async fn set_broker_epoch(&self, epoch: Uuid) -> Result<()> {
        self.put_broker_epoch(epoch).await
    }

    async fn backlog(&self) -> Result<Backlog> {
        self.count_backlog().await
    }

    async fn stale_published_exists(&self, age: Duration) -> Result<bool> {
        self.stale_published(age).await
    }

    async fn unpublish_published(&self, age: Option<Duration>, limit: i64) -> Result<u64> {
        self.unpublish_published_rows(age, limit).await
    }

    async fn prune_tasks(&self, status: TaskStatus, age: Duration, limit: i64) -> Result<Pruned> {
        self.prune_task_rows(status, age, limit).await
    }

    async fn prune_workers(&self, age: Duration, limit: i64) -> Result<u64> {
        self.prune_worker_rows(age, limit).await
    }

    async fn task_attempts(&self, id: Uuid, limit: i64) -> Result<Vec<Attempt>> {
        self.list_task_attempts(id, limit).await
    }

    async fn task_by_key(&self, key: &str) -> Result<Option<Task>> {
        self.get_task_by_key(key).await
    }

    async fn overview(&self, cap: i64) -> Result<Overview> {
        self.count_overview(cap).await
    }

    async fn agent_outcomes(
        &self,
        window: Duration,
        cap: i64,
        limit: i64,
    ) -> Result<Vec<AgentOutcomes>> {
        self.count_agent_outcomes(window, cap, limit).await
    }

    async fn insert_session(&self, token_hash: &[u8], csrf: &str, ttl: Duration) -> Result<()> {
        self.put_session(token_hash, csrf, ttl).await
    }

    async fn session(&self, token_hash: &[u8]) -> Result<Option<UiSession>> {
        self.get_session(token_hash).await
    }

    async fn delete_session(&self, token_hash: &[u8]) -> Result<bool> {
        self.remove_session(token_hash).await
    }

    async fn prune_sessions(&self, limit: i64) -> Result<u64> {
        self.prune_session_rows(limit).await
    }
}
