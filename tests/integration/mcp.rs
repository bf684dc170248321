//! The MCP server at `/mcp`, driven by rmcp's streamable HTTP client over real HTTP: handshake,
//! tool listing with argument schemas, every tool against a real store, queue and worker (on both
//! engines), argument and unknown-id errors, and the API-key check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::api_support::count_tasks;
use crate::both_engines;
use crate::common::{TEST_KEY, TestApi};
use reqwest::StatusCode;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, ErrorCode};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

type Client = RunningService<RoleClient, ClientConfig>;

/// An rmcp client connected to `api`'s `/mcp`, sending `key` as `x-api-key` when given.
async fn connect(api: &TestApi, key: Option<&str>) -> Result<Client, String> {
    let mut headers = HashMap::new();
    if let Some(key) = key {
        headers.insert(
            "x-api-key".parse().unwrap(),
            key.parse().expect("header value"),
        );
    }
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(api.url("/mcp")).custom_headers(headers),
    );
    ClientConfig::default()
        .serve(transport)
        .await
        .map_err(|e| e.to_string())
}

async fn call(
    client: &Client,
    tool: &'static str,
    args: Value,
) -> Result<CallToolResult, ServiceError> {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(args))
        .await
}

/// A successful tool call's JSON (the structured content, which the text content repeats).
async fn ok(client: &Client, tool: &'static str, args: Value) -> Value {
    let result = call(client, tool, args.clone())
        .await
        .unwrap_or_else(|e| panic!("{tool}({args}) failed: {e}"));
    assert_ne!(result.is_error, Some(true), "{tool}({args}): {result:?}");
    let value = result
        .structured_content
        .clone()
        .expect("structured content");
    let text = result.content[0].as_text().expect("text content");
    assert_eq!(serde_json::from_str::<Value>(&text.text).unwrap(), value);
    value
}

/// The JSON-RPC error of a call that must fail with invalid params.
async fn invalid(client: &Client, tool: &'static str, args: Value) -> rmcp::ErrorData {
    match call(client, tool, args.clone()).await {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code, ErrorCode::INVALID_PARAMS, "{tool}({args}): {e:?}");
            e
        }
        other => panic!("{tool}({args}) should fail with invalid params: {other:?}"),
    }
}

/// The error body of a tool call that ran and failed (`isError: true`).
async fn tool_error(client: &Client, tool: &'static str, args: Value) -> Value {
    let result = call(client, tool, args.clone())
        .await
        .unwrap_or_else(|e| panic!("{tool}({args}) should be a tool error, got {e}"));
    assert_eq!(result.is_error, Some(true), "{tool}({args}): {result:?}");
    result.structured_content.expect("error body")
}

