//! The Model Context Protocol server at `/mcp` (streamable HTTP, stateless, JSON responses).
//!
//! It sits behind the same `x-api-key` check as the REST routes and calls the same domain
//! functions, so a tool result is exactly the JSON the matching endpoint returns. Invalid
//! arguments are JSON-RPC errors (`-32602`) whose `data.field` names the offending field; a tool
//! that runs and fails (unknown id, task already finished, database down) answers a tool error
//! (`isError: true`) carrying the REST error body `{"error":{"code","message"}}`. Transport
//! errors the MCP library answers in plain text (405, 406, 413, a body that is not a JSON-RPC
//! message) are rewritten into that body too; a `Content-Type` other than `application/json` is 415.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::Layer;

use rmcp::handler::server::common::schema_for_input;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{CallToolResult, Implementation, JsonObject, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::extract::{parse_task_id, parse_value, require_json_content_type};
use crate::routes::tasks::{self, ListTasksQuery};
use crate::state::AppState;
use bgagent_shared::domain::{EnqueueRequest, NewTask};
use bgagent_types::AgentList;

/// The `/mcp` service. Stateless (no MCP session is kept between requests), so any API replica
/// can answer any request, as for the REST routes. Every error it answers has the API's JSON
/// error shape or is a JSON-RPC error.
pub fn service(
    state: AppState,
) -> impl tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    axum::middleware::from_fn(json_errors).layer(streamable_service(state))
}

fn streamable_service(state: AppState) -> StreamableHttpService<McpServer, NeverSessionManager> {
    let max_body_bytes = state.max_body_bytes;
    let server = McpServer::new(state);
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(max_body_bytes)
        // rmcp accepts only loopback `Host` headers by default, against DNS rebinding of servers
        // without authentication. This one requires the API key and is served under whatever
        // name the deployment gives the API.
        .disable_allowed_hosts();
    StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// Largest plain-text error body of the MCP library that is carried into a JSON error.
const MAX_PLAIN_ERROR_BYTES: usize = 16 * 1024;

/// Refuse a non-JSON `Content-Type` with the API's 415, and turn the plain-text errors of the MCP
/// library into the API's JSON error shape (its JSON-RPC errors pass unchanged).
async fn json_errors(req: Request, next: Next) -> Response {
    if req.method() == Method::POST
        && let Err(err) = require_json_content_type(req.headers(), true)
    {
        return err.into_response();
    }
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with(JSON_MIME));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_PLAIN_ERROR_BYTES).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let (status, code, message) = match status {
        // The content type was checked above, so the library's 415 means the body is not a
        // JSON-RPC message (malformed or too deeply nested JSON): a bad request, not a media type.
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::BAD_REQUEST => {
            (StatusCode::BAD_REQUEST, "bad_request", text)
        }
        StatusCode::METHOD_NOT_ALLOWED => (
            status,
            "method_not_allowed",
            "method not allowed on /mcp; use POST".to_owned(),
        ),
        StatusCode::NOT_ACCEPTABLE => (status, "not_acceptable", text),
        StatusCode::PAYLOAD_TOO_LARGE => (status, "payload_too_large", text),
        StatusCode::NOT_FOUND => (status, "not_found", text),
        s if s.is_server_error() => {
            tracing::error!(status = s.as_u16(), error = %text, "MCP transport failed");
            (s, "internal", "internal error".to_owned())
        }
        s => (s, "bad_request", text),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        message
    };
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message,
            field: None,
        },
    })
    .unwrap_or_default();
    parts.status = status;
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_MIME));
    Response::from_parts(parts, Body::from(body))
}

const JSON_MIME: &str = "application/json";

/// Arguments of `enqueue_task` (the body of `POST /enqueue`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueTaskArgs {
    /// Agent to route the task to (`^[a-z0-9][a-z0-9._-]{0,63}$`): a built-in (`echo`, `sleep`,
    /// `fail`), a registered agent, or a role the Omni Gateway knows.
    pub agent: String,
    /// What the agent should do, 1 to 65,536 bytes.
    pub command: String,
    /// Free-form JSON object passed to the executor (at most 256 KiB).
    #[serde(default)]
    pub meta: Option<JsonObject>,
    /// Enqueuing again with the same key returns the existing task instead of creating one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Attempts before the task fails (1-100, default 5).
    #[serde(default)]
    pub max_attempts: Option<i32>,
    /// Per-attempt timeout in seconds (1-86400, default 300).
    #[serde(default)]
    pub timeout_secs: Option<i32>,
    /// Run no earlier than this many seconds from now (default 0).
    #[serde(default)]
    pub delay_secs: Option<i64>,
}

