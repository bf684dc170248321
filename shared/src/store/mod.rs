//! The task store: everything the API and the workers do to rows, as one trait with typed inputs
//! and outputs. Two engines implement it: [`postgres`] (production, any number of processes) and
//! [`sqlite`] (embedded, one process). Nothing above this seam names a database type.
//!
//! Calls are batched where the hot path is (insert, claim, record), so an engine can answer a
//! batch with one statement and one commit.

pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

use crate::Result;
use crate::domain::{Agent, Attempt, NewTask, Task, TaskEvent, TaskStatus, WorkerInfo};

/// Workers whose heartbeat is newer than this count as live.
pub const LIVE_WINDOW: Duration = Duration::from_secs(30);

/// What inserting one requested task did.
#[derive(Clone, Debug)]
pub struct Inserted {
    /// The stored task: the new one, or the one that already held the idempotency key.
    pub task: Task,
    /// False when the idempotency key already existed.
    pub created: bool,
}

/// Filters of `GET /tasks`.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    /// Only this status.
    pub status: Option<TaskStatus>,
    /// Only this agent.
    pub agent: Option<String>,
    /// Only tasks older than this id (keyset cursor).
    pub before: Option<Uuid>,
    /// Page size.
    pub limit: i64,
    /// Also read `meta` and `result`. Without it each task is a summary: `meta` is JSON null and
    /// `result` None, and the store reads neither column (they can be 256 KiB and 1 MiB).
    pub full: bool,
}

/// What a cancel request found.
#[derive(Clone, Debug)]
pub enum CancelOutcome {
    /// The task was queued and is now cancelled.
    Cancelled(Task),
    /// The task is running; the cancel is recorded and its worker must be told.
    Requested(Task),
    /// The task had already finished.
    AlreadyFinished(Task),
    /// No such task.
    NotFound,
}

/// What a retry request found.
#[derive(Clone, Debug)]
pub enum RetryOutcome {
    /// The task was failed or cancelled and is queued again.
    Retried(Task),
    /// The task is queued, running or succeeded: nothing changed.
    NotRetryable(Task),
    /// No such task.
    NotFound,
}

/// Which finished tasks a bulk retry (redrive) queues again.
#[derive(Clone, Debug)]
pub struct RetryFilter {
    /// `failed` or `cancelled`; another status is refused.
    pub status: TaskStatus,
    /// Only this agent.
    pub agent: Option<String>,
    /// Only tasks that finished after this.
    pub finished_after: Option<DateTime<Utc>>,
}

/// How one attempt ended, as `task_attempts` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// The executor returned a result.
    Succeeded,
    /// The attempt failed and no retry follows.
    Failed,
    /// The attempt failed and a retry follows.
    Retry,
    /// The attempt ran past its timeout (a retry may follow).
    Timeout,
    /// A client cancelled the task.
    Cancelled,
}

impl AttemptOutcome {
    /// The stored (and metric label) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Retry => "retry",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "retry" => Self::Retry,
            "timeout" => Self::Timeout,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// The outcome of one attempt, as the worker decided it.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    /// The task.
    pub task_id: Uuid,
    /// The attempt number the claim produced (the fence).
    pub attempt: i32,
    /// New status: succeeded, failed, cancelled, or queued for a retry.
    pub status: TaskStatus,
    /// What `task_attempts` says about the attempt.
    pub outcome: AttemptOutcome,
    /// Result of a success.
    pub result: Option<Value>,
    /// Error of a failure.
    pub error: Option<String>,
    /// How long until a retry may run.
    pub retry_delay: Duration,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
}

/// What recording did to one task.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The task.
    pub task_id: Uuid,
    /// Its agent.
    pub agent: String,
    /// Status after the record (a cancel request turns any outcome into cancelled).
    pub status: TaskStatus,
    /// Attempt outcome written.
    pub outcome: AttemptOutcome,
    /// Attempt number.
    pub attempt: i32,
    /// Error written.
    pub error: Option<String>,
    /// When the row changed (store time).
    pub updated_at: DateTime<Utc>,
}

/// A running task whose worker is gone, as the reaper handled it.
#[derive(Clone, Debug)]
pub struct Reaped {
    /// The task.
    pub task_id: Uuid,
    /// Its agent.
    pub agent: String,
    /// Queued (will run again), failed (that was its last attempt) or cancelled.
    pub status: TaskStatus,
    /// Attempts used.
    pub attempts: i32,
    /// When the row changed (store time).
    pub updated_at: DateTime<Utc>,
}

