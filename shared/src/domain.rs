//! Domain types that cross the HTTP API, PostgreSQL and the broker, and the rules that turn raw
//! requests into them ("parse, don't validate": invalid input never reaches I/O).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::LazyLock;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{Error, Result};

/// Longest command accepted, in bytes.
pub const MAX_COMMAND_BYTES: usize = 65_536;
/// Largest `meta` object accepted, serialized, in bytes.
pub const MAX_META_BYTES: usize = 256 * 1024;
/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// Upper bound of `max_attempts`.
pub const MAX_ATTEMPTS_LIMIT: i32 = 100;
/// Default `max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 5;
/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT_SECS: i32 = 300;
/// Upper bound of `timeout_secs` (one day).
pub const MAX_TIMEOUT_SECS: i32 = 86_400;
/// Upper bound of `delay_secs` (one year).
pub const MAX_DELAY_SECS: i64 = 366 * 86_400;
/// Longest agent endpoint URL accepted.
pub const MAX_ENDPOINT_BYTES: usize = 2048;

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting for a worker (first run, retry or delay).
    Queued,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Failed terminally (attempts exhausted or a non-retryable error).
    Failed,
    /// Cancelled by a client.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in life order.
    pub const ALL: [TaskStatus; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name stored in PostgreSQL and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// True once the task can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "status",
                    "must be one of queued, running, succeeded, failed, cancelled",
                )
            })
    }
}

impl TryFrom<String> for TaskStatus {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

/// A task as stored and as returned by the API.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// UUID v7: time-ordered, so newest-first listing is an index scan.
    pub id: Uuid,
    /// Agent the task is routed to.
    pub agent: String,
    /// What the agent should do.
    pub command: String,
    /// Free-form JSON object passed to the executor.
    #[schema(value_type = Object)]
    pub meta: Value,
    /// Current status.
    pub status: TaskStatus,
    /// Attempts started so far.
    pub attempts: i32,
    /// Attempts allowed before the task fails terminally.
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
    /// Executor result (succeeded tasks).
    #[schema(value_type = Option<Object>)]
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
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
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

/// A registered agent: tasks for it are POSTed to its endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    /// Agent name (also the `agent` of its tasks).
    pub name: String,
    /// http(s) URL the worker POSTs tasks to.
    pub endpoint: String,
    /// Free-form JSON object.
    #[schema(value_type = Object)]
    pub meta: Value,
    /// First registration.
    pub created_at: DateTime<Utc>,
    /// Last registration.
    pub updated_at: DateTime<Utc>,
}

/// A worker process, as its heartbeats describe it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkerInfo {
    /// Worker id (also in its connection name and consumer tag).
    pub id: String,
    /// Host name.
    pub host: String,
    /// Version of the worker binary.
    pub version: String,
    /// Process start.
    pub started_at: DateTime<Utc>,
    /// Latest heartbeat.
    pub last_seen: DateTime<Utc>,
    /// Whether the worker has stopped consuming because the fleet is paused.
    pub paused: bool,
    /// Tasks running now.
    pub in_flight: i32,
    /// Tasks finished since start.
    pub processed: i64,
    /// Set when the worker shut down cleanly.
    pub stopped_at: Option<DateTime<Utc>>,
}

static AGENT_NAME: LazyLock<regex_lite::Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a literal pattern, checked by the unit tests
    regex_lite::Regex::new(r"^[a-z0-9][a-z0-9._-]{0,63}$").unwrap()
});

/// Check an agent name against `^[a-z0-9][a-z0-9._-]{0,63}$`.
pub fn parse_agent_name(field: &'static str, name: &str) -> Result<String> {
    if AGENT_NAME.is_match(name) {
        Ok(name.to_owned())
    } else {
        Err(Error::invalid(
            field,
            "must match ^[a-z0-9][a-z0-9._-]{0,63}$",
        ))
    }
}

/// Refuse text PostgreSQL cannot store: a NUL character (`\u0000`) in `text` or in a JSON string.
/// Checked at the door, because one such value in a shared (group-commit) statement would fail
/// every request committed with it.
pub fn parse_text(field: &'static str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(Error::invalid(
            field,
            "must not contain the NUL character (\\u0000)",
        ));
    }
    Ok(())
}

