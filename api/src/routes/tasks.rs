//! `POST /enqueue`, `GET /tasks`, `GET /tasks/{id}`, `POST /tasks/{id}/cancel`, `GET /processed`.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use bgagent_shared::domain::{EnqueueRequest, NewTask, Task, TaskStatus};
use bgagent_shared::queue::ControlMessage;
use bgagent_shared::store::{CancelOutcome, TaskFilter};
use bgagent_types::{AttemptPage, TaskPage};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, parse_task_id};
use crate::routes::parse_limit;
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/enqueue", post(enqueue))
        .route("/tasks", get(list_tasks))
        .route("/tasks/{id}", get(get_task))
        .route("/tasks/{id}/cancel", post(cancel_task))
        .route("/processed", get(list_processed))
}

/// The `Idempotency-Key` header as the API document states it: visible ASCII and inner spaces
/// (`HeaderValue::to_str` would also let a tab through).
fn parse_header_key(raw: &[u8]) -> ApiResult<&str> {
    let visible = |b: &u8| (b'!'..=b'~').contains(b);
    let ok = raw.first().is_some_and(visible)
        && raw.last().is_some_and(visible)
        && raw.iter().all(|b| (b' '..=b'~').contains(b));
    match std::str::from_utf8(raw) {
        Ok(key) if ok => Ok(key),
        _ => Err(ApiError::unprocessable(
            "Idempotency-Key",
            "must be visible ASCII, with spaces only inside",
        )),
    }
}

/// Accept a task: validate, commit its row, publish it.
#[utoipa::path(post, path = "/enqueue", tag = "tasks", request_body = EnqueueRequest,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false,
        pattern = r"^[!-~]([ -~]*[!-~])?$", min_length = 1, max_length = 255,
        description = "Alternative to the body's idempotency_key (visible ASCII; must equal it when both are sent)")),
    responses(
        (status = 202, description = "Task accepted", body = Task),
        (status = 200, description = "The idempotency key exists; the existing task", body = Task),
        (status = 503, description = "Database unavailable; nothing was accepted", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn enqueue(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<EnqueueRequest>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let header_key = match headers.get("idempotency-key") {
        Some(v) => Some(parse_header_key(v.as_bytes())?),
        None => None,
    };
    let task = NewTask::parse(request, header_key)?;
    let inserted = state.enqueuer.enqueue(task).await?;
    let status = if inserted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(inserted.task)))
}

/// Query of `GET /tasks`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTasksQuery {
    /// Only tasks with this status.
    #[param(value_type = Option<TaskStatus>)]
    pub status: Option<String>,
    /// Only tasks of this agent.
    #[param(
        pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub agent: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    pub cursor: Option<String>,
    /// `true`: each task with its `meta` and `result`. Default `false`: summaries without them
    /// (they can be 256 KiB and 1 MiB per task); `GET /tasks/{id}` has them.
    #[param(value_type = Option<bool>)]
    pub full: Option<String>,
}

/// List tasks newest first with keyset pagination: summaries (no `meta`, no `result`) unless
/// `full=true`.
#[utoipa::path(get, path = "/tasks", tag = "tasks", params(ListTasksQuery),
    responses((status = 200, description = "A page of tasks (summaries unless full=true)", body = TaskPage),
        (status = 400, description = "Bad cursor or query string", body = ErrorBody),
        (status = 422, description = "Invalid status, agent or limit", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list_tasks(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListTasksQuery>,
) -> ApiResult<Json<TaskPage>> {
    task_page(&state, query).await.map(Json)
}

/// Validate a task listing query and fetch its page (`GET /tasks` and the MCP `list_tasks` tool).
pub async fn task_page(state: &AppState, query: ListTasksQuery) -> ApiResult<TaskPage> {
    let limit = parse_limit(query.limit.as_deref())?;
    let status = query
        .status
        .as_deref()
        .map(|s| s.parse::<TaskStatus>().map_err(bgagent_shared::Error::from))
        .transpose()?;
    let agent = query
        .agent
        .as_deref()
        .map(|a| bgagent_shared::domain::parse_agent_name("agent", a))
        .transpose()?;
    let before = query
        .cursor
        .as_deref()
        .map(|c| {
            Uuid::parse_str(c)
                .map_err(|_| ApiError::BadRequest("bad cursor: use next_cursor as given".into()))
        })
        .transpose()?;
    let full = match query.full.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::unprocessable("full", "must be true or false")),
    };
    let filter = TaskFilter {
        status,
        agent,
        before,
        limit: limit + 1,
        full,
    };
    let mut tasks = state.store.tasks(&filter).await?;
    let next_cursor = page_cursor(&mut tasks, limit, |t| t.id.to_string());
    Ok(TaskPage { tasks, next_cursor })
}

