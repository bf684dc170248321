//! `POST /agents/register`, `POST /agents/unregister`, `GET /agents`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use bgagent_shared::domain::{Agent, parse_agent_name, parse_endpoint, parse_meta};
use bgagent_shared::egress;
use bgagent_types::{AgentList, RegisterRequest, UnregisterRequest, Unregistered};

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/agents", get(list_agents))
        .route("/agents/register", post(register))
        .route("/agents/unregister", post(unregister))
}

/// Register (or update) an agent's endpoint.
#[utoipa::path(post, path = "/agents/register", tag = "agents", request_body = RegisterRequest,
    responses((status = 200, body = Agent), (status = 400, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<Json<Agent>> {
    register_agent(&state, req).await.map(Json)
}

/// Validate and register (or update) an agent (`POST /agents/register` and the dashboard's
/// register form): the same name, endpoint, egress and meta rules for both.
pub async fn register_agent(state: &AppState, req: RegisterRequest) -> ApiResult<Agent> {
    let name = parse_agent_name("name", &req.name)?;
    let endpoint = parse_endpoint(&req.endpoint)?;
    egress::check_endpoint(&state.egress, "endpoint", &endpoint)?;
    let meta = parse_meta(req.meta)?;
    let agent = state
        .store
        .upsert_agent(&name, endpoint.as_str(), &meta)
        .await?;
    state.metrics.agents.registered(&name);
    tracing::info!(agent = %name, "agent registered");
    Ok(agent)
}

/// Remove an agent; its tasks then route to the gateway (or fail).
#[utoipa::path(post, path = "/agents/unregister", tag = "agents", request_body = UnregisterRequest,
    responses((status = 200, body = Unregistered), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn unregister(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<UnregisterRequest>,
) -> ApiResult<Json<Unregistered>> {
    unregister_agent(&state, &req.name).await.map(Json)
}

/// Remove a registered agent (`POST /agents/unregister` and the dashboard).
pub async fn unregister_agent(state: &AppState, name: &str) -> ApiResult<Unregistered> {
    let name = parse_agent_name("name", name)?;
    if !state.store.delete_agent(&name).await? {
        return Err(ApiError::NotFound(format!("no agent {name:?}")));
    }
    state.metrics.agents.unregistered(&name);
    tracing::info!(agent = %name, "agent unregistered");
    Ok(Unregistered {
        name,
        unregistered: true,
    })
}

/// Registered agents.
#[utoipa::path(get, path = "/agents", tag = "agents",
    responses((status = 200, body = AgentList)), security(("api_key" = [])))]
pub async fn list_agents(State(state): State<AppState>) -> ApiResult<Json<AgentList>> {
    Ok(Json(AgentList {
        agents: state.store.agents().await?,
    }))
}
