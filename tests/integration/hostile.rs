//! Hostile input from clients and agents (issue: NUL characters, numbers that do not read back,
//! answers the database cannot store): refused at the door with a 422 naming the field, or
//! stored safely, and never at the cost of another client's request or a worker's progress.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::api_support::count_tasks;
use crate::both_engines;
use crate::common::{TestApi, TestEnv, assert_error};
use crate::fake_agent::{FakeAgent, Reply};
use bgagent_shared::db;
use bgagent_shared::domain::{NewTask, TaskStatus};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn id_of(task: &Value) -> Uuid {
    task["id"].as_str().unwrap().parse().unwrap()
}

async fn register(api: &TestApi, name: &str, agent: &FakeAgent) {
    let (status, body) = api
        .post(
            "/agents/register",
            &json!({"name": name, "endpoint": agent.url}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

both_engines! {
    async fn a_nul_is_refused_with_422_naming_the_field(env: TestEnv) {
        let api = env.spawn_api().await;
        let cases = [
            (json!({"agent": "echo", "command": "a\u{0}b"}), "command"),
            (
                json!({"agent": "echo", "command": "x", "meta": {"k": "a\u{0}b"}}),
                "meta",
            ),
            (
                json!({"agent": "echo", "command": "x", "meta": {"a\u{0}b": 1}}),
                "meta",
            ),
            (
                json!({"agent": "echo", "command": "x", "meta": {"deep": [[{"k": "\u{0}"}]]}}),
                "meta",
            ),
            (
                json!({"agent": "echo", "command": "x", "idempotency_key": "a\u{0}b"}),
                "idempotency_key",
            ),
        ];
        for (body, field) in cases {
            let got = api.post("/enqueue", &body).await;
            assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
            assert_eq!(got.1["error"]["field"], field, "{body}");
        }
        let got = api
            .post(
                "/agents/register",
                &json!({"name": "a", "endpoint": "http://127.0.0.1:9/x", "meta": {"k": "\u{0}"}}),
            )
            .await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(got.1["error"]["field"], "meta");
        assert_eq!(count_tasks(&env).await, 0);
    }
}

both_engines! {
    /// Concurrent enqueues share one insert: hostile requests among them must not fail the others.
    async fn hostile_requests_never_fail_the_requests_committed_with_them(env: TestEnv) {
        let api = env.spawn_api().await;
        let requests = (0..150).map(|i| {
            let body = if i % 5 == 0 {
                json!({"agent": "echo", "command": "a\u{0}b", "meta": {"i": i}})
            } else {
                json!({"agent": "echo", "command": "fine", "meta": {"i": i}})
            };
            let api = &api;
            async move { (i, api.post("/enqueue", &body).await) }
        });
        for (i, (status, body)) in join_all(requests).await {
            let expected = if i % 5 == 0 {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::ACCEPTED
            };
            assert_eq!(status, expected, "request {i}: {body}");
        }
        assert_eq!(count_tasks(&env).await, 120);
    }
}

/// Should a shared insert fail anyway (input the door did not foresee), only the task that
/// caused it fails: the batch is split and the rest committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shared_insert_fails_only_the_task_that_caused_it() {
    let env = TestEnv::new().await;
    let task = |command: &str| NewTask {
        id: Uuid::now_v7(),
        agent: "echo".into(),
        command: command.into(),
        meta: json!({}),
        idempotency_key: None,
        max_attempts: 1,
        timeout_secs: 10,
        delay_secs: 0,
    };
    // Built directly, past the door's checks: PostgreSQL refuses the NUL.
    let tasks: Vec<NewTask> = (0..9)
        .map(|i| task(if i == 6 { "a\u{0}b" } else { "ok" }))
        .collect();
    let results = db::tasks::insert_each(env.db(), &tasks).await;
    assert_eq!(results.len(), 9);
    for (i, (result, task)) in results.iter().zip(&tasks).enumerate() {
        match result {
            Ok(inserted) if i != 6 => {
                assert!(inserted.created);
                assert_eq!(inserted.task.id, task.id);
            }
            Err(_) if i == 6 => {}
            other => panic!("task {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(count_tasks(&env).await, 8);
}

both_engines! {
    async fn numbers_read_back_equal(env: TestEnv) {
        let api = env.spawn_api().await;
        let meta = json!({
            "max": f64::MAX, "min": f64::MIN, "tiny": 5e-324, "small": f64::MIN_POSITIVE,
            "u": u64::MAX, "i": i64::MIN, "frac": 0.1, "third": 1.0 / 3.0, "neg_zero": -0.0,
        });
        let body = format!(
            r#"{{"agent":"echo","command":"n","meta":{{"n":1.7976931348623157e308,"all":{meta}}}}}"#
        );
        let (status, task) = api.post_raw("/enqueue", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{task}");
        let id = id_of(&task);
        let (status, read) = api.get(&format!("/tasks/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{read}");
        assert_eq!(read["meta"]["n"].as_f64(), Some(f64::MAX));
        assert_eq!(read["meta"]["all"], meta, "every number reads back equal");
        let (status, page) = api.get("/tasks?full=true").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["tasks"][0]["meta"], read["meta"], "listing reads them equal too");

        // A number no JSON reader here can hold is refused, not stored.
        let (status, body) = api
            .post_raw(
                "/enqueue",
                r#"{"agent":"echo","command":"x","meta":{"n":1e400}}"#,
            )
            .await;
        assert!(status.is_client_error(), "{status} {body}");
        assert_eq!(count_tasks(&env).await, 1);
    }
}

/// A row written outside the API (with SQL, into PostgreSQL) holding a number no JSON reader here
/// can hold must not break any read of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_breaks_nothing() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let task = api.enqueue(&json!({"agent": "echo", "command": "n"})).await;
    let id = id_of(&task);
    let legacy = Uuid::now_v7();
    sqlx::query(
        r#"insert into tasks (id, agent, command, meta) values ($1, 'echo', 'x', '{"n": 1e400}')"#,
    )
    .bind(legacy)
    .execute(env.db())
    .await
    .unwrap();
    let (status, page) = api.get("/tasks").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [legacy.to_string(), id.to_string()]);
    let (status, read) = api.get(&format!("/tasks/{legacy}")).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert!(
        read["meta"].as_str().unwrap().contains("1e400")
            || read["meta"].as_str().unwrap().contains("10000")
    );
    let (status, cancelled) = api
        .post(&format!("/tasks/{legacy}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
}

both_engines! {
    /// Agents answering with NUL characters (JSON escapes, raw text, error bodies): the answer is
    /// stored with U+FFFD in place of each NUL, and the worker keeps recording other tasks.
    async fn agent_answers_with_nul_are_stored_and_the_worker_keeps_going(env: TestEnv) {
        let api = env.spawn_api().await;
        let _worker = env.spawn_worker(env.worker_options()).await;
        let mut rejected = Reply::status(400);
        rejected.body = "no\u{0}pe".into();
        let cases = [
            (
                "json-nul",
                Reply::ok(r#"{"a":"x\u0000y","k\u0000":1}"#),
                TaskStatus::Succeeded,
            ),
            ("raw-nul", Reply::ok("raw\u{0}text"), TaskStatus::Succeeded),
            ("error-nul", rejected, TaskStatus::Failed),
        ];
        let mut agents = Vec::new();
        let mut tasks = Vec::new();
        for (name, reply, _) in &cases {
            let agent = FakeAgent::start(vec![reply.clone()]).await;
            register(&api, name, &agent).await;
            agents.push(agent);
            let task = api
                .enqueue(&json!({"agent": name, "command": "go", "max_attempts": 1}))
                .await;
            tasks.push(id_of(&task));
        }
        let mut echoes = Vec::new();
        for i in 0..20 {
            let task = api
                .enqueue(&json!({"agent": "echo", "command": format!("after {i}")}))
                .await;
            echoes.push(id_of(&task));
        }
        let done: Vec<_> = join_all(
            tasks
                .iter()
                .map(|id| env.wait_task(*id, WAIT, |t| t.status.is_terminal())),
        )
        .await;
        for ((name, _, status), task) in cases.iter().zip(&done) {
            assert_eq!(task.status, *status, "{name}: {task:?}");
        }
        assert_eq!(
            done[0].result,
            Some(json!({"a": "x\u{FFFD}y", "k\u{FFFD}": 1}))
        );
        assert_eq!(done[1].result, Some(json!("raw\u{FFFD}text")));
        assert!(
            done[2]
                .last_error
                .as_deref()
                .unwrap()
                .contains("no\u{FFFD}pe"),
            "{:?}",
            done[2].last_error
        );
        for id in echoes {
            let task = env.wait_task(id, WAIT, |t| t.status.is_terminal()).await;
            assert_eq!(task.status, TaskStatus::Succeeded);
        }
    }
}

/// An outcome the database refuses (here a constraint the test adds, standing in for any input
/// the worker did not foresee) fails only its own task, with a clear error; one that cannot be
/// stored at all is given up, counted, and the worker carries on with every other task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_the_database_refuses_fails_only_its_task() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let mut options = env.worker_options();
    options.metrics_bind = Some("127.0.0.1:0".parse().unwrap());
    let worker = env.spawn_worker(options).await;
    sqlx::query(
        "alter table tasks add constraint refuse_poison
             check (result is null or not (result ? 'poison')) not valid",
    )
    .execute(env.db())
    .await
    .unwrap();
    sqlx::query(
        "alter table tasks add constraint refuse_doomed
             check (agent <> 'doomed' or status in ('queued', 'running')) not valid",
    )
    .execute(env.db())
    .await
    .unwrap();
    let poisoner = FakeAgent::start(vec![Reply::ok(r#"{"poison":true}"#)]).await;
    let doomed = FakeAgent::start(vec![]).await;
    for (name, agent) in [("poisoner", &poisoner), ("doomed", &doomed)] {
        register(&api, name, agent).await;
    }
    let mut requests = vec![
        json!({"agent": "poisoner", "command": "x", "max_attempts": 1}),
        json!({"agent": "doomed", "command": "x", "max_attempts": 1}),
    ];
    requests.extend((0..40).map(|i| json!({"agent": "echo", "command": format!("{i}")})));
    let tasks: Vec<Value> = join_all(requests.iter().map(|b| api.enqueue(b))).await;

    let poisoned = env
        .wait_task(id_of(&tasks[0]), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(poisoned.status, TaskStatus::Failed);
    assert_eq!(poisoned.result, None);
    assert!(
        poisoned
            .last_error
            .as_deref()
            .unwrap()
            .contains("could not be stored"),
        "{:?}",
        poisoned.last_error
    );
    for task in &tasks[2..] {
        let done = env
            .wait_task(id_of(task), WAIT, |t| t.status.is_terminal())
            .await;
        assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    }
    // The doomed outcome cannot be stored in any form: the worker gives up on it and says so.
    let metrics_url = format!("http://{}/metrics", worker.metrics_addr.unwrap());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = api.text(&metrics_url).await;
        if text.contains("bgagent_worker_gave_up_total{what=\"record\"} 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no give-up counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(doomed.receipts().len(), 1);
    // And the worker still records new work.
    let after = api
        .enqueue(&json!({"agent": "echo", "command": "after"}))
        .await;
    let done = env
        .wait_task(id_of(&after), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Succeeded);
}