/// Trim a page fetched with `limit + 1` rows; the cursor is the last kept row when more exist.
fn page_cursor<T>(rows: &mut Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(key)
    } else {
        None
    }
}

/// Query of `GET /tasks/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetTaskQuery {
    /// Wait up to this many seconds (0-60) for the task to be final (succeeded, failed,
    /// cancelled): the answer comes as soon as it is, or with its current state when the time is
    /// up. The wait ends 1 s before the server's request timeout at the latest.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 60)]
    pub wait_secs: Option<String>,
}

/// One task with its status, attempts, result and timestamps; with `wait_secs`, once it is final.
#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks",
    params(("id" = Uuid, Path, description = "Task id"), GetTaskQuery),
    responses((status = 200, description = "The task", body = Task),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 422, description = "Invalid wait_secs", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<GetTaskQuery>,
) -> ApiResult<Json<Task>> {
    let id = parse_task_id(&id)?;
    match crate::wait::parse_wait_secs(query.wait_secs.as_deref())? {
        Some(secs) => crate::wait::wait_task(&state, id, std::time::Duration::from_secs(secs))
            .await
            .map(Json),
        None => find_task(&state, id).await.map(Json),
    }
}

/// One task, or 404 (`GET /tasks/{id}` and the MCP `get_task` tool).
pub async fn find_task(state: &AppState, id: Uuid) -> ApiResult<Task> {
    state
        .store
        .task(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no task {id}")))
}

/// Cancel a task: a queued one at once (200), a running one through its worker (202).
#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = "tasks",
    params(("id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "Cancelled", body = Task),
        (status = 202, description = "Running; its worker was asked to cancel it", body = Task),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn cancel_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let id = parse_task_id(&id)?;
    let (status, task) = cancel(&state, id).await?;
    Ok((status, Json(task)))
}

/// Cancel a task (`POST /tasks/{id}/cancel` and the MCP `cancel_task` tool): 200 with the
/// cancelled task when it was queued, 202 when its worker was asked to stop it.
pub async fn cancel(state: &AppState, id: Uuid) -> ApiResult<(StatusCode, Task)> {
    match state.store.cancel(id).await? {
        CancelOutcome::Cancelled(task) => {
            tracing::info!(task_id = %id, agent = %task.agent, "cancelled queued task");
            Ok((StatusCode::OK, task))
        }
        CancelOutcome::Requested(task) => {
            let message = ControlMessage::Cancel {
                task_id: id,
                worker_id: task.worker_id.clone(),
            };
            // The stored cancel_requested flag is the source of truth: a worker that misses this
            // message still records `cancelled` when the attempt ends.
            if let Err(e) = state.queue.broadcast(&message).await {
                tracing::warn!(task_id = %id, error = %e, "cancel message not delivered; the worker will see the flag");
            }
            tracing::info!(task_id = %id, agent = %task.agent, "cancel requested for running task");
            Ok((StatusCode::ACCEPTED, task))
        }
        CancelOutcome::AlreadyFinished(task) => Err(ApiError::Conflict(format!(
            "task {id} already {}",
            task.status
        ))),
        CancelOutcome::NotFound => Err(ApiError::NotFound(format!("no task {id}"))),
    }
}

/// Query of `GET /processed`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProcessedQuery {
    /// Page size, 1-500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<i64>)]
    cursor: Option<String>,
}

/// Attempt records, newest first.
#[utoipa::path(get, path = "/processed", tag = "tasks", params(ProcessedQuery),
    responses((status = 200, description = "A page of attempt records", body = AttemptPage),
        (status = 400, description = "Bad cursor or query string", body = ErrorBody),
        (status = 422, description = "Invalid limit", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list_processed(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ProcessedQuery>,
) -> ApiResult<Json<AttemptPage>> {
    let limit = parse_limit(query.limit.as_deref())?;
    let before = query
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::BadRequest("bad cursor: use next_cursor as given".into()))
        })
        .transpose()?;
    let mut processed = state.store.attempts(before, limit + 1).await?;
    let next_cursor = page_cursor(&mut processed, limit, |a| a.id.to_string());
    Ok(Json(AttemptPage {
        processed,
        next_cursor,
    }))
}