/// One heartbeat of a worker.
#[derive(Clone, Debug)]
pub struct Heartbeat<'a> {
    /// The worker.
    pub worker_id: &'a str,
    /// Whether it has stopped consuming because the fleet is paused.
    pub paused: bool,
    /// Tasks running now.
    pub in_flight: i32,
    /// Attempts finished since start.
    pub processed: i64,
}

/// Most rows one [`Backlog`] count looks at: a count stops there, so one scrape costs at most
/// that many index entries however large the backlog grows. The figure then reads "at least".
pub const BACKLOG_COUNT_CAP: i64 = 100_000;

/// Tasks waiting and running, as the backlog gauges export them. Counts stop at
/// [`BACKLOG_COUNT_CAP`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Backlog {
    /// Queued tasks whose `run_at` has come: what workers should be running now.
    pub due: i64,
    /// Queued tasks whose `run_at` is in the future (delayed enqueues, retries in back-off).
    pub delayed: i64,
    /// Tasks a worker holds.
    pub running: i64,
    /// Seconds since the oldest due task became due (0 when none is due).
    pub oldest_due_age_secs: f64,
}

/// Work that one process of the fleet does at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusive {
    /// Checking whether the broker lost task messages.
    BrokerCheck,
    /// Deleting finished tasks and gone workers past their retention.
    Prune,
}

/// What one pruning batch deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Tasks deleted.
    pub tasks: u64,
    /// Their attempt records deleted.
    pub attempts: u64,
}

/// Held while a process does [`Exclusive`] work; dropping it (or [`LockGuard::release`]) lets
/// another process take it.
#[async_trait]
pub trait LockGuard: Send {
    /// Release the lock.
    async fn release(self: Box<Self>) -> Result<()>;
}

/// Due, unpublished tasks taken for publishing. No other relay takes them until this batch is
/// committed or dropped.
#[async_trait]
pub trait DueBatch: Send {
    /// The tasks to publish, oldest due first.
    fn ids(&self) -> &[Uuid];
    /// Mark `published` (those the queue confirmed) published and let the rest go. Only rows
    /// still as they were taken are marked: a row claimed and sent back meanwhile needs its next
    /// run published again (PostgreSQL's row locks guarantee this; other engines check).
    async fn commit(self: Box<Self>, published: &[Uuid]) -> Result<()>;
}

/// A dashboard session as the store keeps it. Only a hash of the session token is stored, so a
/// copy of the table does not sign anyone in.
#[derive(Clone, Debug)]
pub struct UiSession {
    /// The session's CSRF token, which every form it posts must carry.
    pub csrf: String,
    /// When the session ends.
    pub expires_at: DateTime<Utc>,
}

/// Task counts for the dashboard's overview, each stopped at the cap the caller gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overview {
    /// Tasks per status, in [`TaskStatus::ALL`] order.
    pub by_status: [i64; 5],
    /// Tasks that succeeded in the last hour (store time).
    pub succeeded_last_hour: i64,
    /// Tasks that failed in the last hour.
    pub failed_last_hour: i64,
}

/// Recent outcomes of one registered agent, each count stopped at the cap the caller gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentOutcomes {
    /// The agent.
    pub agent: String,
    /// Its tasks created within the window that succeeded.
    pub succeeded: i64,
    /// Its tasks created within the window that failed.
    pub failed: i64,
}

