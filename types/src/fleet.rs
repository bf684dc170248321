//! The worker fleet and the system's state: workers, the paused state, `/health`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A worker process, as its heartbeats describe it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// Workers known from their heartbeats.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerList {
    /// Workers, latest heartbeat first.
    pub workers: Vec<WorkerInfo>,
}

/// The fleet's paused state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PausedState {
    /// True while workers take no new tasks.
    pub paused: bool,
    /// Whether the control message reached the broker (workers also re-read the stored state
    /// every few seconds, so false only delays the change).
    pub broadcast: bool,
}

/// Liveness and a summary of the system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok` when every dependency answers, else `degraded`.
    pub status: String,
    // The API always sends both flags; a client still reads an answer without them (as false),
    // and the document keeps them required.
    /// PostgreSQL answered.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub db_ok: bool,
    /// RabbitMQ answered.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub broker_ok: bool,
    /// The fleet's paused state (null when the database is down).
    pub paused: Option<bool>,
    /// Workers heart-beating in the last 30 s (null when the database is down).
    pub workers: Option<i64>,
}
