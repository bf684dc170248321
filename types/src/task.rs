//! Tasks, their attempt records, the enqueue request and the pages that list them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::TaskStatus;

/// A task as stored and as returned by the API. `GET /tasks` lists summaries: the same object
/// without `meta` and `result` (which can be 256 KiB and 1 MiB), unless asked for with
/// `full=true`; `GET /tasks/{id}` always has `meta`, and `result` once the task has one.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    /// UUID v7: time-ordered, so newest-first listing is an index scan.
    pub id: Uuid,
    /// Agent the task is routed to.
    pub agent: String,
    /// What the agent should do.
    pub command: String,
    /// Free-form JSON object passed to the executor. Absent from list summaries (JSON null in
    /// memory then: a stored meta is always an object).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>, nullable = false))]
    pub meta: Value,
    /// Current status.
    pub status: TaskStatus,
    /// Attempts started so far.
    pub attempts: i32,
    /// Attempts allowed before the task fails terminally (a retry raises it to `attempts` plus
    /// the budget the task was enqueued with).
    pub max_attempts: i32,
    /// Per-attempt timeout.
    pub timeout_secs: i32,
    /// Client-chosen key that makes enqueue idempotent.
    pub idempotency_key: Option<String>,
    /// Earliest time the next attempt may start.
    pub run_at: DateTime<Utc>,
    /// When the current run was handed to the broker (null: not yet).
    pub published_at: Option<DateTime<Utc>>,
    /// Worker holding (or that last held) the task.
    pub worker_id: Option<String>,
    /// Until when the holding worker's claim is valid.
    pub lease_until: Option<DateTime<Utc>>,
    /// Executor result (succeeded tasks). Absent while the task has none, and from list
    /// summaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>, nullable = false))]
    pub result: Option<Value>,
    /// Last error message.
    pub last_error: Option<String>,
    /// A cancel was requested while the task was running.
    pub cancel_requested: bool,
    /// When the task was accepted.
    pub created_at: DateTime<Utc>,
    /// When the latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the task reached a terminal status.
    pub finished_at: Option<DateTime<Utc>>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One attempt at running a task (what `GET /processed` lists).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    /// Record id; newest records have the highest ids.
    pub id: i64,
    /// The task.
    pub task_id: Uuid,
    /// Attempt number, from 1.
    pub attempt: i32,
    /// The task's agent.
    pub agent: String,
    /// The task's command.
    pub command: String,
    /// Worker that ran the attempt.
    pub worker_id: Option<String>,
    /// `succeeded`, `failed`, `retry`, `timeout` or `cancelled`.
    pub outcome: String,
    /// Error of a failed attempt.
    pub error: Option<String>,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
}

/// `POST /enqueue` body. Unknown fields are rejected so typos do not pass silently.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// Agent to route to (`^[a-z0-9][a-z0-9._-]{0,63}$`).
    #[cfg_attr(
        feature = "openapi",
        schema(
            pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$",
            min_length = 1,
            max_length = 64
        )
    )]
    pub agent: String,
    /// What to do: 1 to 65,536 bytes of UTF-8 without NUL (U+0000). `maxLength` counts
    /// characters, so a text of multi-byte characters reaches the byte limit sooner.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[^\u0000]+$", min_length = 1, max_length = 65536)
    )]
    pub command: String,
    /// JSON object of at most 256 KiB serialized (null or absent: `{}`). Its strings must not
    /// contain NUL (U+0000) and its numbers must read back exactly (no integer beyond 64 bits,
    /// no float beyond the range of a double).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub meta: Option<Value>,
    /// Same key again returns the existing task instead of creating one: 1 to 255 bytes
    /// without NUL. Must equal the `Idempotency-Key` header when both are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[^\u0000]+$", min_length = 1, max_length = 255)
    )]
    pub idempotency_key: Option<String>,
    /// Attempts before the task fails (1-100, default 5).
    #[serde(
        default,
        deserialize_with = "integral",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub max_attempts: Option<i32>,
    /// Per-attempt timeout in seconds (1-86400, default 300).
    #[serde(
        default,
        deserialize_with = "integral",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub timeout_secs: Option<i32>,
    /// Run no earlier than this many seconds from now (0 to 31,622,400: one leap year).
    #[serde(
        default,
        deserialize_with = "integral",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 31622400))]
    pub delay_secs: Option<i64>,
}

/// An optional integer field that also takes a JSON number with a zero fraction (`5.0`): JSON
/// Schema's `integer` (what `/openapi.json` promises) includes those. Fractions and values
/// outside `T` are refused, as plain serde would, naming the field.
fn integral<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error as _;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    // Every integer a double holds exactly; beyond that a "whole" float is not a precise value.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let whole = number.as_i64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= EXACT)
            .map(|f| f as i64)
    });
    whole
        .and_then(|n| T::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| {
            D::Error::custom(format!(
                "invalid value {number}: expected an integer in range"
            ))
        })
}

/// A page of tasks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskPage {
    /// Tasks, newest first.
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A page of attempt records.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptPage {
    /// Attempts, newest first.
    pub processed: Vec<Attempt>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integer_fields_take_whole_numbers_written_with_a_fraction() {
        let parse = |body: Value| serde_json::from_value::<EnqueueRequest>(body);
        let req = parse(json!({"agent": "a", "command": "c", "max_attempts": 3.0,
            "timeout_secs": 42539.0, "delay_secs": 0.0}));
        let req = req.ok().unwrap_or_default();
        assert_eq!(
            (req.max_attempts, req.timeout_secs, req.delay_secs),
            (Some(3), Some(42539), Some(0))
        );
        assert!(parse(json!({"agent": "a", "command": "c", "max_attempts": null})).is_ok());
        for bad in [
            json!(1.5),
            json!(3e9),
            json!("3"),
            json!(1e300),
            json!(u64::MAX),
        ] {
            assert!(
                parse(json!({"agent": "a", "command": "c", "max_attempts": bad})).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn unset_optional_fields_are_left_out() {
        let req = EnqueueRequest {
            agent: "echo".into(),
            command: "hi".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&req).ok(),
            Some(json!({"agent": "echo", "command": "hi"}))
        );
        let page: Result<TaskPage, _> = serde_json::from_value(json!({"tasks": []}));
        assert!(page.is_ok_and(|p| p.next_cursor.is_none()));
    }
}
