//! Between Rust values and SQLite's storage: times as integer microseconds since the Unix epoch
//! (UTC), JSON as text read leniently, and the rows of the wire types.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use std::time::Duration;
use uuid::Uuid;

use crate::db::json::parse_lenient;
use crate::domain::{Agent, Attempt, Task, TaskStatus, WorkerInfo};

/// Columns of [`Task`], in one place so every statement returns the same shape.
macro_rules! task_columns {
    () => {
        "id, agent, command, meta, status, attempts, max_attempts, timeout_secs, idempotency_key, \
         run_at, published_at, worker_id, lease_until, result, last_error, cancel_requested, \
         created_at, started_at, finished_at, updated_at"
    };
}
pub(super) use task_columns;

/// The latest time chrono represents, so a stored time always reads back.
const MAX_MICROS: i64 = DateTime::<Utc>::MAX_UTC.timestamp_micros();

/// The store's clock now.
pub(super) fn now() -> i64 {
    Utc::now().timestamp_micros()
}

/// A duration in microseconds (saturating).
pub(super) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `at + d`, kept within the times that read back.
pub(super) fn after(at: i64, d: Duration) -> i64 {
    at.saturating_add(micros(d)).min(MAX_MICROS)
}

/// `at - d`, for comparisons only.
pub(super) fn before(at: i64, d: Duration) -> i64 {
    at.saturating_sub(micros(d))
}

/// JSON as stored.
pub(super) fn json_text(value: &Value) -> String {
    // Serializing a `Value` cannot fail: its map keys are strings.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// An id inside a batch's JSON input, read back with `unhex(…)`.
pub(super) fn hex(id: Uuid) -> Value {
    Value::String(id.simple().to_string())
}

/// The JSON array text that carries a batch's rows into one statement (`json_each(?)`), as
/// `unnest` does for PostgreSQL: one statement per batch instead of one per row, because each
/// statement is a round trip to the connection's thread.
pub(super) fn batch(rows: impl IntoIterator<Item = Value>) -> String {
    Value::Array(rows.into_iter().collect()).to_string()
}

/// [`batch`] of ids.
pub(super) fn id_batch(ids: &[Uuid]) -> String {
    batch(ids.iter().map(|id| hex(*id)))
}

fn bad(column: &str, message: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: message.into(),
    }
}

fn to_time(column: &str, micros: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| {
        bad(
            column,
            format!("{micros} µs since the epoch is out of range"),
        )
    })
}

pub(super) fn time(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    to_time(column, row.try_get(column)?)
}

fn opt_time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    row.try_get::<Option<i64>, _>(column)?
        .map(|micros| to_time(column, micros))
        .transpose()
}

/// The event of a row returning `id, agent, attempts, updated_at`, now in `status`.
pub(super) fn event(
    row: &SqliteRow,
    status: TaskStatus,
) -> Result<crate::domain::TaskEvent, sqlx::Error> {
    Ok(crate::domain::TaskEvent {
        id: row.try_get("id")?,
        agent: row.try_get("agent")?,
        status,
        attempts: row.try_get("attempts")?,
        updated_at: time(row, "updated_at")?,
    })
}

/// A JSON column; text that is not valid JSON reads back as a JSON string of that text.
fn json(row: &SqliteRow, column: &str) -> Result<Option<Value>, sqlx::Error> {
    Ok(row.try_get::<Option<&[u8]>, _>(column)?.map(parse_lenient))
}

pub(super) fn status(row: &SqliteRow, column: &str) -> Result<TaskStatus, sqlx::Error> {
    let text: &str = row.try_get(column)?;
    text.parse()
        .map_err(|_| bad(column, format!("unknown status {text:?}")))
}

/// A row of `task_columns!()`.
pub(super) fn task(row: SqliteRow) -> Result<Task, sqlx::Error> {
    Ok(Task {
        id: row.try_get("id")?,
        agent: row.try_get("agent")?,
        command: row.try_get("command")?,
        meta: json(&row, "meta")?.unwrap_or(Value::Null),
        status: status(&row, "status")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        timeout_secs: row.try_get("timeout_secs")?,
        idempotency_key: row.try_get("idempotency_key")?,
        run_at: time(&row, "run_at")?,
        published_at: opt_time(&row, "published_at")?,
        worker_id: row.try_get("worker_id")?,
        lease_until: opt_time(&row, "lease_until")?,
        result: json(&row, "result")?,
        last_error: row.try_get("last_error")?,
        cancel_requested: row.try_get("cancel_requested")?,
        created_at: time(&row, "created_at")?,
        started_at: opt_time(&row, "started_at")?,
        finished_at: opt_time(&row, "finished_at")?,
        updated_at: time(&row, "updated_at")?,
    })
}

/// A row of an attempt joined with its task's command.
pub(super) fn attempt(row: SqliteRow) -> Result<Attempt, sqlx::Error> {
    Ok(Attempt {
        id: row.try_get("id")?,
        task_id: row.try_get("task_id")?,
        attempt: row.try_get("attempt")?,
        agent: row.try_get("agent")?,
        command: row.try_get("command")?,
        worker_id: row.try_get("worker_id")?,
        outcome: row.try_get("outcome")?,
        error: row.try_get("error")?,
        started_at: time(&row, "started_at")?,
        finished_at: time(&row, "finished_at")?,
    })
}

/// A row of `agents`.
pub(super) fn agent(row: SqliteRow) -> Result<Agent, sqlx::Error> {
    Ok(Agent {
        name: row.try_get("name")?,
        endpoint: row.try_get("endpoint")?,
        meta: json(&row, "meta")?.unwrap_or(Value::Null),
        created_at: time(&row, "created_at")?,
        updated_at: time(&row, "updated_at")?,
    })
}

/// A row of `workers`.
pub(super) fn worker(row: SqliteRow) -> Result<WorkerInfo, sqlx::Error> {
    Ok(WorkerInfo {
        id: row.try_get("id")?,
        host: row.try_get("host")?,
        version: row.try_get("version")?,
        started_at: time(&row, "started_at")?,
        last_seen: time(&row, "last_seen")?,
        paused: row.try_get("paused")?,
        in_flight: row.try_get("in_flight")?,
        processed: row.try_get("processed")?,
        stopped_at: opt_time(&row, "stopped_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_stay_in_range() {
        let now = Utc::now();
        let micros = now.timestamp_micros();
        assert_eq!(
            to_time("t", micros).ok().map(|t| t.timestamp_micros()),
            Some(micros)
        );
        assert!(to_time("t", after(micros, Duration::MAX)).is_ok());
        assert!(to_time("t", i64::MAX).is_err());
        assert_eq!(after(10, Duration::from_micros(5)), 15);
        assert_eq!(before(10, Duration::from_micros(5)), 5);
    }
}
