//! The web dashboard at `/ui`: server-rendered HTML (maud) from the API binary, with htmx and its
//! server-sent-events extension (vendored, embedded) for live updates. Every page works without
//! JavaScript.
//!
//! Security (docs/DASHBOARD.md): the operator signs in once with the API key and gets a
//! server-side session (the store keeps a hash of its token, so any replica accepts it) in an
//! HttpOnly, SameSite=Strict cookie; every state-changing form is a POST carrying the session's
//! CSRF token; every answer carries a Content-Security-Policy without inline script or style.
//! The REST API never accepts the cookie: it keeps `x-api-key`.
//!
//! One job per file: [`session`] (sign-in, sessions, rate limit), [`csrf`] (form tokens),
//! [`layout`] (page shell and shared markup), [`pages`] (what is shown), [`actions`] (what the
//! forms do, through the same functions as the REST routes), [`assets`] (embedded files).

pub mod actions;
pub mod assets;
pub mod csrf;
pub mod layout;
pub mod pages;
pub mod session;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::time::Duration;

use crate::error::ApiError;
use crate::state::AppState;

pub use session::authenticated;

/// The dashboard's settings and in-memory state.
pub struct UiSettings {
    /// How long a session lasts after sign-in.
    pub session_ttl: Duration,
    /// Whether the session cookie is `Secure` (TLS in front of the API).
    pub secure_cookie: bool,
    /// Failed sign-ins per client address.
    pub limiter: session::LoginLimiter,
}

impl UiSettings {
    /// Settings with an empty sign-in limiter.
    pub fn new(session_ttl: Duration, secure_cookie: bool) -> Self {
        Self {
            session_ttl,
            secure_cookie,
            limiter: session::LoginLimiter::default(),
        }
    }
}

/// What every `/ui` answer may load: only this origin's scripts, styles and connections (the
/// event stream), no inline script or style, no framing, forms posting only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes. Everything but the sign-in page and the assets needs a session.
pub fn router(state: AppState) -> Router<AppState> {
    let signed_in = Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/overview/live", get(pages::overview_live))
        .route("/ui/tasks", get(pages::tasks))
        .route("/ui/tasks/rows", get(pages::task_rows))
        .route("/ui/find", get(pages::find))
        .route("/ui/tasks/{id}", get(pages::task))
        .route("/ui/tasks/{id}/live", get(pages::task_live))
        .route("/ui/failed", get(pages::failed))
        .route("/ui/agents", get(pages::agents).post(actions::register))
        .route("/ui/workers", get(pages::workers))
        .route("/ui/stop", post(actions::stop))
        .route("/ui/start", post(actions::start))
        .route("/ui/tasks/retry", post(actions::retry_all))
        .route("/ui/tasks/{id}/cancel", post(actions::cancel))
        .route("/ui/tasks/{id}/retry", post(actions::retry))
        .route("/ui/agents/{name}/delete", post(actions::unregister))
        .route("/ui/logout", post(session::logout))
        .route("/ui/{*rest}", get(pages::not_found))
        .route_layer(from_fn_with_state(state, session::require_session));
    let public = Router::new()
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/assets/{version}/{file}", get(assets::serve));
    Router::new()
        .merge(signed_in)
        .merge(public)
        .layer(from_fn(security_headers))
}

/// The headers of every `/ui` answer. Pages are never cached (they show task data behind the
/// sign-in); assets set their own long cache header, which this leaves alone.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A page that could not be shown or an action that failed: an HTML page with the status and a
/// message safe to show (server-side details are logged, not shown).
#[derive(Debug)]
pub struct UiError {
    status: StatusCode,
    message: String,
}

impl UiError {
    /// An error page with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<ApiError> for UiError {
    fn from(err: ApiError) -> Self {
        // `report` logs server-side failures and keeps their message generic.
        let (status, body) = err.report();
        Self::new(status, body.error.message)
    }
}

impl From<bgagent_shared::Error> for UiError {
    fn from(err: bgagent_shared::Error) -> Self {
        ApiError::from(err).into()
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        (self.status, layout::error_page(self.status, &self.message)).into_response()
    }
}

/// Result of a dashboard handler.
pub type UiResult<T> = Result<T, UiError>;
