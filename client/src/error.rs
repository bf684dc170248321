//! The client's one error type.

use bgagent_types::{ErrorBody, TaskStatus};
use std::time::Duration;
use uuid::Uuid;

/// Everything a call can fail with.
///
/// [`Error::Api`] carries what the API said (`{"error":{"code","message","field"}}`) and the HTTP
/// status; the other variants describe failures before an answer arrived. Transport variants keep
/// reqwest's error as their [`source`](std::error::Error::source) rather than in their message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API answered with an error status.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status, e.g. 404.
        status: u16,
        /// The API's stable error code, e.g. `not_found`, `invalid_field`, `unavailable`
        /// (`http_<status>` when the body was not the API's error JSON, e.g. from a proxy).
        code: String,
        /// Human-readable explanation.
        message: String,
        /// The offending field, on 422 answers.
        field: Option<String>,
    },
    /// No connection could be made (refused, DNS failure, TLS handshake): nothing was sent.
    #[error("cannot connect to {url}")]
    Connect {
        /// The URL requested.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The request took longer than the configured timeout.
    #[error("request to {url} timed out")]
    Timeout {
        /// The URL requested.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// Any other transport failure (connection reset mid-request, unreadable body).
    #[error("request to {url} failed")]
    Transport {
        /// The URL requested.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// A success answer whose body was not what the endpoint documents.
    #[error("cannot decode the answer of {url}: {message}")]
    Decode {
        /// The URL requested.
        url: String,
        /// What did not parse.
        message: String,
    },
    /// The client was configured wrongly (bad base URL, unusable API key).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// [`Client::wait`](crate::Client::wait) ran out of time before the task finished.
    #[error("task {task_id} did not finish within {timeout:?}{}", last_status.map(|s| format!(" (still {s})")).unwrap_or_default())]
    WaitTimeout {
        /// The task waited for.
        task_id: Uuid,
        /// The time allowed.
        timeout: Duration,
        /// The status seen last, if any answer arrived.
        last_status: Option<TaskStatus>,
    },
}

impl Error {
    /// The HTTP status of an [`Error::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's error code of an [`Error::Api`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The field named by a 422 answer.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Api { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// True for a 404 answer.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True for a 401 answer (missing or wrong API key).
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401)
    }

    /// True when the server could not be reached or answered 503: retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Connect { .. }) || self.status() == Some(503)
    }

    /// True for a request timeout or a [`Error::WaitTimeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::WaitTimeout { .. })
    }

    /// Classify a transport error from reqwest.
    pub(crate) fn transport(url: &str, source: reqwest::Error) -> Self {
        let url = url.to_owned();
        if source.is_connect() {
            Self::Connect { url, source }
        } else if source.is_timeout() {
            Self::Timeout { url, source }
        } else {
            Self::Transport { url, source }
        }
    }

    /// Build an [`Error::Api`] from an error answer's status and body.
    pub(crate) fn from_answer(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => Self::Api {
                status,
                code: error.code,
                message: error.message,
                field: error.field,
            },
            Err(_) => {
                // Not the API's shape (a proxy, a load balancer): keep a short, printable excerpt.
                let text: String = String::from_utf8_lossy(body)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
                let message = if text.trim().is_empty() {
                    reqwest::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("error")
                        .to_owned()
                } else {
                    text.trim().to_owned()
                };
                Self::Api {
                    status,
                    code: format!("http_{status}"),
                    message,
                    field: None,
                }
            }
        }
    }
}

/// Result with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_keep_code_message_and_field() {
        let body =
            br#"{"error":{"code":"invalid_field","message":"limit: too big","field":"limit"}}"#;
        let err = Error::from_answer(422, body);
        assert_eq!(err.status(), Some(422));
        assert_eq!(err.code(), Some("invalid_field"));
        assert_eq!(err.field(), Some("limit"));
        assert_eq!(err.to_string(), "limit: too big (invalid_field, HTTP 422)");
    }

    #[test]
    fn foreign_error_bodies_get_a_status_code() {
        let err = Error::from_answer(502, b"<html>Bad gateway</html>\n");
        assert_eq!(err.code(), Some("http_502"));
        assert_eq!(
            err.to_string(),
            "<html>Bad gateway</html> (http_502, HTTP 502)"
        );
        let err = Error::from_answer(503, b"");
        assert!(err.is_unavailable());
        assert!(err.to_string().starts_with("Service Unavailable"));
    }
}
