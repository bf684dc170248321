//! `GET /workers`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use bgagent_types::WorkerList;

use crate::error::ApiResult;
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/workers", get(list_workers))
}

/// Worker processes and their latest heartbeat.
#[utoipa::path(get, path = "/workers", tag = "control",
    responses((status = 200, body = WorkerList)), security(("api_key" = [])))]
pub async fn list_workers(State(state): State<AppState>) -> ApiResult<Json<WorkerList>> {
    Ok(Json(WorkerList {
        workers: state.store.workers().await?,
    }))
}
