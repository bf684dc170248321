//! The HTTP API: every endpoint's success path, every bad-input class, idempotency under
//! concurrency, publishing, control messages, and behaviour with a service down. Each test runs
//! on both engines (RabbitMQ's message and control-exchange checks on PostgreSQL + RabbitMQ only),
//! except the service-down ones, which are about an unreachable PostgreSQL or RabbitMQ.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::api_support::{claim_as, count_tasks, published, record_as, wait_published};
use crate::both_engines;
use crate::common::{EngineKind, TEST_KEY, TestApi, TestEnv, assert_error};
use bgagent_shared::domain::TaskStatus;
use bgagent_shared::store::AttemptOutcome;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

fn id_of(task: &Value) -> Uuid {
    task["id"].as_str().unwrap().parse().unwrap()
}

both_engines! {
    async fn enqueue_records_publishes_and_lists_tasks(env: TestEnv) {
        let api = env.spawn_api().await;

        let task = api
            .enqueue(&json!({"agent": "echo", "command": "hello", "meta": {"n": 1}, "max_attempts": 3}))
            .await;
        let id = task["id"].as_str().unwrap().to_owned();
        assert_eq!(Uuid::parse_str(&id).unwrap().get_version_num(), 7);
        assert_eq!(task["status"], "queued");
        assert_eq!(task["meta"], json!({"n": 1}));
        assert_eq!(task["max_attempts"], 3);
        assert_eq!(task["timeout_secs"], 300);
        // The row is marked published shortly after the answer (off the request path).
        wait_published(&env, id_of(&task)).await;

        // The message is on the queue, as the API's queue gauge reports.
        let metrics = api.text(&api.url("/metrics")).await;
        assert!(
            metrics.contains("bgagent_queue_messages{queue=\"tasks\"} 1"),
            "{metrics}"
        );
        // RabbitMQ only: the message is persistent and carries the task id.
        if env.kind == EngineKind::Postgres {
            let conn = env.amqp().await;
            let ch = conn.create_channel().await.unwrap();
            let msg = ch
                .basic_get(
                    env.topology().tasks_queue().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap()
                .expect("a message on the tasks queue");
            assert_eq!(msg.delivery.properties.delivery_mode(), &Some(2));
            let body: Value = serde_json::from_slice(&msg.delivery.data).unwrap();
            assert_eq!(body["task_id"], id);
        }

        let (status, got) = api.get(&format!("/tasks/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got["command"], "hello");
        assert_eq!(got["attempts"], 0);

        // Newest first with keyset pagination and filters.
        for i in 0..4 {
            api.enqueue(&json!({"agent": "other", "command": format!("c{i}")}))
                .await;
        }
        let (status, page) = api.get("/tasks?limit=2").await;
        assert_eq!(status, StatusCode::OK);
        let tasks = page["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0]["command"], "c3");
        assert_eq!(tasks[1]["command"], "c2");
        let cursor = page["next_cursor"]
            .as_str()
            .expect("next_cursor")
            .to_owned();
        let (_, page2) = api.get(&format!("/tasks?limit=2&cursor={cursor}")).await;
        let commands: Vec<&str> = page2["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["command"].as_str().unwrap())
            .collect();
        assert_eq!(commands, ["c1", "c0"]);
        let (_, page3) = api
            .get(&format!(
                "/tasks?limit=2&cursor={}",
                page2["next_cursor"].as_str().unwrap()
            ))
            .await;
        assert_eq!(page3["tasks"].as_array().unwrap().len(), 1);
        assert!(
            page3.get("next_cursor").is_none(),
            "last page has no cursor"
        );

        let (_, by_agent) = api.get("/tasks?agent=echo").await;
        assert_eq!(by_agent["tasks"].as_array().unwrap().len(), 1);
        let (_, by_status) = api.get("/tasks?status=succeeded").await;
        assert_eq!(by_status["tasks"].as_array().unwrap().len(), 0);
        let (_, queued) = api.get("/tasks?status=queued&limit=500").await;
        assert_eq!(queued["tasks"].as_array().unwrap().len(), 5);
    }
}

both_engines! {
    async fn delayed_tasks_wait_unpublished(env: TestEnv) {
        let api = env.spawn_api().await;
        let task = api
            .enqueue(&json!({"agent": "echo", "command": "later", "delay_secs": 3600}))
            .await;
        assert!(task["published_at"].is_null());
        assert_eq!(published(&env, id_of(&task)).await, Some(false));
        let run_at = chrono::DateTime::parse_from_rfc3339(task["run_at"].as_str().unwrap()).unwrap();
        let created =
            chrono::DateTime::parse_from_rfc3339(task["created_at"].as_str().unwrap()).unwrap();
        assert_eq!((run_at - created).num_seconds(), 3600);
    }
}

both_engines! {
    async fn one_idempotency_key_makes_one_task_under_concurrency(env: TestEnv) {
        let api = std::sync::Arc::new(env.spawn_api().await);
        let mut handles = Vec::new();
        for i in 0..50 {
            let api = api.clone();
            handles.push(tokio::spawn(async move {
                let body = json!({"agent": "echo", "command": format!("try {i}")});
                let req = api
                    .http
                    .post(api.url("/enqueue"))
                    .header("Idempotency-Key", "same-key")
                    .json(&body);
                api.send(req).await
            }));
        }
        let mut created = 0;
        let mut ids = HashSet::new();
        for h in handles {
            let (status, task) = h.await.unwrap();
            match status {
                StatusCode::ACCEPTED => created += 1,
                StatusCode::OK => {}
                other => panic!("unexpected {other}: {task}"),
            }
            assert_eq!(task["idempotency_key"], "same-key");
            ids.insert(task["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(created, 1, "exactly one request creates the task");
        assert_eq!(ids.len(), 1, "every answer names the same task");
        assert_eq!(count_tasks(&env).await, 1);

        // The body field works the same way, and must agree with the header when both are given.
        let (status, again) = api
            .post(
                "/enqueue",
                &json!({"agent": "echo", "command": "x", "idempotency_key": "same-key"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(ids.contains(again["id"].as_str().unwrap()));
        let mismatch = api
            .send(
                api.http
                    .post(api.url("/enqueue"))
                    .header("Idempotency-Key", "a")
                    .json(&json!({"agent": "echo", "command": "x", "idempotency_key": "b"})),
            )
            .await;
        assert_error(&mismatch, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        // A header key outside the documented pattern (a tab inside) is refused, naming the
        // header. Spaces at either end never arrive: HTTP strips them from header values.
        for bad in ["a\tb", "\ta\tb"] {
            let refused = api
                .send(
                    api.http
                        .post(api.url("/enqueue"))
                        .header("Idempotency-Key", bad)
                        .json(&json!({"agent": "echo", "command": "x"})),
                )
                .await;
            assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
            assert_eq!(refused.1["error"]["field"], "Idempotency-Key", "{bad:?}");
        }
    }
}

both_engines! {
    async fn cancel_queued_running_and_finished_tasks(env: TestEnv) {
        let api = env.spawn_api().await;

        // RabbitMQ only: a listener on the control exchange sees the cancel for the running task
        // (the in-process queue's broadcast has no outside listener).
        let listener = match env.kind {
            EngineKind::Postgres => Some(env.control_listener().await),
            EngineKind::Embedded => None,
        };

        let queued = api.enqueue(&json!({"agent": "echo", "command": "a"})).await;
        let (status, cancelled) = api
            .post(
                &format!("/tasks/{}/cancel", queued["id"].as_str().unwrap()),
                &json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(cancelled["status"], "cancelled");
        assert!(cancelled["finished_at"].is_string());

        let running = api.enqueue(&json!({"agent": "echo", "command": "b"})).await;
        let running_id = id_of(&running);
        claim_as(&env, running_id, "w-1").await;
        let (status, requested) = api
            .post(&format!("/tasks/{running_id}/cancel"), &json!({}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(requested["status"], "running");
        assert_eq!(requested["cancel_requested"], true);
        let stored = env.store.task(running_id).await.unwrap().unwrap();
        assert_eq!(stored.status, TaskStatus::Running);
        assert!(stored.cancel_requested, "the request is stored for the worker");
        if let Some((_conn, ch, queue)) = listener {
            let msg = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    if let Some(m) = ch
                        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                        .await
                        .unwrap()
                    {
                        return m;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .expect("cancel message");
            let body: Value = serde_json::from_slice(&msg.delivery.data).unwrap();
            assert_eq!(
                body,
                json!({"action": "cancel", "task_id": running_id, "worker_id": "w-1"})
            );
        }

        let (status, _) = api
            .post(
                &format!("/tasks/{}/cancel", queued["id"].as_str().unwrap()),
                &json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
        let missing = api
            .post(&format!("/tasks/{}/cancel", Uuid::now_v7()), &json!({}))
            .await;
        assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    }
}

both_engines! {
    async fn processed_lists_attempts_newest_first(env: TestEnv) {
        let api = env.spawn_api().await;
        let task = api.enqueue(&json!({"agent": "echo", "command": "a"})).await;
        let id = id_of(&task);
        // A worker runs it twice: a retry, then a success.
        for (outcome, status) in [
            (AttemptOutcome::Retry, TaskStatus::Queued),
            (AttemptOutcome::Succeeded, TaskStatus::Succeeded),
        ] {
            let claimed = claim_as(&env, id, "w-1").await;
            record_as(&env, "w-1", &claimed, outcome, status).await;
        }
        let (status, page) = api.get("/processed?limit=1").await;
        assert_eq!(status, StatusCode::OK);
        let first = &page["processed"][0];
        assert_eq!(first["attempt"], 2);
        assert_eq!(first["outcome"], "succeeded");
        assert_eq!(first["command"], "a");
        assert_eq!(first["task_id"], id.to_string());
        assert_eq!(first["worker_id"], "w-1");
        let cursor = page["next_cursor"].as_str().unwrap();
        let (_, page2) = api.get(&format!("/processed?cursor={cursor}")).await;
        assert_eq!(page2["processed"][0]["attempt"], 1);
        assert_eq!(page2["processed"].as_array().unwrap().len(), 1);
    }
}

both_engines! {
    async fn stop_and_start_store_state_and_broadcast(env: TestEnv) {
        let api = env.spawn_api().await;
        // RabbitMQ only: a consumer on the control exchange sees each broadcast (the in-process
        // queue's broadcast has no outside listener; workers reacting to it are tested apart).
        let mut listener = None;
        if env.kind == EngineKind::Postgres {
            let (conn, ch, queue) = env.control_listener().await;
            let consumer = ch
                .basic_consume(
                    queue.as_str().into(),
                    "test".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            listener = Some((conn, ch, consumer));
        }

        for (path, paused) in [
            ("/stop", true),
            ("/stop", true),
            ("/start", false),
            ("/start", false),
        ] {
            let (status, body) = api.post(path, &json!({})).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body["paused"], paused);
            assert_eq!(body["broadcast"], true);
            assert_eq!(env.store.paused().await.unwrap(), paused);
            let (_, health) = api.get("/health").await;
            assert_eq!(health["paused"], paused);
        }
        if let Some((_conn, _ch, mut consumer)) = listener {
            let mut actions = Vec::new();
            for _ in 0..4 {
                let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
                    .await
                    .expect("control message")
                    .unwrap()
                    .unwrap();
                let body: Value = serde_json::from_slice(&delivery.data).unwrap();
                actions.push(body["action"].as_str().unwrap().to_owned());
            }
            assert_eq!(actions, ["stop", "stop", "start", "start"]);
        }
        let (_, health) = api.get("/health").await;
        assert_eq!(health["paused"], false);
    }
}

both_engines! {
    async fn agents_register_list_and_unregister(env: TestEnv) {
        let api = env.spawn_api().await;
        let (status, agent) = api
            .post(
                "/agents/register",
                &json!({"name": "coder", "endpoint": "http://127.0.0.1:9/run", "meta": {"team": "x"}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(agent["endpoint"], "http://127.0.0.1:9/run");
        // Registering again updates in place.
        let (status, _) = api
            .post(
                "/agents/register",
                &json!({"name": "coder", "endpoint": "https://agent.example/v2"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (_, list) = api.get("/agents").await;
        let agents = list["agents"].as_array().unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0]["endpoint"], "https://agent.example/v2");
        assert_eq!(agents[0]["meta"], json!({}));

        let (status, body) = api
            .post("/agents/unregister", &json!({"name": "coder"}))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["unregistered"], true);
        let again = api
            .post("/agents/unregister", &json!({"name": "coder"}))
            .await;
        assert_error(&again, StatusCode::NOT_FOUND, "not_found");
        let (_, list) = api.get("/agents").await;
        assert_eq!(list["agents"], json!([]));

        for (body, field) in [
            (json!({"name": "Bad Name", "endpoint": "http://x/"}), "name"),
            (json!({"name": "a", "endpoint": "ftp://x/"}), "endpoint"),
            (
                json!({"name": "a", "endpoint": "http://user:secret@x/"}),
                "endpoint",
            ),
            (json!({"name": "a", "endpoint": "not a url"}), "endpoint"),
            (
                json!({"name": "a", "endpoint": "http://x/", "meta": [1]}),
                "meta",
            ),
        ] {
            let got = api.post("/agents/register", &body).await;
            assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
            assert_eq!(got.1["error"]["field"], field);
            assert!(
                !got.1.to_string().contains("secret"),
                "errors never echo credentials"
            );
        }
    }
}

both_engines! {
    async fn workers_health_ready_metrics_and_openapi(env: TestEnv) {
        let api = env.spawn_api().await;
        let (status, workers) = api.get("/workers").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(workers["workers"], json!([]));
        env.store.register_worker("w-1", "h", "0.1.0").await.unwrap();
        let (_, workers) = api.get("/workers").await;
        assert_eq!(workers["workers"][0]["id"], "w-1");

        // Public endpoints answer without a key.
        let health: Value = api.public_json("/health").await;
        assert_eq!(
            health,
            json!({"status": "ok", "db_ok": true, "broker_ok": true, "paused": false, "workers": 1})
        );
        let ready = api.http.get(api.url("/ready")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);

        let task = api.enqueue(&json!({"agent": "echo", "command": "m"})).await;
        // Publishing follows the answer; wait until the queue confirmed it (the row is marked).
        wait_published(&env, id_of(&task)).await;
        let metrics = api.text(&api.url("/metrics")).await;
        assert!(
            metrics.contains("bgagent_tasks_enqueued_total{agent=\"echo\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains(
                "bgagent_http_requests_total{method=\"POST\",route=\"/enqueue\",status=\"202\"} 1"
            ),
            "{metrics}"
        );
        assert!(
            metrics.contains("bgagent_queue_messages{queue=\"tasks\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("bgagent_queue_messages{queue=\"dead\"} 0"),
            "{metrics}"
        );
        assert!(metrics.contains("bgagent_fleet_paused 0"), "{metrics}");
        assert!(metrics.contains("bgagent_workers_live 1"), "{metrics}");
        assert!(metrics.contains("bgagent_http_request_duration_seconds_bucket{method=\"POST\",route=\"/enqueue\",status=\"202\""), "{metrics}");

        let (status, doc) = api.get("/openapi.json").await;
        assert_eq!(status, StatusCode::OK);
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let expected = [
            ("/enqueue", "post"),
            ("/tasks", "get"),
            ("/tasks/{id}", "get"),
            ("/tasks/{id}/cancel", "post"),
            ("/tasks/{id}/retry", "post"),
            ("/tasks/retry", "post"),
            ("/processed", "get"),
            ("/stop", "post"),
            ("/start", "post"),
            ("/agents", "get"),
            ("/agents/register", "post"),
            ("/agents/unregister", "post"),
            ("/workers", "get"),
            ("/health", "get"),
            ("/ready", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
        ];
        for (path, method) in expected {
            assert!(
                doc["paths"][path][method].is_object(),
                "OpenAPI lacks {method} {path}"
            );
            // Each documented route answers (not 404/405), so the document and router agree.
            let req = match method {
                "post" => api
                    .http
                    .post(api.url(&path.replace("{id}", &Uuid::now_v7().to_string())))
                    .json(&json!({})),
                _ => api
                    .http
                    .get(api.url(&path.replace("{id}", &Uuid::now_v7().to_string()))),
            };
            let (status, body) = api.send(req).await;
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED
                    && !(status == StatusCode::NOT_FOUND
                        && body["error"]["message"] == "no such route"),
                "{method} {path} is documented but not routed"
            );
        }
        // GET /events streams without end, so it is checked in `events.rs`, not answered here.
        assert!(doc["paths"]["/events"]["get"].is_object(), "OpenAPI lacks get /events");
        assert_eq!(
            doc["paths"].as_object().unwrap().len(),
            18,
            "every route, and only those"
        );
        assert!(doc["components"]["schemas"]["Task"].is_object());
    }
}

both_engines! {
    async fn bad_input_gets_precise_errors_and_creates_nothing(env: TestEnv) {
        let api = env.spawn_api().await;
        let ok = json!({"agent": "echo", "command": "x"});

        // Authentication: absent, wrong, and a spoofed role header grant nothing.
        let none = api
            .http
            .post(api.url("/enqueue"))
            .json(&ok)
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
        let body: Value = none.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        for req in [
            api.http
                .post(api.url("/enqueue"))
                .header("x-api-key", "wrong")
                .json(&ok),
            api.http
                .post(api.url("/enqueue"))
                .header("x-api-key", format!("{TEST_KEY}x"))
                .json(&ok),
            api.http
                .post(api.url("/enqueue"))
                .header("x-role", "admin")
                .json(&ok),
            api.http.get(api.url("/openapi.json")),
        ] {
            assert_eq!(req.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
        }

        // Body syntax: 400.
        for raw in [
            &b""[..],
            b"   ",
            b"{",
            b"{\"agent\": \"echo\",}",
            b"not json",
            b"{\"agent\":\"echo\",\"command\":\"\xff\xfe\"}",
            b"{} {}",
        ] {
            let got = api.post_raw("/enqueue", raw.to_vec()).await;
            assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
        }

        // Fields: 422 naming the field.
        let big_meta =
            json!({"agent": "echo", "command": "x", "meta": {"blob": "x".repeat(300 * 1024)}});
        let cases = [
            (json!({"command": "x"}), "agent"),
            (json!({"agent": "echo"}), "command"),
            (json!({"agent": 5, "command": "x"}), "agent"),
            (json!({"agent": "echo", "command": ["x"]}), "command"),
            (
                json!({"agent": "echo", "command": "x", "surprise": true}),
                "surprise",
            ),
            (json!({"agent": "Echo!", "command": "x"}), "agent"),
            (json!({"agent": "echo", "command": ""}), "command"),
            (
                json!({"agent": "echo", "command": "x".repeat(65_537)}),
                "command",
            ),
            (
                json!({"agent": "echo", "command": "x", "meta": "str"}),
                "meta",
            ),
            (big_meta, "meta"),
            (
                json!({"agent": "echo", "command": "x", "max_attempts": 0}),
                "max_attempts",
            ),
            (
                json!({"agent": "echo", "command": "x", "max_attempts": "3"}),
                "max_attempts",
            ),
            (
                json!({"agent": "echo", "command": "x", "timeout_secs": 100_000}),
                "timeout_secs",
            ),
            (
                json!({"agent": "echo", "command": "x", "delay_secs": -5}),
                "delay_secs",
            ),
            (
                json!({"agent": "echo", "command": "x", "idempotency_key": "k".repeat(256)}),
                "idempotency_key",
            ),
            (json!([]), "body"),
        ];
        for (body, field) in cases {
            let got = api.post("/enqueue", &body).await;
            assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
            assert_eq!(
                got.1["error"]["field"],
                field,
                "for {}",
                &body.to_string()[..body.to_string().len().min(80)]
            );
        }

        // Over the body limit: 413.
        let huge = format!(
            "{{\"agent\":\"echo\",\"command\":\"{}\"}}",
            "x".repeat(1024 * 1024 + 10)
        );
        let got = api.post_raw("/enqueue", huge).await;
        assert_error(&got, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

        // Ids, cursors and query parameters.
        assert_error(
            &api.get("/tasks/not-a-uuid").await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
        assert_error(
            &api.get(&format!("/tasks/{}", Uuid::now_v7())).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_error(
            &api.post("/tasks/zzz/cancel", &json!({})).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
        assert_error(
            &api.get("/tasks?cursor=abc").await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
        assert_error(
            &api.get("/processed?cursor=abc").await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
        for query in [
            "limit=0",
            "limit=501",
            "limit=ten",
            "status=done",
            "agent=Bad%20Agent",
        ] {
            assert_error(
                &api.get(&format!("/tasks?{query}")).await,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            );
        }
        assert_error(&api.get("/nope").await, StatusCode::NOT_FOUND, "not_found");
        let wrong_method = api.send(api.http.delete(api.url("/enqueue"))).await;
        assert_error(
            &wrong_method,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );

        assert_eq!(count_tasks(&env).await, 0, "no bad request created a task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_still_accepts_with_unpublished_rows() {
    let env = TestEnv::new().await;
    let mut config = env.api_config();
    // Nothing listens on port 1: the broker is unreachable for the API's whole life.
    config.broker.amqp_url = Some("amqp://guest:guest@127.0.0.1:1/%2f".to_owned().into());
    let api = TestApi::spawn(config).await;

    let task = api
        .enqueue(&json!({"agent": "echo", "command": "offline"}))
        .await;
    assert_eq!(task["status"], "queued");
    assert!(task["published_at"].is_null());
    assert_eq!(published(&env, id_of(&task)).await, Some(false));

    // The API stays in service: tasks are accepted into the outbox while the broker is down,
    // so readiness depends on PostgreSQL only; /health reports the broker.
    let ready = api.http.get(api.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let health: Value = api.public_json("/health").await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["broker_ok"], false);
    assert_eq!(health["db_ok"], true);

    // Stop still stores the state even though the broadcast fails.
    let (status, body) = api.post("/stop", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"paused": true, "broadcast": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_answers_503_and_publishes_nothing() {
    let env = TestEnv::new().await;
    let api = env.spawn_api_without_database().await;

    let got = api
        .post("/enqueue", &json!({"agent": "echo", "command": "x"}))
        .await;
    assert_error(&got, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(
        got.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("database")
    );
    assert!(
        !got.1.to_string().contains("127.0.0.1:1"),
        "no connection details in errors"
    );
    assert_error(
        &api.get("/tasks").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );

    let ready = api.http.get(api.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("postgresql")
    );
    let health = api.http.get(api.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "liveness stays 200");

    // Nothing reached the queue.
    let conn = env.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            env.topology().tasks_queue().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
}