/// Arguments of `get_task`, `cancel_task` and `retry_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIdArgs {
    /// Task id (UUID), as `enqueue_task` returned it.
    pub id: String,
}

/// Arguments of `wait_task` (`GET /tasks/{id}?wait_secs=`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitTaskArgs {
    /// Task id (UUID), as `enqueue_task` returned it.
    pub id: String,
    /// Seconds to wait for the task to be final, 0-60 (default 30); the wait ends 1 s before
    /// the server's request timeout at the latest.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Arguments of `list_tasks` (the query of `GET /tasks`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListTasksArgs {
    /// Only tasks with this status: queued, running, succeeded, failed or cancelled.
    #[serde(default)]
    pub status: Option<String>,
    /// Only tasks of this agent.
    #[serde(default)]
    pub agent: Option<String>,
    /// Page size, 1-500 (default 50).
    #[serde(default)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Also return each task's `meta` and `result` (default false: summaries without them;
    /// `get_task` returns one task in full).
    #[serde(default)]
    pub full: Option<bool>,
}

/// Arguments of `list_agents` (none).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// The MCP tools; one instance serves every request.
#[derive(Clone)]
pub struct McpServer {
    state: AppState,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl McpServer {
    fn new(state: AppState) -> Self {
        Self {
            state,
            tool_router: Self::tool_router(),
        }
    }

    /// Enqueue a task for an agent. Returns the task (its `id` and `status`); an existing
    /// idempotency key returns the task it created.
    #[tool(input_schema = schema::<EnqueueTaskArgs>())]
    async fn enqueue_task(&self, args: JsonObject) -> Result<CallToolResult, ErrorData> {
        let EnqueueTaskArgs {
            agent,
            command,
            meta,
            idempotency_key,
            max_attempts,
            timeout_secs,
            delay_secs,
        } = parse_args(args)?;
        let request = EnqueueRequest {
            agent,
            command,
            meta: meta.map(Value::Object),
            idempotency_key,
            max_attempts,
            timeout_secs,
            delay_secs,
        };
        let result: Result<_, ApiError> = async {
            let task = NewTask::parse(request, None)?;
            Ok(self.state.enqueuer.enqueue(task).await?.task)
        }
        .await;
        respond(result)
    }

    /// One task with its status, attempts, result, last error and timestamps.
    #[tool(input_schema = schema::<TaskIdArgs>(), annotations(read_only_hint = true))]
    async fn get_task(&self, args: JsonObject) -> Result<CallToolResult, ErrorData> {
        let id = task_id(args)?;
        respond(tasks::find_task(&self.state, id).await)
    }

    /// Wait until a task is final (succeeded, failed or cancelled) and return it, or return its
    /// current state after `timeout_secs`; call again while its status is queued or running.
    #[tool(input_schema = schema::<WaitTaskArgs>(), annotations(read_only_hint = true))]
    async fn wait_task(&self, args: JsonObject) -> Result<CallToolResult, ErrorData> {
        let WaitTaskArgs { id, timeout_secs } = parse_args(args)?;
        let id = parse_id(&id)?;
        let secs = timeout_secs.unwrap_or(30);
        if secs > crate::wait::MAX_WAIT_SECS {
            return Err(invalid_arguments(ApiError::unprocessable(
                "timeout_secs",
                format!(
                    "must be an integer from 0 to {}",
                    crate::wait::MAX_WAIT_SECS
                ),
            )));
        }
        respond(crate::wait::wait_task(&self.state, id, std::time::Duration::from_secs(secs)).await)
    }

    /// Tasks newest first, optionally filtered by status and agent; pass `next_cursor` as
    /// `cursor` for the next page. Summaries without `meta` and `result` unless `full` is true.
    #[tool(input_schema = schema::<ListTasksArgs>(), annotations(read_only_hint = true))]
    async fn list_tasks(&self, args: JsonObject) -> Result<CallToolResult, ErrorData> {
        let ListTasksArgs {
            status,
            agent,
            limit,
            cursor,
            full,
        } = parse_args(args)?;
        let query = ListTasksQuery {
            status,
            agent,
            limit: limit.map(|l| l.to_string()),
            cursor,
            full: full.map(|f| f.to_string()),
        };
        respond(tasks::task_page(&self.state, query).await)
    }

    /// Cancel a task: a queued one at once (status `cancelled`), a running one through the worker
    /// holding it (`cancel_requested` is set and the worker records `cancelled`).
    #[tool(input_schema = schema::<TaskIdArgs>(), annotations(destructive_hint = true, idempotent_hint = true))]
    async fn cancel_task(&self, args: JsonObject) -> Result<CallToolResult, ErrorData> {
        let id = task_id(args)?;
        respond(
            tasks::cancel(&self.state, id)
                .await
                .map(|(_status, task)| task),
        )
    }

    /// Queue a failed or cancelled task again under its id, with a fresh attempt budget (its
    /// attempt numbers keep counting). A queued, running or succeeded task is refused.
    #[tool(input_schema = schema::<TaskIdArgs>(), annotations(destructive_hint = false, idempotent_hint = false))]
    async fn retry_task(&self, args: JsonObject) -> Result<CallToolResult, ErrorData> {
        let id = task_id(args)?;
        respond(crate::routes::retry::retry(&self.state, id).await)
    }

    /// Registered agents (name, endpoint, meta) that tasks can be routed to.
    #[tool(input_schema = schema::<NoArgs>(), annotations(read_only_hint = true))]
    async fn list_agents(&self, args: JsonObject) -> Result<CallToolResult, ErrorData> {
        let NoArgs {} = parse_args(args)?;
        let result: Result<_, ApiError> = async {
            Ok(AgentList {
                agents: self.state.store.agents().await?,
            })
        }
        .await;
        respond(result)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("bgagent", env!("CARGO_PKG_VERSION"))
                    .with_title("Background Agent"),
            )
            .with_instructions(
                "Background Agent runs tasks for agents durably: enqueue_task returns at once \
                 with the task's id; call wait_task (or get_task) until its status is succeeded, \
                 failed or cancelled, then read result or last_error.",
            )
    }
}

