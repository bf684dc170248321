//! The API's one error type and its JSON form `{"error":{"code","message"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

// The body is a wire type, shared with the client.
pub use bgagent_types::{ErrorBody, ErrorDetail};

/// Every way a request can fail. Messages are safe to show: 5xx bodies stay generic and the
/// detail goes to the log.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (bad JSON syntax, bad id, bad cursor).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong `x-api-key`.
    #[error("missing or invalid x-api-key")]
    Unauthorized,
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the resource's state.
    #[error("{0}")]
    Conflict(String),
    /// Body over the size limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// A body in another media type than JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A field is missing, of the wrong type or out of bounds.
    #[error("{field}: {message}")]
    Unprocessable {
        /// JSON name of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// PostgreSQL (or another required service) is unreachable.
    #[error("{0} unavailable, retry later")]
    Unavailable(&'static str),
    /// The statement that stores the task was still running at the deadline: it may or may
    /// not have been stored.
    #[error(
        "the task may or may not have been stored; retry with the same idempotency key \
         (without one, a retry may create a second task)"
    )]
    OutcomeUnknown,
    /// A bug or unexpected failure; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 422 naming `field`.
    pub fn unprocessable(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            field: field.into(),
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Unprocessable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::OutcomeUnknown => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<bgagent_shared::Error> for ApiError {
    fn from(err: bgagent_shared::Error) -> Self {
        use bgagent_shared::Error as E;
        match err {
            E::Invalid { field, message } => Self::unprocessable(field, message),
            E::DatabaseUnavailable(_) => Self::Unavailable("database"),
            E::Broker(_) | E::NotConfirmed => Self::Unavailable("broker"),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl ApiError {
    /// The HTTP status and JSON body of this error (also what the MCP tools return); logs the
    /// detail of server-side failures, which the body keeps generic.
    pub fn report(&self) -> (StatusCode, ErrorBody) {
        let (status, code) = self.status_and_code();
        match self {
            Self::Internal(detail) => tracing::error!(error = %detail, "request failed"),
            Self::Unavailable(what) => {
                tracing::warn!(service = what, "request failed: service unavailable")
            }
            _ => {}
        }
        let field = match self {
            Self::Unprocessable { field, .. } => Some(field.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
                field,
            },
        };
        (status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.report();
        (status, Json(body)).into_response()
    }
}

/// Result with [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;
