//! `POST /stop`, `POST /start`: the fleet's paused state.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use bgagent_shared::queue::ControlMessage;
use bgagent_types::PausedState;

use crate::error::{ApiResult, ErrorBody};
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/stop", post(stop))
        .route("/start", post(start))
}

/// Pause the fleet: workers finish in-flight tasks and take no new ones.
#[utoipa::path(post, path = "/stop", tag = "control",
    responses((status = 200, body = PausedState), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn stop(State(state): State<AppState>) -> ApiResult<Json<PausedState>> {
    set_paused(&state, true).await.map(Json)
}

/// Resume the fleet.
#[utoipa::path(post, path = "/start", tag = "control",
    responses((status = 200, body = PausedState), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn start(State(state): State<AppState>) -> ApiResult<Json<PausedState>> {
    set_paused(&state, false).await.map(Json)
}

/// Store the fleet's paused state and broadcast it to the workers (`POST /stop`, `POST /start`
/// and the dashboard's pause and resume buttons).
pub async fn set_paused(state: &AppState, paused: bool) -> ApiResult<PausedState> {
    // Store first: the stored state is what workers reconcile with, the message only makes the
    // change immediate.
    let paused = state.store.set_paused(paused, "api").await?;
    let message = if paused {
        ControlMessage::Stop
    } else {
        ControlMessage::Start
    };
    let broadcast = match state.queue.broadcast(&message).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, paused, "control message not published; workers will reconcile");
            false
        }
    };
    tracing::info!(paused, "fleet paused state changed");
    Ok(PausedState { paused, broadcast })
}
