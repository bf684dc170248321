//! Rows as the queries read them, turned into the domain types. The domain types live in
//! `bgagent-types`, which knows nothing of sqlx (so clients do not build it), and the orphan rule
//! forbids deriving `sqlx::FromRow` for them here, so each gets a row struct with the decoding
//! rules (lenient `jsonb`, the status from its name).

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{Agent, Attempt, Task, TaskStatus, WorkerInfo};

/// The columns of `task_columns!()`.
#[derive(sqlx::FromRow)]
pub(crate) struct TaskRow {
    id: Uuid,
    agent: String,
    command: String,
    #[sqlx(try_from = "super::json::LenientJson")]
    meta: Value,
    #[sqlx(try_from = "String")]
    status: TaskStatus,
    attempts: i32,
    max_attempts: i32,
    timeout_secs: i32,
    idempotency_key: Option<String>,
    run_at: DateTime<Utc>,
    published_at: Option<DateTime<Utc>>,
    worker_id: Option<String>,
    lease_until: Option<DateTime<Utc>>,
    #[sqlx(try_from = "super::json::LenientJson")]
    result: Option<Value>,
    last_error: Option<String>,
    cancel_requested: bool,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl From<TaskRow> for Task {
    fn from(row: TaskRow) -> Self {
        Self {
            id: row.id,
            agent: row.agent,
            command: row.command,
            meta: row.meta,
            status: row.status,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            timeout_secs: row.timeout_secs,
            idempotency_key: row.idempotency_key,
            run_at: row.run_at,
            published_at: row.published_at,
            worker_id: row.worker_id,
            lease_until: row.lease_until,
            result: row.result,
            last_error: row.last_error,
            cancel_requested: row.cancel_requested,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            updated_at: row.updated_at,
        }
    }
}

/// A `task_attempts` record joined with its task's command.
#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRow {
    id: i64,
    task_id: Uuid,
    attempt: i32,
    agent: String,
    command: String,
    worker_id: Option<String>,
    outcome: String,
    error: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
}

impl From<AttemptRow> for Attempt {
    fn from(row: AttemptRow) -> Self {
        Self {
            id: row.id,
            task_id: row.task_id,
            attempt: row.attempt,
            agent: row.agent,
            command: row.command,
            worker_id: row.worker_id,
            outcome: row.outcome,
            error: row.error,
            started_at: row.started_at,
            finished_at: row.finished_at,
        }
    }
}

/// An `agents` row.
#[derive(sqlx::FromRow)]
pub(crate) struct AgentRow {
    name: String,
    endpoint: String,
    #[sqlx(try_from = "super::json::LenientJson")]
    meta: Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<AgentRow> for Agent {
    fn from(row: AgentRow) -> Self {
        Self {
            name: row.name,
            endpoint: row.endpoint,
            meta: row.meta,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// A `workers` row.
#[derive(sqlx::FromRow)]
pub(crate) struct WorkerRow {
    id: String,
    host: String,
    version: String,
    started_at: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    paused: bool,
    in_flight: i32,
    processed: i64,
    stopped_at: Option<DateTime<Utc>>,
}

impl From<WorkerRow> for WorkerInfo {
    fn from(row: WorkerRow) -> Self {
        Self {
            id: row.id,
            host: row.host,
            version: row.version,
            started_at: row.started_at,
            last_seen: row.last_seen,
            paused: row.paused,
            in_flight: row.in_flight,
            processed: row.processed,
            stopped_at: row.stopped_at,
        }
    }
}

/// Rows into domain values.
pub(crate) fn all<R, T: From<R>>(rows: Vec<R>) -> Vec<T> {
    rows.into_iter().map(T::from).collect()
}
