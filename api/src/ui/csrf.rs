//! CSRF tokens: every state-changing form of the dashboard posts the session's token in a hidden
//! `csrf` field; [`Posted`] refuses (403, nothing done) a form without it or with another one.
//! The SameSite=Strict cookie already keeps other sites' forms from carrying the session; the
//! token is the second, independent lock.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::UiError;
use super::session::Session;
use crate::state::AppState;

/// The form field carrying the token.
pub const FIELD: &str = "csrf";

/// A URL-encoded form posted with the session's CSRF token, checked before the form is read.
#[derive(Debug)]
pub struct Posted<T> {
    /// The signed-in session that posted it.
    pub session: Session,
    /// The form's other fields.
    pub form: T,
}

impl<T: DeserializeOwned> FromRequest<AppState> for Posted<T> {
    type Rejection = UiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, UiError> {
        let session = req
            .extensions()
            .get::<Session>()
            .cloned()
            .ok_or_else(|| UiError::new(StatusCode::FORBIDDEN, "Sign in first."))?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| UiError::new(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."))?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
            .map_err(|_| UiError::new(StatusCode::BAD_REQUEST, "The form could not be read."))?;
        let mut tokens = pairs.iter().filter(|(k, _)| k == FIELD);
        let valid = match (tokens.next(), tokens.next()) {
            (Some((_, given)), None) => matches(&session, given),
            _ => false,
        };
        if !valid {
            tracing::warn!("dashboard form refused: missing or wrong CSRF token");
            return Err(UiError::new(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from the dashboard. Reload the page and \
                 try again.",
            ));
        }
        let form = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
            UiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("The form is incomplete: {e}"),
            )
        })?;
        Ok(Self { session, form })
    }
}

/// Whether `given` is the session's token (constant time).
pub fn matches(session: &Session, given: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(session.csrf.as_bytes()))
}
