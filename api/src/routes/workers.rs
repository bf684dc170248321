//! `GET /workers`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use bgagent_shared::domain::WorkerInfo;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/workers", get(list_workers))
}

/// Workers known from their heartbeats.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    /// Workers, latest heartbeat first.
    pub workers: Vec<WorkerInfo>,
}

/// Worker processes and their latest heartbeat.
#[utoipa::path(get, path = "/workers", tag = "control",
    responses((status = 200, body = WorkerList)), security(("api_key" = [])))]
pub async fn list_workers(State(state): State<AppState>) -> ApiResult<Json<WorkerList>> {
    Ok(Json(WorkerList {
        workers: state.store.workers().await?,
    }))
}
