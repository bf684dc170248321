//! `POST /agents/register`, `POST /agents/unregister`, `GET /agents`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use bgagent_shared::domain::{Agent, parse_agent_name, parse_endpoint, parse_meta};
use bgagent_shared::egress;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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

/// Body of `POST /agents/register`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Agent name (`^[a-z0-9][a-z0-9._-]{0,63}$`).
    #[schema(
        pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub name: String,
    /// Absolute http(s) URL with a host and without credentials, at most 2048 bytes; workers
    /// POST tasks here. Its host must also pass the egress policy (docs/SECURITY.md).
    #[schema(
        format = "uri",
        pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+([/?#]\S*)?$",
        max_length = 2048
    )]
    pub endpoint: String,
    /// Free-form JSON object (at most 256 KiB; null or absent: `{}`), with the same rules as a
    /// task's `meta`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<serde_json::Value>,
}

/// Body of `POST /agents/unregister`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnregisterRequest {
    /// Agent name.
    #[schema(
        pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub name: String,
}

/// Answer of `POST /agents/unregister`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Unregistered {
    /// The agent.
    pub name: String,
    /// Always true.
    pub unregistered: bool,
}

/// All registered agents.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    /// Agents by name.
    pub agents: Vec<Agent>,
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
    Ok(Json(agent))
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
    let name = parse_agent_name("name", &req.name)?;
    if !state.store.delete_agent(&name).await? {
        return Err(ApiError::NotFound(format!("no agent {name:?}")));
    }
    state.metrics.agents.unregistered(&name);
    tracing::info!(agent = %name, "agent unregistered");
    Ok(Json(Unregistered {
        name,
        unregistered: true,
    }))
}

/// Registered agents.
#[utoipa::path(get, path = "/agents", tag = "agents",
    responses((status = 200, body = AgentList)), security(("api_key" = [])))]
pub async fn list_agents(State(state): State<AppState>) -> ApiResult<Json<AgentList>> {
    Ok(Json(AgentList {
        agents: state.store.agents().await?,
    }))
}