both_engines! {
    async fn mcp_client_lists_and_calls_every_tool(env: TestEnv) {
        let api = env.spawn_api().await;
        let client = connect(&api, Some(TEST_KEY)).await.expect("initialize");

        let info = client.peer_info().expect("server info after initialize");
        assert_eq!(
            info.server_info.as_ref().map(|s| s.name.as_str()),
            Some("bgagent")
        );
        assert!(info.capabilities.tools.is_some(), "tools capability");

        // Every tool, each with an object input schema naming its fields.
        let tools = client.list_all_tools().await.expect("tools/list");
        let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "cancel_task",
                "enqueue_task",
                "get_task",
                "list_agents",
                "list_tasks",
                "retry_task",
                "wait_task"
            ]
        );
        let fields = |name: &str| -> (Vec<String>, Vec<String>) {
            let tool = tools.iter().find(|t| t.name == name).unwrap();
            assert!(
                tool.description.as_deref().is_some_and(|d| !d.is_empty()),
                "{name} has a description"
            );
            let schema = &tool.input_schema;
            assert_eq!(schema["type"], "object", "{name}: {schema:?}");
            let mut props: Vec<String> = schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            props.sort_unstable();
            let mut required: Vec<String> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            required.sort_unstable();
            (props, required)
        };
        assert_eq!(
            fields("enqueue_task"),
            (
                vec![
                    "agent".into(),
                    "command".into(),
                    "delay_secs".into(),
                    "idempotency_key".into(),
                    "max_attempts".into(),
                    "meta".into(),
                    "timeout_secs".into()
                ],
                vec!["agent".into(), "command".into()]
            )
        );
        assert_eq!(fields("get_task"), (vec!["id".into()], vec!["id".into()]));
        assert_eq!(
            fields("cancel_task"),
            (vec!["id".into()], vec!["id".into()])
        );
        assert_eq!(
            fields("retry_task"),
            (vec!["id".into()], vec!["id".into()])
        );
        assert_eq!(
            fields("list_tasks"),
            (
                vec![
                    "agent".into(),
                    "cursor".into(),
                    "full".into(),
                    "limit".into(),
                    "status".into()
                ],
                vec![]
            )
        );
        assert_eq!(fields("list_agents"), (vec![], vec![]));
        let enqueue_schema = &tools
            .iter()
            .find(|t| t.name == "enqueue_task")
            .unwrap()
            .input_schema;
        assert!(
            enqueue_schema["properties"]["agent"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("echo")),
            "field doc comments become descriptions: {enqueue_schema:?}"
        );

        // enqueue_task → a worker runs it → get_task shows it succeeded, as GET /tasks/{id} does.
        let worker = env.spawn_worker(env.worker_options()).await;
        let task = ok(
            &client,
            "enqueue_task",
            json!({"agent": "echo", "command": "hello from mcp", "meta": {"n": 1}}),
        )
        .await;
        assert_eq!(task["status"], "queued");
        assert_eq!(task["agent"], "echo");
        let id = task["id"].as_str().unwrap().to_owned();
        env.wait_task(id.parse().unwrap(), Duration::from_secs(30), |t| {
            t.status.is_terminal()
        })
        .await;
        let got = ok(&client, "get_task", json!({"id": id})).await;
        assert_eq!(got["status"], "succeeded", "{got}");
        assert_eq!(
            got["result"],
            json!({"command": "hello from mcp", "meta": {"n": 1}})
        );
        let (status, rest) = api.get(&format!("/tasks/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got, rest, "the tool returns the task as the REST API does");

        // The same idempotency key returns the same task.
        let first = ok(
            &client,
            "enqueue_task",
            json!({"agent": "echo", "command": "once", "idempotency_key": "mcp-key"}),
        )
        .await;
        let again = ok(
            &client,
            "enqueue_task",
            json!({"agent": "echo", "command": "once", "idempotency_key": "mcp-key"}),
        )
        .await;
        assert_eq!(first["id"], again["id"]);
        worker.stop().await;

        // cancel_task on a delayed (queued) task cancels it at once; a second cancel is a conflict.
        let later = ok(
            &client,
            "enqueue_task",
            json!({"agent": "echo", "command": "later", "delay_secs": 3600}),
        )
        .await;
        assert_eq!(later["status"], "queued");
        let cancelled = ok(&client, "cancel_task", json!({"id": later["id"]})).await;
        assert_eq!(cancelled["id"], later["id"]);
        assert_eq!(cancelled["status"], "cancelled");
        let conflict = tool_error(&client, "cancel_task", json!({"id": later["id"]})).await;
        assert_eq!(conflict["error"]["code"], "conflict", "{conflict}");
        // retry_task queues the cancelled task again; a queued task is a conflict.
        let retried = ok(&client, "retry_task", json!({"id": later["id"]})).await;
        assert_eq!(retried["id"], later["id"]);
        assert_eq!(retried["status"], "queued");
        let conflict = tool_error(&client, "retry_task", json!({"id": later["id"]})).await;
        assert_eq!(conflict["error"]["code"], "conflict", "{conflict}");

        // list_tasks: newest first, filters and pages like GET /tasks.
        let page = ok(&client, "list_tasks", json!({})).await;
        let listed = page["tasks"].as_array().unwrap();
        assert_eq!(listed.len(), 3, "{page}");
        assert_eq!(listed[0]["id"], later["id"]);
        let (_, rest_page) = api.get("/tasks").await;
        assert_eq!(page, rest_page);
        let page = ok(
            &client,
            "list_tasks",
            json!({"status": "succeeded", "agent": "echo"}),
        )
        .await;
        let succeeded: Vec<&Value> = page["tasks"].as_array().unwrap().iter().collect();
        assert!(succeeded.iter().any(|t| t["id"] == id.as_str()), "{page}");
        assert!(
            succeeded.iter().all(|t| t["status"] == "succeeded"),
            "{page}"
        );
        let first_page = ok(&client, "list_tasks", json!({"limit": 1})).await;
        assert_eq!(first_page["tasks"].as_array().unwrap().len(), 1);
        let cursor = first_page["next_cursor"]
            .as_str()
            .expect("a next page")
            .to_owned();
        let second_page = ok(&client, "list_tasks", json!({"limit": 1, "cursor": cursor})).await;
        assert_ne!(second_page["tasks"][0]["id"], first_page["tasks"][0]["id"]);

        // list_agents: what GET /agents returns.
        let agents = ok(&client, "list_agents", json!({})).await;
        assert_eq!(agents, json!({"agents": []}));
        let (status, _) = api
            .post(
                "/agents/register",
                &json!({"name": "mcp-agent", "endpoint": "http://127.0.0.1:9/run"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let agents = ok(&client, "list_agents", json!({})).await;
        assert_eq!(agents["agents"][0]["name"], "mcp-agent");
        assert_eq!(agents["agents"][0]["endpoint"], "http://127.0.0.1:9/run");
        let (_, rest_agents) = api.get("/agents").await;
        assert_eq!(agents, rest_agents);

        client.cancel().await.expect("close the client");
    }
}

both_engines! {
    async fn mcp_errors_name_the_field_and_the_unknown_id(env: TestEnv) {
        let api = env.spawn_api().await;
        let client = connect(&api, Some(TEST_KEY)).await.expect("initialize");

        // Invalid arguments: JSON-RPC invalid params whose data names the field, as the REST 422 does.
        let cases = [
            ("enqueue_task", json!({"command": "x"}), "agent"),
            (
                "enqueue_task",
                json!({"agent": "Bad Name", "command": "x"}),
                "agent",
            ),
            (
                "enqueue_task",
                json!({"agent": "echo", "command": ""}),
                "command",
            ),
            ("enqueue_task", json!({"agent": 5, "command": "x"}), "agent"),
            (
                "enqueue_task",
                json!({"agent": "echo", "command": "x", "meta": [1]}),
                "meta",
            ),
            (
                "enqueue_task",
                json!({"agent": "echo", "command": "x", "max_attempts": 0}),
                "max_attempts",
            ),
            (
                "enqueue_task",
                json!({"agent": "echo", "command": "x", "delay_secs": -1}),
                "delay_secs",
            ),
            (
                "enqueue_task",
                json!({"agent": "echo", "command": "x", "nope": 1}),
                "nope",
            ),
            // Text PostgreSQL cannot store is refused before it reaches a shared insert.
            (
                "enqueue_task",
                json!({"agent": "echo", "command": "a\u{0}b"}),
                "command",
            ),
            (
                "enqueue_task",
                json!({"agent": "echo", "command": "x", "meta": {"k": "a\u{0}b"}}),
                "meta",
            ),
            (
                "enqueue_task",
                json!({"agent": "echo", "command": "x", "idempotency_key": "a\u{0}b"}),
                "idempotency_key",
            ),
            ("get_task", json!({}), "id"),
            ("get_task", json!({"id": "not-a-uuid"}), "id"),
            ("cancel_task", json!({"id": 42}), "id"),
            ("retry_task", json!({"id": "not-a-uuid"}), "id"),
            ("list_tasks", json!({"status": "sleeping"}), "status"),
            ("list_tasks", json!({"limit": 0}), "limit"),
            ("list_tasks", json!({"agent": "UPPER"}), "agent"),
            ("list_agents", json!({"extra": true}), "extra"),
        ];
        for (tool, args, field) in cases {
            let err = invalid(&client, tool, args.clone()).await;
            let data = err.data.clone().unwrap_or(Value::Null);
            assert_eq!(data["field"], field, "{tool}({args}): {err:?}");
            assert_eq!(data["code"], "invalid_field", "{tool}({args}): {err:?}");
            assert!(err.message.contains(field), "{tool}({args}): {err:?}");
        }
        let err = invalid(&client, "list_tasks", json!({"cursor": "nope"})).await;
        assert!(err.message.contains("cursor"), "{err:?}");

        // Unknown ids: a tool error with the REST not_found body.
        let unknown = uuid::Uuid::now_v7().to_string();
        for tool in ["get_task", "cancel_task", "retry_task"] {
            let body = tool_error(&client, tool, json!({"id": unknown})).await;
            assert_eq!(body["error"]["code"], "not_found", "{tool}: {body}");
            assert_eq!(body["error"]["message"], format!("no task {unknown}"));
        }

        // An unknown tool is a protocol error, and nothing was enqueued by any of this.
        assert!(matches!(
            call(&client, "drop_tables", json!({})).await,
            Err(ServiceError::McpError(_))
        ));
        assert_eq!(count_tasks(&env).await, 0);

        client.cancel().await.expect("close the client");
    }
}

both_engines! {
    async fn mcp_requires_the_api_key(env: TestEnv) {
        let api = env.spawn_api().await;
        let initialize = json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "raw", "version": "0"}}
        });
        for key in [None, Some("wrong-key"), Some("")] {
            let mut req = api
                .http
                .post(api.url("/mcp"))
                .header("accept", "application/json, text/event-stream")
                .json(&initialize);
            if let Some(key) = key {
                req = req.header("x-api-key", key);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "key {key:?}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "key {key:?}");
            // The MCP client cannot initialize either.
            let err = connect(&api, key)
                .await
                .err()
                .unwrap_or_else(|| panic!("initialized with key {key:?}"));
            assert!(
                err.contains("401") || err.to_lowercase().contains("auth"),
                "key {key:?}: {err}"
            );
        }
        // GET (server-initiated streams) needs the key too; with it, this stateless server has none.
        let res = api.http.get(api.url("/mcp")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = api
            .http
            .get(api.url("/mcp"))
            .header("x-api-key", TEST_KEY)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);

        // With the key, the same raw request is served.
        let res = api
            .http
            .post(api.url("/mcp"))
            .header("x-api-key", TEST_KEY)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["result"]["serverInfo"]["name"], "bgagent", "{body}");

        // Deployments reach the API under their own names (compose service, ingress host): a
        // non-loopback Host header is served, not refused as DNS rebinding.
        let res = api
            .http
            .post(api.url("/mcp"))
            .header("host", "bgagent-api.internal:8080")
            .header("x-api-key", TEST_KEY)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}