/// The input schema of a tool from its argument struct (field doc comments become descriptions).
fn schema<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    schema_for_input::<T>().unwrap_or_else(|e| {
        panic!(
            "invalid MCP input schema for {}: {e}",
            std::any::type_name::<T>()
        )
    })
}

/// Deserialize tool arguments with the REST API's rules: missing, unknown and mistyped fields are
/// named.
fn parse_args<T: DeserializeOwned>(args: JsonObject) -> Result<T, ErrorData> {
    parse_value(Value::Object(args)).map_err(invalid_arguments)
}

fn task_id(args: JsonObject) -> Result<uuid::Uuid, ErrorData> {
    let TaskIdArgs { id } = parse_args(args)?;
    parse_id(&id)
}

fn parse_id(id: &str) -> Result<uuid::Uuid, ErrorData> {
    parse_task_id(id).map_err(|_| {
        invalid_arguments(ApiError::unprocessable(
            "id",
            format!("{id:?} is not a task id (UUID)"),
        ))
    })
}

/// A JSON-RPC "invalid params" error for an argument problem, with the REST error detail
/// (`code`, `field`) as its data.
fn invalid_arguments(err: ApiError) -> ErrorData {
    let (_, body) = err.report();
    let data = serde_json::to_value(&body.error).unwrap_or(Value::Null);
    ErrorData::invalid_params(body.error.message, Some(data))
}

/// The tool result: the endpoint's JSON on success; an argument error as a JSON-RPC error; any
/// other failure as a tool error carrying the REST error body.
fn respond<T: serde::Serialize>(result: Result<T, ApiError>) -> Result<CallToolResult, ErrorData> {
    match result {
        Ok(value) => serde_json::to_value(value)
            .map(CallToolResult::structured)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None)),
        Err(err @ (ApiError::Unprocessable { .. } | ApiError::BadRequest(_))) => {
            Err(invalid_arguments(err))
        }
        Err(err) => {
            let (_, body) = err.report();
            Ok(CallToolResult::structured_error(json!(body)))
        }
    }
}
