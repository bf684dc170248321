//! `GET /health` (liveness) and `GET /ready` (readiness).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use bgagent_types::{ErrorBody, ErrorDetail, Health};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

use crate::state::AppState;

/// Each dependency check gets this long, so probes answer quickly during an outage.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

/// Readiness: PostgreSQL reachable.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Always true in a 200 answer.
    pub ready: bool,
}

async fn gather(state: &AppState) -> Health {
    let (db_ok, broker_ok) = tokio::join!(
        state.store.ping(CHECK_TIMEOUT),
        state.queue.ping(CHECK_TIMEOUT)
    );
    let (paused, workers) = if db_ok {
        let paused = tokio::time::timeout(CHECK_TIMEOUT, state.store.paused());
        let workers = tokio::time::timeout(CHECK_TIMEOUT, state.store.live_workers());
        let (paused, workers) = tokio::join!(paused, workers);
        (
            paused.ok().and_then(Result::ok),
            workers.ok().and_then(Result::ok),
        )
    } else {
        (None, None)
    };
    Health {
        status: if db_ok && broker_ok { "ok" } else { "degraded" }.to_owned(),
        db_ok,
        broker_ok,
        paused,
        workers,
    }
}

/// Always 200 while the process serves; the body says how its dependencies are.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(gather(&state).await)
}

/// 200 when the task store (PostgreSQL, or the embedded engine's SQLite file) answers, else 503.
/// The queue (RabbitMQ) is left out on purpose: enqueue keeps accepting tasks while the broker is
/// down (the rows are the outbox and the relay publishes them later), so a broker outage must not
/// take every API replica out of service. `/health` and the metrics report the broker.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = Ready), (status = 503, body = ErrorBody)))]
pub async fn ready(
    State(state): State<AppState>,
) -> Result<Json<Ready>, (StatusCode, Json<ErrorBody>)> {
    if state.store.ping(CHECK_TIMEOUT).await {
        return Ok(Json(Ready { ready: true }));
    }
    let body = ErrorBody {
        error: ErrorDetail {
            code: "not_ready".to_owned(),
            // The store's engine: `postgresql`, or `sqlite` in the embedded engine.
            message: format!("unreachable: {}", state.store.engine()),
            field: None,
        },
    };
    Err((StatusCode::SERVICE_UNAVAILABLE, Json(body)))
}
