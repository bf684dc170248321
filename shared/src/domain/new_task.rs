//! A task request checked field by field, ready to insert.

use serde_json::Value;
use uuid::Uuid;

use super::validate::{parse_agent_name, parse_meta, parse_text};
use super::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_SECS, EnqueueRequest, MAX_ATTEMPTS_LIMIT,
    MAX_COMMAND_BYTES, MAX_DELAY_SECS, MAX_IDEMPOTENCY_KEY_BYTES, MAX_TIMEOUT_SECS,
};
use crate::{Error, Result};

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
