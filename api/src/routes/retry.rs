//! `POST /tasks/{id}/retry` and `POST /tasks/retry` (redrive): failed or cancelled tasks queued
//! again under their ids, with a fresh attempt budget; their earlier attempts stay in
//! `GET /processed`.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::post;
use bgagent_shared::domain::{Task, TaskStatus};
use bgagent_shared::store::{RetryFilter, RetryOutcome};
use bgagent_types::retry::{RETRY_ALL_DEFAULT_LIMIT, RETRY_ALL_MAX_LIMIT};
use bgagent_types::{RetryAllRequest, RetryAllResult};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, parse_task_id};
use crate::state::AppState;

/// Tasks one statement of a bulk retry queues again: a bounded transaction, so it never holds
/// many row locks (or the embedded engine's writer) for long.
const RETRY_BATCH: i64 = 1_000;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks/retry", post(retry_all))
        .route("/tasks/{id}/retry", post(retry_task))
}

/// Queue a failed or cancelled task again under its id, with a fresh attempt budget.
#[utoipa::path(post, path = "/tasks/{id}/retry", tag = "tasks",
    params(("id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "Queued again; its attempt numbers keep counting", body = Task),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task is queued, running or succeeded", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn retry_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    let id = parse_task_id(&id)?;
    retry(&state, id).await.map(Json)
}

/// Retry one task (`POST /tasks/{id}/retry` and the MCP `retry_task` tool).
pub async fn retry(state: &AppState, id: Uuid) -> ApiResult<Task> {
    match state.store.retry(id).await? {
        RetryOutcome::Retried(task) => {
            tracing::info!(task_id = %id, agent = %task.agent, attempts = task.attempts, "retried task");
            // The relay publishes a row that has run before on its next pass, but leaves one
            // that never ran (cancelled while queued) to the API for a few seconds after it was
            // created, as it does a fresh enqueue: publish that one here.
            if task.attempts == 0 {
                publish(state, id).await;
            }
            Ok(task)
        }
        RetryOutcome::NotRetryable(task) => Err(ApiError::Conflict(format!(
            "task {id} is {}; only failed or cancelled tasks are retried",
            task.status
        ))),
        RetryOutcome::NotFound => Err(ApiError::NotFound(format!("no task {id}"))),
    }
}

/// Publish a retried task now; on any failure the row stays unpublished for the relay.
async fn publish(state: &AppState, id: Uuid) {
    match state.queue.publish(&[id], 1).await {
        Ok(confirmed) if !confirmed.is_empty() => {
            if let Err(e) = state.store.mark_published(&confirmed).await {
                tracing::debug!(task_id = %id, error = %e, "retried task not marked; the relay may publish it again");
            }
        }
        Ok(_) => {
            tracing::debug!(task_id = %id, "retry publish not confirmed; the relay will publish it")
        }
        Err(e) => {
            tracing::warn!(task_id = %id, error = %e, "retry publish failed; the relay will publish it")
        }
    }
}

/// Queue again the failed (or cancelled) tasks that match a filter, oldest finished first, in
/// batches; the relay publishes them.
#[utoipa::path(post, path = "/tasks/retry", tag = "tasks", request_body = RetryAllRequest,
    responses(
        (status = 200, description = "How many tasks were queued again", body = RetryAllResult),
        (status = 422, description = "A field is out of bounds", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn retry_all(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RetryAllRequest>,
) -> ApiResult<Json<RetryAllResult>> {
    let status = TaskStatus::from(request.status.unwrap_or_default());
    let limit = request.limit.unwrap_or(RETRY_ALL_DEFAULT_LIMIT);
    if !(1..=RETRY_ALL_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::unprocessable(
            "limit",
            format!("must be an integer from 1 to {RETRY_ALL_MAX_LIMIT}"),
        ));
    }
    let filter = RetryFilter {
        status,
        agent: request.agent,
        finished_after: request.finished_after,
    };
    retry_matching(&state, &filter, limit).await.map(Json)
}

/// Queue again up to `limit` tasks matching `filter`, in batches of [`RETRY_BATCH`]
/// (`POST /tasks/retry` and the dashboard's "retry all" form).
pub async fn retry_matching(
    state: &AppState,
    filter: &RetryFilter,
    limit: i64,
) -> ApiResult<RetryAllResult> {
    let mut retried: u64 = 0;
    let mut more = false;
    loop {
        let left = limit - i64::try_from(retried).unwrap_or(limit);
        if left <= 0 {
            // The limit was reached; whether more match is not looked up (that would be one
            // more scan): the caller sends the request again.
            more = true;
            break;
        }
        let want = left.min(RETRY_BATCH);
        let done = state.store.retry_batch(filter, want).await?.len() as u64;
        retried += done;
        if i64::try_from(done).unwrap_or(0) < want {
            break;
        }
    }
    tracing::info!(retried, more, status = %filter.status, agent = ?filter.agent, "bulk retry");
    Ok(RetryAllResult { retried, more })
}
