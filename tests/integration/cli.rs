//! The Rust client and the `bgagent` client commands against a real API on both engines: every
//! method and command, typed errors and exit codes, retries, and waiting for tasks run by a real
//! worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use crate::common::{TEST_KEY, TestApi, TestEnv};
use bgagent_client::{
    Client, EnqueueRequest, Error, PageQuery, RetryPolicy, TaskQuery, TaskStatus,
};
use serde_json::{Value, json};
use std::process::Output;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A URL where nothing listens.
const CLOSED: &str = "http://127.0.0.1:1";

fn client(api: &TestApi) -> Client {
    Client::builder()
        .base_url(&api.base)
        .api_key(TEST_KEY)
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap()
}

fn echo(command: &str) -> EnqueueRequest {
    EnqueueRequest {
        agent: "echo".into(),
        command: command.into(),
        ..Default::default()
    }
}

/// A task that stays queued for a minute (nothing runs it meanwhile).
fn delayed(command: &str) -> EnqueueRequest {
    EnqueueRequest {
        delay_secs: Some(60),
        ..echo(command)
    }
}

/// Run `bgagent` with `args` against `url` with `key`, off the test's runtime threads.
async fn bgagent_at(url: &str, key: &str, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bgagent"));
    cmd.args(args)
        .env("BGAGENT_URL", url)
        .env("BACKGROUND_AGENT_API_KEY", key)
        .env_remove("BACKGROUND_AGENT_API_KEY_FILE")
        .stdin(std::process::Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().expect("run bgagent"))
        .await
        .unwrap()
}

