//! Extractors and middleware that keep every error in the API's JSON shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// Header carrying the API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// JSON body extractor: a `Content-Type` other than JSON is 415 (a missing one is taken as JSON),
/// syntax errors (and bad UTF-8, empty bodies) are 400, wrong types, missing and unknown fields are
/// 422 naming the field, oversized bodies are 413.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        require_json_content_type(req.headers(), false)?;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(state.max_body_bytes)
            } else {
                ApiError::BadRequest(format!(
                    "cannot read request body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Refuse a body declared as anything but JSON: `application/json` (any parameters, such as
/// `charset`) or an `application/*+json` type. A missing `Content-Type` passes unless `required`.
pub fn require_json_content_type(headers: &HeaderMap, required: bool) -> Result<(), ApiError> {
    let refuse = |what: &str| {
        ApiError::UnsupportedMediaType(format!(
            "{what}; send the body as Content-Type: application/json"
        ))
    };
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return if required {
            Err(refuse("Content-Type is missing"))
        } else {
            Ok(())
        };
    };
    if values.next().is_some() {
        return Err(refuse("more than one Content-Type"));
    }
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .and_then(|subtype| subtype.strip_suffix("+json"))
            .is_some_and(|name| {
                !name.is_empty() && !name.contains(|c: char| c == '/' || c.is_whitespace())
            });
    if json {
        Ok(())
    } else {
        // Bounded and printable: the header is the client's, the message goes back to it.
        let shown: String = essence
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        Err(refuse(&format!("Content-Type {shown:?} is not JSON")))
    }
}

/// Parse `bytes` as `T`, classifying errors as [`ApiJson`] documents.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "request body is empty; send a JSON object".into(),
        ));
    }
    // Every body of this API is an object, and serde would also read a struct from an array
    // (`[null, null]` as its first two fields): refuse anything else before deserializing.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::unprocessable("body", "must be a JSON object"),
                Err(e) => ApiError::BadRequest(format!("malformed JSON: {e}")),
            },
        );
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            // A data error may sit in a document that is malformed further on ("{} x"):
            // syntax wins, so check the whole document (only on this error path).
            serde_json::error::Category::Data
                if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() =>
            {
                invalid_field(path, inner.to_string())
            }
            _ => ApiError::BadRequest(format!("malformed JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Deserialize an already parsed JSON value (MCP tool arguments) as `T`, naming the offending
/// field as [`parse_json`] does.
pub fn parse_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        invalid_field(path, err.into_inner().to_string())
    })
}

/// A 422 for a data error at `path` ("." or empty at the top level).
fn invalid_field(path: String, message: String) -> ApiError {
    let field = if path.is_empty() || path == "." {
        // "missing field `x`" and "unknown field `x`" name it only in the message.
        message
            .split('`')
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_else(|| "body".into())
    } else {
        path
    };
    ApiError::unprocessable(field, message)
}

/// Query-string extractor whose errors (duplicate keys, bad encoding) use the JSON error shape.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| ApiQuery(value))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// Parse a task id from a path segment (400 when it is not a UUID).
pub fn parse_task_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::BadRequest(format!("bad id {raw:?}: not a UUID")))
}

/// Reject requests without the right `x-api-key`. Compared in constant time; no other header
/// grants access.
pub async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !has_api_key(&state, req.headers()) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// Routes the dashboard's pages read from the browser (`GET /events`): the `x-api-key` header or
/// a dashboard session cookie. Only for GET routes, so the cookie never authorizes a change
/// outside the CSRF-checked forms under `/ui`.
pub async fn require_api_key_or_session(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if !has_api_key(&state, req.headers())
        && !crate::ui::session::authenticated(&state, req.headers()).await
    {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// Whether the request carries the API key (compared in constant time).
fn has_api_key(state: &AppState, headers: &HeaderMap) -> bool {
    let expected = state.api_key.expose_secret().as_bytes();
    headers
        .get(API_KEY_HEADER)
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bgagent_shared::domain::EnqueueRequest;

    fn field_of(body: &str) -> (String, Option<String>) {
        match parse_json::<EnqueueRequest>(body.as_bytes()) {
            Err(ApiError::Unprocessable { field, .. }) => ("422".into(), Some(field)),
            Err(ApiError::BadRequest(_)) => ("400".into(), None),
            other => (format!("{other:?}"), None),
        }
    }

    #[test]
    fn errors_are_classified_and_name_the_field() {
        assert_eq!(field_of(""), ("400".into(), None));
        assert_eq!(field_of("{\"agent\":"), ("400".into(), None));
        assert_eq!(field_of("{} x"), ("400".into(), None));
        assert_eq!(
            field_of("{\"command\":\"x\"}"),
            ("422".into(), Some("agent".into()))
        );
        assert_eq!(
            field_of("{\"agent\":\"a\",\"command\":\"x\",\"nope\":1}"),
            ("422".into(), Some("nope".into()))
        );
        assert_eq!(
            field_of("{\"agent\":5,\"command\":\"x\"}"),
            ("422".into(), Some("agent".into()))
        );
        assert_eq!(field_of("[]"), ("422".into(), Some("body".into())));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn only_json_content_types_are_accepted() {
        let check = |value: Option<&str>, required: bool| {
            let mut headers = HeaderMap::new();
            if let Some(v) = value {
                headers.insert(CONTENT_TYPE, v.parse().unwrap());
            }
            require_json_content_type(&headers, required).is_ok()
        };
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;charset=UTF-8",
            "application/merge-patch+json",
        ] {
            assert!(check(Some(ok), false), "{ok} refused");
        }
        for refused in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "application/+json",
            "text/json",
            "",
        ] {
            assert!(!check(Some(refused), false), "{refused} accepted");
        }
        assert!(check(None, false));
        assert!(!check(None, true));
        let mut two = HeaderMap::new();
        two.append(CONTENT_TYPE, "application/json".parse().unwrap());
        two.append(CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(matches!(
            require_json_content_type(&two, false),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn parsed_values_name_the_field_too() {
        let field = |value: serde_json::Value| match parse_value::<EnqueueRequest>(value) {
            Err(ApiError::Unprocessable { field, .. }) => field,
            other => panic!("expected a 422, got {other:?}"),
        };
        assert_eq!(field(serde_json::json!({"command": "x"})), "agent");
        assert_eq!(
            field(serde_json::json!({"agent": 5, "command": "x"})),
            "agent"
        );
        assert_eq!(
            field(serde_json::json!({"agent": "a", "command": "x", "nope": 1})),
            "nope"
        );
        assert_eq!(field(serde_json::json!([])), "body");
    }
}