both_engines! {
    async fn mcp_wait_task_answers_when_final(env: TestEnv) {
        let api = env.spawn_api().await;
        let client = connect(&api, Some(TEST_KEY)).await.unwrap();
        let _worker = env.spawn_worker(env.worker_options()).await;
        let task = ok(
            &client,
            "enqueue_task",
            json!({"agent": "sleep", "command": "nap", "meta": {"ms": 300}}),
        )
        .await;
        let id = task["id"].as_str().unwrap().to_owned();
        let started = std::time::Instant::now();
        let done = ok(&client, "wait_task", json!({"id": id, "timeout_secs": 10})).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

        // A task no worker takes: its current state after the timeout.
        let later = ok(
            &client,
            "enqueue_task",
            json!({"agent": "echo", "command": "x", "delay_secs": 3600}),
        )
        .await;
        let started = std::time::Instant::now();
        let got = ok(&client, "wait_task", json!({"id": later["id"], "timeout_secs": 1})).await;
        assert_eq!(got["status"], "queued", "{got}");
        assert!(started.elapsed() >= Duration::from_millis(900));

        for args in [json!({"id": id, "timeout_secs": 61}), json!({"id": id, "timeout_secs": -1})] {
            let err = invalid(&client, "wait_task", args.clone()).await;
            let data = err.data.clone().unwrap_or(Value::Null);
            assert_eq!(data["field"], "timeout_secs", "{args}: {err:?}");
        }
        let unknown = uuid::Uuid::now_v7().to_string();
        let body = tool_error(&client, "wait_task", json!({"id": unknown, "timeout_secs": 30})).await;
        assert_eq!(body["error"]["code"], "not_found", "{body}");
        client.cancel().await.expect("close the client");
    }
}