async fn bgagent(api: &TestApi, args: &[&str]) -> Output {
    bgagent_at(&api.base, TEST_KEY, args).await
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Assert success and parse stdout as one JSON document.
fn json_of(out: &Output) -> Value {
    assert_eq!(
        code(out),
        0,
        "stdout {} stderr {}",
        stdout(out),
        stderr(out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(out)))
}

/// Assert an exit code, with the output in the failure message.
fn assert_exit(out: &Output, expected: i32) {
    assert_eq!(
        code(out),
        expected,
        "stdout {} stderr {}",
        stdout(out),
        stderr(out)
    );
}

/// The value of one series of the API's `/metrics`.
async fn metric(api: &TestApi, series: &str) -> u64 {
    let text = api.text(&api.url("/metrics")).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The Rust client

both_engines! {
    async fn client_covers_every_endpoint(env: TestEnv) {
        let api = env.spawn_api().await;
        let worker = env.spawn_worker(env.worker_options()).await;
        let client = client(&api);

        // Enqueue: 202 creates; the same key again answers 200 with the same task.
        let keyed = EnqueueRequest {
            idempotency_key: Some("order-42".into()),
            meta: Some(json!({"n": 1})),
            max_attempts: Some(2),
            ..delayed("keyed")
        };
        let first = client.enqueue(keyed.clone()).await.unwrap();
        assert!(first.created);
        assert_eq!(first.task.status, TaskStatus::Queued);
        assert_eq!(first.task.meta, json!({"n": 1}));
        assert_eq!(first.task.max_attempts, 2);
        let again = client.enqueue(keyed).await.unwrap();
        assert!(!again.created);
        assert_eq!(again.task.id, first.task.id);
        // Without a key the client sends a fresh one, so two enqueues are two tasks.
        let a = client.enqueue(delayed("a")).await.unwrap();
        let b = client.enqueue(delayed("a")).await.unwrap();
        assert!(a.created && b.created);
        assert_ne!(a.task.id, b.task.id);
        assert!(a.task.idempotency_key.is_some());

        let got = client.get_task(first.task.id).await.unwrap();
        assert_eq!(got.command, "keyed");

        // Run one to the end, then page through everything with filters.
        let ran = client.enqueue(echo("run me")).await.unwrap();
        let done = client
            .wait(ran.task.id, Duration::from_secs(8))
            .await
            .unwrap();
        assert_eq!(done.status, TaskStatus::Succeeded);
        assert_eq!(done.result.as_ref().unwrap()["command"], "run me");

        let page = client
            .list_tasks(&TaskQuery {
                limit: Some(2),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.tasks.len(), 2);
        assert_eq!(page.tasks[0].id, ran.task.id, "newest first");
        let rest = client
            .list_tasks(&TaskQuery {
                limit: Some(10),
                cursor: page.next_cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rest.tasks.len(), 2);
        assert!(rest.next_cursor.is_none());
        let succeeded = client
            .list_tasks(&TaskQuery {
                status: Some(TaskStatus::Succeeded),
                agent: Some("echo".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(succeeded.tasks.len(), 1);

        let processed = client.processed(&PageQuery::default()).await.unwrap();
        assert_eq!(processed.processed.len(), 1);
        assert_eq!(processed.processed[0].task_id, ran.task.id);
        assert_eq!(processed.processed[0].outcome, "succeeded");

        // Cancel a queued task at once; a second cancel is a conflict.
        let cancelled = client.cancel_task(a.task.id).await.unwrap();
        assert!(!cancelled.pending);
        assert_eq!(cancelled.task.status, TaskStatus::Cancelled);
        let conflict = client.cancel_task(a.task.id).await.unwrap_err();
        assert_eq!(conflict.status(), Some(409));
        assert_eq!(conflict.code(), Some("conflict"));

        let paused = client.stop().await.unwrap();
        assert!(paused.paused && paused.broadcast);
        assert!(!client.start().await.unwrap().paused);

        let agent = client
            .register_agent(
                "coder",
                "http://127.0.0.1:9/run",
                Some(json!({"team": "a"})),
            )
            .await
            .unwrap();
        assert_eq!(agent.endpoint, "http://127.0.0.1:9/run");
        let agents = client.list_agents().await.unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].meta, json!({"team": "a"}));
        let gone = client.unregister_agent("coder").await.unwrap();
        assert!(gone.unregistered);
        assert!(client.list_agents().await.unwrap().is_empty());

        let workers = client.workers().await.unwrap();
        assert!(workers.iter().any(|w| w.id == worker.id), "{workers:?}");

        let health = client.health().await.unwrap();
        assert_eq!(health.status, "ok");
        assert!(health.db_ok && health.broker_ok);
        assert!(client.health_text().await.unwrap().contains("\"db_ok\""));
        client.ready().await.unwrap();
        worker.stop().await;
    }
}

both_engines! {
    async fn client_errors_carry_status_code_and_field(env: TestEnv) {
        let api = env.spawn_api().await;
        let client = client(&api);

        let bad_key = Client::new(&api.base, "wrong-key").unwrap();
        let err = bad_key.list_tasks(&TaskQuery::default()).await.unwrap_err();
        assert!(err.is_unauthorized(), "{err:?}");
        assert_eq!(err.code(), Some("unauthorized"));
        // Without a key only the public endpoints answer.
        let keyless = Client::builder().base_url(&api.base).build().unwrap();
        assert!(keyless.workers().await.unwrap_err().is_unauthorized());
        assert_eq!(keyless.health().await.unwrap().status, "ok");

        let missing = Uuid::now_v7();
        let err = client.get_task(missing).await.unwrap_err();
        assert!(err.is_not_found());
        assert_eq!(err.code(), Some("not_found"));
        assert!(err.to_string().contains(&missing.to_string()), "{err}");
        assert!(
            client
                .cancel_task(missing)
                .await
                .unwrap_err()
                .is_not_found()
        );
        assert!(
            client
                .unregister_agent("nobody")
                .await
                .unwrap_err()
                .is_not_found()
        );

        let err = client
            .enqueue(EnqueueRequest {
                max_attempts: Some(0),
                ..echo("x")
            })
            .await
            .unwrap_err();
        match &err {
            Error::Api {
                status,
                code,
                field,
                message,
            } => {
                assert_eq!(*status, 422);
                assert_eq!(code, "invalid_field");
                assert_eq!(field.as_deref(), Some("max_attempts"));
                assert!(message.contains("max_attempts"), "{message}");
            }
            other => panic!("expected a 422, got {other:?}"),
        }
        let err = client
            .register_agent("Bad Name", "http://127.0.0.1:9/", None)
            .await
            .unwrap_err();
        assert_eq!(err.field(), Some("name"));
    }
}

fn quick_retries(base: &str, max_retries: u32) -> Client {
    Client::builder()
        .base_url(base)
        .api_key(TEST_KEY)
        .retry(RetryPolicy {
            max_retries,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
        })
        .build()
        .unwrap()
}

/// PostgreSQL only: the embedded engine's database is a file in the process, it cannot be down
/// while the API runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_retries_503_from_an_api_whose_database_is_down() {
    let env = TestEnv::new().await;
    let api = env.spawn_api_without_database().await;

    let err = quick_retries(&api.base, 2)
        .list_tasks(&TaskQuery::default())
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(err.code(), Some("unavailable"));
    assert_eq!(
        metric(
            &api,
            r#"bgagent_http_requests_total{method="GET",route="/tasks",status="503"}"#
        )
        .await,
        3,
        "one try and two retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_retries_enqueue_with_one_key_but_not_cancel() {
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;
    use std::sync::{Arc, Mutex};
    // A server that answers every request 503 and records what it was sent (a real API cannot
    // be made to fail the same request twice on cue).
    type Seen = Arc<Mutex<Vec<(String, Value)>>>;
    async fn unavailable(
        State(seen): State<Seen>,
        uri: axum::http::Uri,
        body: String,
    ) -> (StatusCode, axum::Json<Value>) {
        let body = serde_json::from_str(&body).unwrap_or(Value::Null);
        seen.lock().unwrap().push((uri.path().to_owned(), body));
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({"error": {"code": "unavailable", "message": "database unavailable, retry later"}}),
            ),
        )
    }
    let seen = Seen::default();
    let app = axum::Router::new()
        .route("/enqueue", post(unavailable))
        .route("/tasks/{id}/cancel", post(unavailable))
        .route("/agents/unregister", post(unavailable))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = quick_retries(&base, 3);

    let err = client.enqueue(echo("x")).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let tries: Vec<Value> = seen
        .lock()
        .unwrap()
        .drain(..)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(tries.len(), 4, "one try and three retries");
    let key = tries[0]["idempotency_key"]
        .as_str()
        .expect("a generated key");
    assert!(
        tries.iter().all(|t| t["idempotency_key"] == key),
        "every retry carries the same key: {tries:?}"
    );
    // A second enqueue is another task: another key.
    client.enqueue(echo("x")).await.unwrap_err();
    let next = seen.lock().unwrap().drain(..).next().unwrap().1;
    assert_ne!(next["idempotency_key"], key);

    // Cancel and unregister are not retried on 503: the server may have acted.
    let err = client.cancel_task(Uuid::now_v7()).await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    client.unregister_agent("a").await.unwrap_err();
    let paths: Vec<String> = seen.lock().unwrap().drain(..).map(|(p, _)| p).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_retries_connection_failures_with_backoff() {
    let client = Client::builder()
        .base_url(CLOSED)
        .api_key(TEST_KEY)
        .retry(RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        })
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client.get_task(Uuid::now_v7()).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_unavailable());
    // Waits of at least 50 + 100 + 200 ms (the jitter keeps 50-100 % of each step).
    assert!(
        took >= Duration::from_millis(350),
        "no backoff seen: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    let no_retry = Client::builder()
        .base_url(CLOSED)
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let started = Instant::now();
    assert!(no_retry.health().await.unwrap_err().is_unavailable());
    assert!(started.elapsed() < Duration::from_millis(300));
}

both_engines! {
    async fn client_wait_returns_finished_tasks_and_times_out(env: TestEnv) {
        let api = env.spawn_api().await;
        let worker = env.spawn_worker(env.worker_options()).await;
        let client = client(&api);

        let task = client.enqueue(echo("hello")).await.unwrap().task;
        let done = client.wait(task.id, Duration::from_secs(8)).await.unwrap();
        assert_eq!(done.status, TaskStatus::Succeeded);
        assert_eq!(done.attempts, 1);

        let failing = EnqueueRequest {
            agent: "fail".into(),
            command: "boom".into(),
            meta: Some(json!({"retryable": false})),
            ..Default::default()
        };
        let task = client.enqueue(failing).await.unwrap().task;
        let done = client.wait(task.id, Duration::from_secs(8)).await.unwrap();
        assert_eq!(
            done.status,
            TaskStatus::Failed,
            "wait returns failed tasks too"
        );

        let queued = client.enqueue(delayed("later")).await.unwrap().task;
        let started = Instant::now();
        let err = client
            .wait(queued.id, Duration::from_millis(400))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        match err {
            Error::WaitTimeout {
                task_id,
                last_status,
                ..
            } => {
                assert_eq!(task_id, queued.id);
                assert_eq!(last_status, Some(TaskStatus::Queued));
            }
            other => panic!("expected WaitTimeout, got {other:?}"),
        }
        assert!(
            client
                .wait(Uuid::now_v7(), Duration::from_secs(1))
                .await
                .unwrap_err()
                .is_not_found()
        );
        worker.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The command line

both_engines! {
    async fn cli_enqueue_and_tasks_commands(env: TestEnv) {
        let api = env.spawn_api().await;
        let worker = env.spawn_worker(env.worker_options()).await;

        let task = json_of(
            &bgagent(
                &api,
                &[
                    "enqueue",
                    "echo",
                    "first",
                    "--meta",
                    r#"{"n":1}"#,
                    "--max-attempts",
                    "2",
                    "--timeout-secs",
                    "30",
                    "--delay-secs",
                    "60",
                    "--idempotency-key",
                    "k1",
                    "--json",
                ],
            )
            .await,
        );
        let delayed_id = task["id"].as_str().unwrap().to_owned();
        assert_eq!(task["meta"], json!({"n": 1}));
        assert_eq!(task["max_attempts"], 2);
        assert_eq!(task["timeout_secs"], 30);
        assert_eq!(task["idempotency_key"], "k1");
        assert_eq!(task["status"], "queued");
        // Options go before the subcommand too; the same key gives the same task.
        let again = json_of(
            &bgagent(
                &api,
                &[
                    "--json",
                    "enqueue",
                    "echo",
                    "first",
                    "--idempotency-key",
                    "k1",
                ],
            )
            .await,
        );
        assert_eq!(again["id"], delayed_id.as_str());

        // --wait prints the finished task: a table for people, JSON for scripts.
        let out = bgagent(&api, &["enqueue", "echo", "waited", "--wait"]).await;
        assert_exit(&out, 0);
        assert!(stdout(&out).contains("succeeded"), "{}", stdout(&out));
        let done = json_of(
            &bgagent(
                &api,
                &["enqueue", "echo", "waited json", "--wait", "--json"],
            )
            .await,
        );
        assert_eq!(done["status"], "succeeded");
        assert_eq!(done["result"]["command"], "waited json");
        let done_id = done["id"].as_str().unwrap().to_owned();

        // A task that fails ends --wait with exit 8.
        let out = bgagent(
            &api,
            &[
                "enqueue",
                "fail",
                "boom",
                "--meta",
                r#"{"retryable":false}"#,
                "--wait",
            ],
        )
        .await;
        assert_exit(&out, 8);
        assert!(stdout(&out).contains("failed"), "{}", stdout(&out));
        assert!(stderr(&out).contains("failed"), "{}", stderr(&out));
        let failed_id =
            json_of(&bgagent(&api, &["tasks", "list", "--status", "failed", "--json"]).await)["tasks"]
                [0]["id"]
                .as_str()
                .unwrap()
                .to_owned();

        // --wait-timeout ends with exit 9 while the task is still queued.
        let out = bgagent(
            &api,
            &[
                "enqueue",
                "echo",
                "later",
                "--delay-secs",
                "60",
                "--wait",
                "--wait-timeout",
                "1",
            ],
        )
        .await;
        assert_exit(&out, 9);

        // tasks list: JSON pages and filters, and a table.
        let page = json_of(&bgagent(&api, &["tasks", "list", "--json"]).await);
        assert_eq!(page["tasks"].as_array().unwrap().len(), 5);
        let first = json_of(&bgagent(&api, &["tasks", "list", "--limit", "2", "--json"]).await);
        assert_eq!(first["tasks"].as_array().unwrap().len(), 2);
        let cursor = first["next_cursor"].as_str().unwrap();
        let next = json_of(
            &bgagent(
                &api,
                &[
                    "tasks", "list", "--limit", "2", "--cursor", cursor, "--json",
                ],
            )
            .await,
        );
        assert_ne!(next["tasks"][0]["id"], first["tasks"][0]["id"]);
        let echo_ok = json_of(
            &bgagent(
                &api,
                &[
                    "tasks",
                    "list",
                    "--status",
                    "succeeded",
                    "--agent",
                    "echo",
                    "--json",
                ],
            )
            .await,
        );
        assert_eq!(echo_ok["tasks"].as_array().unwrap().len(), 2);
        let table = bgagent(&api, &["tasks", "list"]).await;
        assert_exit(&table, 0);
        let text = stdout(&table);
        assert!(text.starts_with("ID "), "{text}");
        assert!(
            text.contains(&done_id) && text.contains("succeeded"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 6, "header and five tasks: {text}");

        // tasks get
        let got = json_of(&bgagent(&api, &["tasks", "get", &done_id, "--json"]).await);
        assert_eq!(got["id"], done_id.as_str());
        let out = bgagent(&api, &["tasks", "get", &done_id]).await;
        assert_exit(&out, 0);
        assert!(stdout(&out).contains("waited json"), "{}", stdout(&out));

        // tasks cancel: queued → cancelled; a finished task is a conflict (exit 6).
        let cancelled = json_of(&bgagent(&api, &["tasks", "cancel", &delayed_id, "--json"]).await);
        assert_eq!(cancelled["status"], "cancelled");
        assert_exit(&bgagent(&api, &["tasks", "cancel", &delayed_id]).await, 6);

        // tasks watch <id> ends with the task: 0 succeeded, 8 failed or cancelled.
        let out = bgagent(&api, &["tasks", "watch", &done_id, "--interval", "0.2"]).await;
        assert_exit(&out, 0);
        assert!(stdout(&out).contains("succeeded"));
        assert_exit(&bgagent(&api, &["tasks", "watch", &failed_id]).await, 8);
        let out = bgagent(&api, &["tasks", "watch", &delayed_id, "--json"]).await;
        assert_exit(&out, 8);
        let line: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
        assert_eq!(line["status"], "cancelled");

        // tasks retry <id>: the failed task is queued again and fails again (attempt 2); a
        // queued or succeeded task is a conflict (exit 6); --all retries by filter.
        let retried = json_of(&bgagent(&api, &["tasks", "retry", &failed_id, "--json"]).await);
        assert_eq!(retried["id"], failed_id.as_str());
        assert_eq!(retried["max_attempts"], retried["attempts"].as_i64().unwrap() + 5);
        let failed_uuid: Uuid = failed_id.parse().unwrap();
        env.wait_task(failed_uuid, Duration::from_secs(20), |t| {
            t.status == TaskStatus::Failed && t.attempts == 2
        })
        .await;
        assert_exit(&bgagent(&api, &["tasks", "retry", &done_id]).await, 6);
        let all = json_of(
            &bgagent(&api, &["tasks", "retry", "--all", "--agent", "fail", "--json"]).await,
        );
        assert_eq!(all, json!({"retried": 1, "more": false}));
        let out = bgagent(&api, &["tasks", "retry", "--all", "--status", "cancelled"]).await;
        assert_exit(&out, 0);
        assert!(stdout(&out).contains("retried 1 tasks"), "{}", stdout(&out));
        let delayed_uuid: Uuid = delayed_id.parse().unwrap();
        env.wait_task(delayed_uuid, Duration::from_secs(20), |t| {
            t.status == TaskStatus::Succeeded
        })
        .await;
        worker.stop().await;
    }
}

both_engines! {
    async fn cli_watch_follows_a_running_task_and_stops_on_ctrl_c(env: TestEnv) {
        let api = env.spawn_api().await;
        let worker = env.spawn_worker(env.worker_options()).await;
        let client = client(&api);

        // One task, followed from queued to succeeded.
        let task = client
            .enqueue(EnqueueRequest {
                agent: "sleep".into(),
                command: "nap".into(),
                meta: Some(json!({"ms": 800})),
                ..Default::default()
            })
            .await
            .unwrap()
            .task;
        let out = bgagent(
            &api,
            &["tasks", "watch", &task.id.to_string(), "--interval", "0.1"],
        )
        .await;
        assert_exit(&out, 0);
        let text = stdout(&out);
        assert!(text.contains("running"), "saw it run: {text}");
        assert!(text.contains("succeeded"), "{text}");

        // The list view refreshes until interrupted, then exits 0.
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bgagent"))
            .args(["tasks", "watch", "--interval", "0.2", "--json"])
            .env("BGAGENT_URL", &api.base)
            .env("BACKGROUND_AGENT_API_KEY", TEST_KEY)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let frame = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let frame: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(frame["tasks"][0]["id"], task.id.to_string());
        // The watch keeps going until Ctrl-C.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(child.try_wait().unwrap().is_none(), "watch ended by itself");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert_eq!(status.code(), Some(0));
        worker.stop().await;
    }
}

both_engines! {
    async fn cli_fleet_agents_workers_processed_health_and_completions(env: TestEnv) {
        let api = env.spawn_api().await;
        let worker = env.spawn_worker(env.worker_options()).await;
        let task = client(&api).enqueue(echo("once")).await.unwrap().task;
        client(&api)
            .wait(task.id, Duration::from_secs(8))
            .await
            .unwrap();

        let processed = json_of(&bgagent(&api, &["processed", "--json"]).await);
        assert_eq!(processed["processed"][0]["task_id"], task.id.to_string());
        assert_eq!(processed["processed"][0]["outcome"], "succeeded");
        let limited = json_of(&bgagent(&api, &["processed", "--limit", "1", "--json"]).await);
        assert!(limited.get("next_cursor").is_none());
        let out = bgagent(&api, &["processed"]).await;
        assert_exit(&out, 0);
        assert!(stdout(&out).starts_with("TASK "), "{}", stdout(&out));
        assert!(stdout(&out).contains(&task.id.to_string()));

        let stopped = json_of(&bgagent(&api, &["stop", "--json"]).await);
        assert_eq!(stopped, json!({"paused": true, "broadcast": true}));
        let out = bgagent(&api, &["start"]).await;
        assert_exit(&out, 0);
        assert!(stdout(&out).contains("running"), "{}", stdout(&out));

        let agent = json_of(
            &bgagent(
                &api,
                &[
                    "agents",
                    "register",
                    "coder",
                    "http://127.0.0.1:9/run",
                    "--meta",
                    r#"{"team":"a"}"#,
                    "--json",
                ],
            )
            .await,
        );
        assert_eq!(agent["name"], "coder");
        let agents = json_of(&bgagent(&api, &["agents", "list", "--json"]).await);
        assert_eq!(agents["agents"][0]["meta"], json!({"team": "a"}));
        let out = bgagent(&api, &["agents", "list"]).await;
        assert!(
            stdout(&out).contains("http://127.0.0.1:9/run"),
            "{}",
            stdout(&out)
        );
        let gone = json_of(&bgagent(&api, &["agents", "unregister", "coder", "--json"]).await);
        assert_eq!(gone, json!({"name": "coder", "unregistered": true}));
        assert_exit(&bgagent(&api, &["agents", "unregister", "coder"]).await, 3);
        // A bad name is invalid input (422).
        assert_exit(
            &bgagent(
                &api,
                &["agents", "register", "Bad Name", "http://127.0.0.1:9/"],
            )
            .await,
            5,
        );

        let workers = json_of(&bgagent(&api, &["workers", "--json"]).await);
        assert!(
            workers["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["id"] == worker.id.as_str()),
            "{workers}"
        );
        let out = bgagent(&api, &["workers"]).await;
        assert!(stdout(&out).contains(&worker.id), "{}", stdout(&out));

        let health = json_of(&bgagent(&api, &["health", "--json"]).await);
        assert_eq!(health["status"], "ok");
        let out = bgagent(&api, &["health"]).await;
        assert_exit(&out, 0);
        // The status, the store and the queue, each ok, then the fleet.
        let text = stdout(&out);
        assert!(
            text.lines().next().is_some_and(|l| l.starts_with("status") && l.ends_with(" ok")),
            "{text}"
        );
        assert_eq!(
            text.lines().filter(|l| l.ends_with(" ok")).count(),
            3,
            "{text}"
        );
        assert!(text.contains("store (database)"), "{text}");
        assert!(text.contains("live workers"), "{text}");
        // health needs no key: a wrong one does not matter.
        let out = bgagent_at(&api.base, "wrong", &["health", "--quiet"]).await;
        assert_exit(&out, 0);
        assert!(out.stdout.is_empty() && out.stderr.is_empty());

        let out = bgagent(&api, &["completions", "bash"]).await;
        assert_exit(&out, 0);
        assert!(stdout(&out).contains("bgagent"));
        worker.stop().await;
    }
}

both_engines! {
    async fn cli_exit_codes_tell_failures_apart(env: TestEnv) {
        let api = env.spawn_api().await;

        let out = bgagent_at(&api.base, "wrong-key", &["tasks", "list"]).await;
        assert_exit(&out, 4);
        assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
        assert_exit(&bgagent_at(&api.base, "", &["workers"]).await, 4);

        let out = bgagent(&api, &["tasks", "get", &Uuid::now_v7().to_string()]).await;
        assert_exit(&out, 3);
        assert!(stderr(&out).contains("not_found"), "{}", stderr(&out));

        let out = bgagent(&api, &["enqueue", "echo", "x", "--max-attempts", "0"]).await;
        assert_exit(&out, 5);
        assert!(stderr(&out).contains("max_attempts"), "{}", stderr(&out));

        // Usage errors are clap's 2, before any request.
        assert_exit(&bgagent(&api, &["tasks", "get", "not-a-uuid"]).await, 2);
        assert_exit(
            &bgagent(&api, &["enqueue", "echo", "x", "--meta", "[1]"]).await,
            2,
        );
        assert_exit(
            &bgagent(&api, &["enqueue", "echo", "x", "--wait-timeout", "5"]).await,
            2,
        );

        // Nothing listening: 7, after the client's retries.
        let out = bgagent_at(CLOSED, TEST_KEY, &["tasks", "list"]).await;
        assert_exit(&out, 7);
        assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
        let out = bgagent_at(CLOSED, TEST_KEY, &["--url", CLOSED, "health", "--quiet"]).await;
        assert_exit(&out, 7);
        assert!(out.stdout.is_empty() && out.stderr.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_health_accepts_any_200_such_as_a_workers_plain_ok() {
    use axum::http::StatusCode;
    use axum::routing::get;
    // A stand-in for the worker's metrics port, whose /health answers plain `ok`, and a broken
    // server answering 500.
    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/broken/health",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let out = bgagent_at(&base, "", &["health"]).await;
    assert_exit(&out, 0);
    assert_eq!(stdout(&out).trim(), "ok");
    let out = bgagent_at(&base, "", &["health", "--quiet"]).await;
    assert_exit(&out, 0);
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    assert_eq!(
        json_of(&bgagent_at(&base, "", &["health", "--json"]).await),
        json!("ok")
    );

    let broken = format!("{base}/broken");
    let out = bgagent_at(&broken, "", &["health"]).await;
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("boom"), "{}", stderr(&out));
    assert_exit(&bgagent_at(&broken, "", &["health", "-q"]).await, 1);
}
