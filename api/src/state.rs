//! Shared state of the HTTP handlers.

use bgagent_shared::broker::Publisher;
use secrecy::SecretString;
use sqlx::PgPool;
use std::sync::Arc;

use crate::enqueue::Enqueuer;
use crate::metrics::Metrics;

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL pool.
    pub db: PgPool,
    /// Broker publisher.
    pub publisher: Publisher,
    /// Group-commit enqueue pipeline.
    pub enqueuer: Enqueuer,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The API key clients must send.
    pub api_key: Arc<SecretString>,
    /// Request body limit, for error messages.
    pub max_body_bytes: usize,
}