/// The smallest UUID v7 of the millisecond `at`: task ids are v7, so `id >= uuid_floor(t)` are
/// the tasks created at or after `t`, a range of the id-ordered indexes.
pub fn uuid_floor(at: DateTime<Utc>) -> Uuid {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// Everything the API and the workers do to rows.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// The engine's name for banners and logs (`postgresql`, `sqlite`).
    fn engine(&self) -> &'static str;
    /// Bring the schema up to date.
    async fn migrate(&self) -> Result<()>;
    /// The store's clock: every time decision is made on it.
    async fn now(&self) -> Result<DateTime<Utc>>;
    /// Whether the store answers within `timeout`.
    async fn ping(&self, timeout: Duration) -> bool;
    /// Close the store's connections at the end of the process (the embedded engine checkpoints
    /// its write-ahead log). Calls after this fail.
    async fn close(&self) {}

    /// Insert tasks, one result per task in input order. A task whose idempotency key exists
    /// returns the existing row (`created: false`). One task the store refuses fails alone.
    async fn insert_tasks(&self, tasks: &[NewTask]) -> Vec<Result<Inserted>>;
    /// Record that the queue confirmed these new tasks' first messages (only rows never claimed).
    async fn mark_published(&self, ids: &[Uuid]) -> Result<u64>;
    /// One task.
    async fn task(&self, id: Uuid) -> Result<Option<Task>>;
    /// Tasks newest first, one page.
    async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>>;
    /// Which of `ids` are final now (succeeded, failed, cancelled), in one query on the primary
    /// key (`GET /tasks/{id}?wait_secs=`).
    async fn final_among(&self, ids: &[Uuid]) -> Result<Vec<Uuid>>;
    /// Cancel a task: at once when queued, by request when running.
    async fn cancel(&self, id: Uuid) -> Result<CancelOutcome>;
    /// Queue a failed or cancelled task again under its id, with a fresh attempt budget (its
    /// attempt numbers keep counting); one statement, so a task that changes meanwhile is
    /// either retried or reported as it is.
    async fn retry(&self, id: Uuid) -> Result<RetryOutcome>;
    /// Queue again up to `limit` tasks that match `filter`, oldest finished first, as
    /// [`TaskStore::retry`] does; rows in use elsewhere are skipped. Returns how many; call again
    /// until fewer than `limit` come back. Each retried task comes back as it is now.
    async fn retry_batch(&self, filter: &RetryFilter, limit: i64) -> Result<Vec<TaskEvent>>;
    /// Attempt records newest first, one page.
    async fn attempts(&self, before: Option<i64>, limit: i64) -> Result<Vec<Attempt>>;

    /// Insert or update an agent.
    async fn upsert_agent(&self, name: &str, endpoint: &str, meta: &Value) -> Result<Agent>;
    /// Remove an agent; false when it was not registered.
    async fn delete_agent(&self, name: &str) -> Result<bool>;
    /// All agents by name.
    async fn agents(&self) -> Result<Vec<Agent>>;
    /// One agent.
    async fn agent(&self, name: &str) -> Result<Option<Agent>>;
    /// Up to `limit` registered names, in name order.
    async fn agent_names(&self, limit: i64) -> Result<Vec<String>>;

    /// Whether the fleet is paused.
    async fn paused(&self) -> Result<bool>;
    /// Store the paused state.
    async fn set_paused(&self, paused: bool, changed_by: &str) -> Result<bool>;
    /// Workers not stopped, plus those seen in the last hour, newest heartbeat first.
    async fn workers(&self) -> Result<Vec<WorkerInfo>>;
    /// Workers heart-beating within [`LIVE_WINDOW`].
    async fn live_workers(&self) -> Result<i64>;
    /// Register a worker at start (or refresh it after a restart with the same id).
    async fn register_worker(&self, id: &str, host: &str, version: &str) -> Result<()>;
    /// Record a heartbeat.
    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<()>;
    /// Mark a worker stopped after a clean shutdown.
    async fn mark_worker_stopped(&self, id: &str) -> Result<()>;

    /// Claim queued, due tasks for `worker_id`; ids not claimable are absent from the result.
    async fn claim(&self, ids: &[Uuid], worker_id: &str, lease: Duration) -> Result<Vec<Task>>;
    /// Record attempt outcomes, each fenced on its claimed attempt and worker.
    async fn record(&self, worker_id: &str, records: &[AttemptRecord]) -> Result<Vec<Recorded>>;
    /// Hand back tasks a stopping worker could not finish (the attempt is not counted); the
    /// tasks handed back, as they are now.
    async fn release(&self, worker_id: &str, tasks: &[(Uuid, i32)]) -> Result<Vec<TaskEvent>>;
    /// Extend the leases of the tasks this worker holds; returns those whose cancel was requested.
    async fn renew_leases(
        &self,
        worker_id: &str,
        lease: Duration,
        held: &[Uuid],
    ) -> Result<Vec<Uuid>>;
    /// Return to the queue (or fail, on their last attempt) the running tasks whose holder broke
    /// its lease; a statement that runs after `run_before` (store time) reaps nothing.
    async fn reap(
        &self,
        last_attempt_grace: Duration,
        run_before: DateTime<Utc>,
    ) -> Result<Vec<Reaped>>;
    /// Fail a task whose message the queue dead-lettered; the task as it is now when it changed.
    async fn fail_dead_lettered(&self, id: Uuid, reason: &str) -> Result<Option<TaskEvent>>;
    /// Make queued tasks unpublished, so the relay publishes each in a message of its own.
    async fn unpublish_queued(&self, ids: &[Uuid]) -> Result<u64>;

    /// Tasks due, delayed and running, and the age of the oldest due task: a few index lookups,
    /// each count capped at [`BACKLOG_COUNT_CAP`].
    async fn backlog(&self) -> Result<Backlog>;

    /// Take up to `limit` due, unpublished tasks for publishing. Fresh enqueues younger than
    /// `fresh_grace` are left to the API that accepted them.
    async fn take_due(&self, limit: usize, fresh_grace: Duration) -> Result<Box<dyn DueBatch>>;

    /// Take the fleet-wide lock for `work`; None when another process holds it.
    async fn try_lock(&self, work: Exclusive) -> Result<Option<Box<dyn LockGuard>>>;
    /// The epoch marker last stored on the broker, if any.
    async fn broker_epoch(&self) -> Result<Option<Uuid>>;
    /// Remember the epoch marker just stored on the broker.
    async fn set_broker_epoch(&self, epoch: Uuid) -> Result<()>;
    /// Whether a due, queued task was published more than `age` ago and is still not claimed.
    async fn stale_published_exists(&self, age: Duration) -> Result<bool>;
    /// Make up to `limit` queued, published tasks unpublished again: those published more than
    /// `age` ago, or all when None. Returns how many changed; call again until fewer than `limit`.
    async fn unpublish_published(&self, age: Option<Duration>, limit: i64) -> Result<u64>;

    /// Delete up to `limit` tasks of the finished `status` that finished more than `age` ago
    /// (store time), oldest first, with their attempt records; their idempotency keys are free
    /// again. Rows in use elsewhere are skipped, and a batch never holds up the hot path for
    /// long. Call again until fewer than `limit` tasks come back. A status that is not
    /// finished is refused.
    async fn prune_tasks(&self, status: TaskStatus, age: Duration, limit: i64) -> Result<Pruned>;
    /// Delete up to `limit` rows of workers not seen for `age` (stopped or gone). Returns how
    /// many; call again until fewer than `limit`.
    async fn prune_workers(&self, age: Duration, limit: i64) -> Result<u64>;

    /// The attempt records of one task, oldest first (at most `limit`), on the
    /// `(task_id, attempt)` unique index.
    async fn task_attempts(&self, id: Uuid, limit: i64) -> Result<Vec<Attempt>>;
    /// The task holding an idempotency key.
    async fn task_by_key(&self, key: &str) -> Result<Option<Task>>;
    /// Tasks per status and finished in the last hour, each count stopped at `cap` (index scans
    /// of at most `cap` entries each, so the cost does not grow with the table).
    async fn overview(&self, cap: i64) -> Result<Overview>;
    /// For up to `limit` registered agents (by name): their tasks created within `window`
    /// (store time) that succeeded and failed, each count stopped at `cap`.
    async fn agent_outcomes(
        &self,
        window: Duration,
        cap: i64,
        limit: i64,
    ) -> Result<Vec<AgentOutcomes>>;

    /// Store a dashboard session: the hash of its token, its CSRF token, and an expiry `ttl`
    /// from now (store time).
    async fn insert_session(&self, token_hash: &[u8], csrf: &str, ttl: Duration) -> Result<()>;
    /// The unexpired session whose token hashes to `token_hash`.
    async fn session(&self, token_hash: &[u8]) -> Result<Option<UiSession>>;
    /// End a session; false when there was none.
    async fn delete_session(&self, token_hash: &[u8]) -> Result<bool>;
    /// Delete up to `limit` expired sessions; returns how many.
    async fn prune_sessions(&self, limit: i64) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_floor_sorts_before_every_id_of_its_millisecond_and_after_earlier_ones() {
        let at = Utc::now();
        let floor = uuid_floor(at);
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(at.timestamp()).unwrap_or(0),
            at.timestamp_subsec_nanos(),
        );
        let id = Uuid::new_v7(ts);
        assert!(floor <= id);
        assert_eq!(floor.get_version_num(), 7);
        assert!(uuid_floor(at - chrono::Duration::milliseconds(1)) < floor);
    }
}
