//! Shared state of the HTTP handlers.

use bgagent_shared::queue::TaskQueue;
use bgagent_shared::store::TaskStore;
use secrecy::SecretString;
use std::ops::Deref;
use std::sync::Arc;

use crate::enqueue::Enqueuer;
use crate::metrics::Metrics;

/// What every handler can reach. One `Arc`, because axum clones the state into every layer and
/// handler of every request: a clone (and drop) is one atomic count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<AppContext>);

/// The contents of [`AppState`].
pub struct AppContext {
    /// Rows.
    pub store: Arc<dyn TaskStore>,
    /// Messages.
    pub queue: Arc<dyn TaskQueue>,
    /// Group-commit enqueue pipeline.
    pub enqueuer: Enqueuer,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The API key clients must send.
    pub api_key: SecretString,
    /// Request body limit, for error messages.
    pub max_body_bytes: usize,
    /// Which agent endpoints may be registered.
    pub egress: bgagent_shared::egress::EgressPolicy,
    /// Requests waiting for a task to be final (`GET /tasks/{id}?wait_secs=`).
    pub waits: crate::wait::Waits,
    /// The dashboard's session settings and sign-in rate limit.
    pub ui: crate::ui::UiSettings,
    /// The task event fan-in of `GET /events`.
    pub events: crate::events::EventHub,
}

impl AppState {
    /// Wrap the handlers' context.
    pub fn new(context: AppContext) -> Self {
        Self(Arc::new(context))
    }
}

impl Deref for AppState {
    type Target = AppContext;

    fn deref(&self) -> &AppContext {
        &self.0
    }
}
