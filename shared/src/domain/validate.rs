//! The rules every request field passes before it is stored: agent names, text PostgreSQL can
//! store, `meta` objects and agent endpoints.

use serde_json::Value;
use std::sync::LazyLock;

use super::{MAX_ENDPOINT_BYTES, MAX_META_BYTES};
use crate::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