/// Refuse JSON that PostgreSQL's `jsonb` cannot store: a NUL character in any string or key.
/// (Every finite number serde_json accepts is stored exactly by `jsonb` and, with serde_json's
/// `float_roundtrip`, reads back as the same number.)
pub fn parse_json_text(field: &'static str, value: &Value) -> Result<()> {
    match value {
        Value::String(s) => parse_text(field, s),
        Value::Array(items) => items.iter().try_for_each(|v| parse_json_text(field, v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            parse_text(field, k)?;
            parse_json_text(field, v)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Text from outside (an agent's answer, an error it sent) made storable: each NUL becomes
/// U+FFFD, the replacement character, so the rest of the text is kept.
pub fn storable_text(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// JSON from outside made storable in `jsonb`: [`storable_text`] on every string and key.
pub fn storable_json(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(storable_text(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(storable_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (storable_text(k), storable_json(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Check that `meta` is a JSON object of at most [`MAX_META_BYTES`] that PostgreSQL can store;
/// absent means `{}`.
pub fn parse_meta(meta: Option<Value>) -> Result<Value> {
    let meta = match meta {
        None | Some(Value::Null) => return Ok(Value::Object(Default::default())),
        Some(m @ Value::Object(_)) => m,
        Some(_) => return Err(Error::invalid("meta", "must be a JSON object")),
    };
    parse_json_text("meta", &meta)?;
    let size = serde_json::to_vec(&meta)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_META_BYTES {
        return Err(Error::invalid(
            "meta",
            format!("is {size} bytes; the limit is {MAX_META_BYTES}"),
        ));
    }
    Ok(meta)
}

/// Check an agent endpoint: an absolute http(s) URL with a host and no credentials.
pub fn parse_endpoint(endpoint: &str) -> Result<url::Url> {
    if endpoint.len() > MAX_ENDPOINT_BYTES {
        return Err(Error::invalid(
            "endpoint",
            format!("is longer than {MAX_ENDPOINT_BYTES} bytes"),
        ));
    }
    let url = url::Url::parse(endpoint)
        .map_err(|e| Error::invalid("endpoint", format!("is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid("endpoint", "must use http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid("endpoint", "must have a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid(
            "endpoint",
            "must not carry credentials; pass them in meta or configure the agent",
        ));
    }
    Ok(url)
}

/// `POST /enqueue` body. Unknown fields are rejected so typos do not pass silently.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// Agent to route to (`^[a-z0-9][a-z0-9._-]{0,63}$`).
    #[schema(
        pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub agent: String,
    /// What to do: 1 to 65,536 bytes of UTF-8 without NUL (U+0000). `maxLength` counts
    /// characters, so a text of multi-byte characters reaches the byte limit sooner.
    #[schema(pattern = r"^[^\u0000]+$", min_length = 1, max_length = 65536)]
    pub command: String,
    /// JSON object of at most 256 KiB serialized (null or absent: `{}`). Its strings must not
    /// contain NUL (U+0000) and its numbers must read back exactly (no integer beyond 64 bits,
    /// no float beyond the range of a double).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Value>,
    /// Same key again returns the existing task instead of creating one: 1 to 255 bytes
    /// without NUL. Must equal the `Idempotency-Key` header when both are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[^\u0000]+$", min_length = 1, max_length = 255)]
    pub idempotency_key: Option<String>,
    /// Attempts before the task fails (1-100, default 5).
    #[serde(
        default,
        deserialize_with = "integral",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<i32>,
    /// Per-attempt timeout in seconds (1-86400, default 300).
    #[serde(
        default,
        deserialize_with = "integral",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_secs: Option<i32>,
    /// Run no earlier than this many seconds from now (0 to 31,622,400: one leap year).
    #[serde(
        default,
        deserialize_with = "integral",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 0, maximum = 31622400)]
    pub delay_secs: Option<i64>,
}

/// An optional integer field that also takes a JSON number with a zero fraction (`5.0`): JSON
/// Schema's `integer` (what `/openapi.json` promises) includes those. Fractions and values
/// outside `T` are refused, as plain serde would, naming the field.
fn integral<'de, D, T>(deserializer: D) -> std::result::Result<Option<T>, D::Error>
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

/// A validated task ready to insert.
#[derive(Clone, Debug)]
pub struct NewTask {
    /// UUID v7 chosen by the API.
    pub id: Uuid,
    /// Agent name.
    pub agent: String,
    /// Command.
    pub command: String,
    /// Meta object.
    pub meta: Value,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Per-attempt timeout.
    pub timeout_secs: i32,
    /// Delay before the first run (0 = now).
    pub delay_secs: i64,
}

impl NewTask {
    /// Validate a request. `header_key` is the `Idempotency-Key` header, used when the body has
    /// none; when both are present they must agree.
    pub fn parse(req: EnqueueRequest, header_key: Option<&str>) -> Result<Self> {
        let agent = parse_agent_name("agent", &req.agent)?;
        if req.command.is_empty() || req.command.len() > MAX_COMMAND_BYTES {
            return Err(Error::invalid(
                "command",
                format!("must be 1 to {MAX_COMMAND_BYTES} bytes"),
            ));
        }
        parse_text("command", &req.command)?;
        let meta = parse_meta(req.meta)?;
        let idempotency_key = match (req.idempotency_key, header_key) {
            (Some(body), Some(header)) if body != header => {
                return Err(Error::invalid(
                    "idempotency_key",
                    "differs from the Idempotency-Key header",
                ));
            }
            (Some(body), _) => Some(body),
            (None, header) => header.map(str::to_owned),
        };
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES)
        {
            return Err(Error::invalid(
                "idempotency_key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes"),
            ));
        }
        if let Some(key) = &idempotency_key {
            parse_text("idempotency_key", key)?;
        }
        let max_attempts = req.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(Error::invalid(
                "max_attempts",
                format!("must be 1 to {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        let timeout_secs = req.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(1..=MAX_TIMEOUT_SECS).contains(&timeout_secs) {
            return Err(Error::invalid(
                "timeout_secs",
                format!("must be 1 to {MAX_TIMEOUT_SECS}"),
            ));
        }
        let delay_secs = req.delay_secs.unwrap_or(0);
        if !(0..=MAX_DELAY_SECS).contains(&delay_secs) {
            return Err(Error::invalid(
                "delay_secs",
                format!("must be 0 to {MAX_DELAY_SECS}"),
            ));
        }
        Ok(Self {
            id: Uuid::now_v7(),
            agent,
            command: req.command,
            meta,
            idempotency_key,
            max_attempts,
            timeout_secs,
            delay_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> EnqueueRequest {
        EnqueueRequest {
            agent: "echo".into(),
            command: "hi".into(),
            ..Default::default()
        }
    }

    #[test]
    fn agent_names_follow_the_pattern() {
        for ok in ["a", "echo", "my-agent.v2_x", &"a".repeat(64)] {
            assert!(parse_agent_name("agent", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a b", "a/b", &"a".repeat(65), "ä"] {
            assert!(parse_agent_name("agent", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn meta_must_be_a_bounded_object() {
        assert_eq!(parse_meta(None).ok(), Some(json!({})));
        assert!(parse_meta(Some(json!([1]))).is_err());
        assert!(parse_meta(Some(json!("x"))).is_err());
        let big = json!({ "x": "y".repeat(MAX_META_BYTES) });
        assert!(parse_meta(Some(big)).is_err());
    }

    #[test]
    fn nul_characters_are_refused_wherever_text_is_stored() {
        let field_of = |req: EnqueueRequest| match NewTask::parse(req, None) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected a NUL to be refused, got {other:?}"),
        };
        let nul = "a\u{0}b".to_owned();
        assert_eq!(
            field_of(EnqueueRequest {
                command: nul.clone(),
                ..request()
            }),
            "command"
        );
        assert_eq!(
            field_of(EnqueueRequest {
                idempotency_key: Some(nul.clone()),
                ..request()
            }),
            "idempotency_key"
        );
        for meta in [
            json!({ "k": nul }),
            json!({ nul.clone(): 1 }),
            json!({ "deep": [{ "x": [nul] }] }),
        ] {
            assert_eq!(
                field_of(EnqueueRequest {
                    meta: Some(meta),
                    ..request()
                }),
                "meta"
            );
        }
        assert!(parse_meta(Some(json!({"ok": "\u{1}", "n": 1.5}))).is_ok());
    }

    #[test]
    fn outside_text_is_made_storable() {
        assert_eq!(storable_text("a\u{0}b".into()), "a\u{FFFD}b");
        assert_eq!(
            storable_json(json!({"k\u{0}": ["x\u{0}", 1, {"y": "\u{0}"}]})),
            json!({"k\u{FFFD}": ["x\u{FFFD}", 1, {"y": "\u{FFFD}"}]})
        );
        assert!(parse_meta(Some(storable_json(json!({"n": "\u{0}"})))).is_ok());
    }

    #[test]
    fn endpoints_are_plain_http_urls() {
        assert!(parse_endpoint("http://127.0.0.1:9000/run").is_ok());
        assert!(parse_endpoint("https://agent.example/x").is_ok());
        for bad in [
            "ftp://x/",
            "http://user:pw@x/",
            "not a url",
            "file:///etc/passwd",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bounds_are_enforced_and_named() {
        let cases: [(EnqueueRequest, &str); 5] = [
            (
                EnqueueRequest {
                    command: String::new(),
                    ..request()
                },
                "command",
            ),
            (
                EnqueueRequest {
                    max_attempts: Some(0),
                    ..request()
                },
                "max_attempts",
            ),
            (
                EnqueueRequest {
                    timeout_secs: Some(0),
                    ..request()
                },
                "timeout_secs",
            ),
            (
                EnqueueRequest {
                    delay_secs: Some(-1),
                    ..request()
                },
                "delay_secs",
            ),
            (
                EnqueueRequest {
                    idempotency_key: Some(String::new()),
                    ..request()
                },
                "idempotency_key",
            ),
        ];
        for (req, field) in cases {
            match NewTask::parse(req, None) {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected {field} to be rejected, got {other:?}"),
            }
        }
    }

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
    fn header_key_is_used_and_must_agree_with_the_body() {
        let task = NewTask::parse(request(), Some("k1")).ok();
        assert_eq!(task.and_then(|t| t.idempotency_key).as_deref(), Some("k1"));
        let req = EnqueueRequest {
            idempotency_key: Some("k2".into()),
            ..request()
        };
        assert!(NewTask::parse(req, Some("k1")).is_err());
    }
}
