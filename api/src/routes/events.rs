//! `GET /events`: task status changes as server-sent events (see [`crate::events`]).

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{KeepAlive, Sse};
use axum::routing::get;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{ApiError, ApiResult};
use crate::events::{Filter, KEEP_ALIVE};
use crate::extract::ApiQuery;
use crate::state::AppState;

/// The route, in a router of its own so that its authentication layer can differ from the
/// REST routes' (the dashboard's session also opens it).
pub fn router() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

/// Query of `GET /events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this task's changes. The stream then opens with the task's current state.
    #[param(value_type = Option<uuid::Uuid>)]
    pub task_id: Option<String>,
    /// Only this agent's tasks.
    #[param(
        pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub agent: Option<String>,
}

/// Task status changes as server-sent events.
///
/// Each change is `event: task`, `id: <opaque id>`, `data: <TaskEvent JSON>`; a comment line
/// every 15 s keeps the stream open. A client that reconnects with `Last-Event-ID` gets the
/// changes it missed when this API process still holds them; otherwise (another replica, a
/// restart, too long ago) the stream starts with `event: reset` (`data: {}`): re-read the state
/// you keep with the REST API. With `task_id` the stream starts with the task's current state,
/// so waiting for a task has no race (a change made meanwhile may then arrive twice). A client
/// too slow to read the stream is disconnected, never buffered for; reconnecting resumes it.
#[utoipa::path(get, path = "/events", tag = "tasks", params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received, to resume")),
    responses(
        (status = 200, description = "A stream of `task` events (and `reset`)",
            content_type = "text/event-stream", body = bgagent_types::TaskEvent),
        (status = 400, description = "The query string cannot be read", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorBody),
        (status = 404, description = "No task `task_id`", body = crate::error::ErrorBody),
        (status = 422, description = "Invalid task_id or agent", body = crate::error::ErrorBody),
        (status = 503, description = "Too many open event streams on this API process (BGAGENT_MAX_EVENT_STREAMS)",
            body = crate::error::ErrorBody)),
    security(("api_key" = [])))]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<impl IntoResponse> {
    let filter = Filter {
        task_id: query
            .task_id
            .as_deref()
            .map(|id| {
                uuid::Uuid::parse_str(id)
                    .map_err(|_| ApiError::unprocessable("task_id", "must be a UUID"))
            })
            .transpose()?,
        agent: query
            .agent
            .as_deref()
            .map(|a| bgagent_shared::domain::parse_agent_name("agent", a))
            .transpose()?,
    };
    let slot = state.events.admit().ok_or(ApiError::Unavailable(
        "event stream capacity (BGAGENT_MAX_EVENT_STREAMS)",
    ))?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let task_id = filter.task_id;
    // Subscribed before the snapshot is read, so a change in between is not lost.
    let subscription = state.events.subscribe(slot, filter, last_event_id);
    let snapshot = match task_id {
        Some(id) if !subscription.resumes() => {
            Some(crate::routes::tasks::find_task(&state, id).await?)
        }
        _ => None,
    };
    let stream = subscription.stream(snapshot.as_ref());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
