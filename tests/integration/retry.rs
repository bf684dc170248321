//! Retry and redrive: `POST /tasks/{id}/retry` queues a failed or cancelled task again under its
//! id with a fresh attempt budget (attempt numbers keep counting, earlier attempts stay in
//! `/processed`); `POST /tasks/retry` does it for every task that matches a filter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use crate::common::{TestEnv, assert_error};
use bgagent_shared::domain::TaskStatus;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

fn id_of(task: &Value) -> Uuid {
    task["id"].as_str().unwrap().parse().unwrap()
}

/// The attempt numbers recorded for a task, ascending.
async fn attempt_numbers(env: &TestEnv, id: Uuid) -> Vec<i32> {
    let mut numbers: Vec<i32> = env
        .store
        .attempts(None, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.task_id == id)
        .map(|a| a.attempt)
        .collect();
    numbers.sort_unstable();
    numbers
}

both_engines! {
    async fn failed_task_runs_again_with_its_attempts_continuing(env: TestEnv) {
        let api = env.spawn_api().await;
        let _worker = env.spawn_worker(env.worker_options()).await;
        let task = api
            .enqueue(&json!({"agent": "fail", "command": "x", "max_attempts": 3,
                             "meta": {"retryable": false}}))
            .await;
        let id = id_of(&task);
        let failed = env.wait_task(id, WAIT, |t| t.status == TaskStatus::Failed).await;
        assert_eq!(failed.attempts, 1);

        let (status, body) = api.post(&format!("/tasks/{id}/retry"), &json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["id"], task["id"]);
        assert_eq!(body["status"], "queued");
        assert_eq!(body["attempts"], 1);
        // A fresh budget of 3 on top of the attempt used.
        assert_eq!(body["max_attempts"], 4);
        assert!(body["finished_at"].is_null() && body["last_error"].is_null(), "{body}");

        let again = env
            .wait_task(id, WAIT, |t| t.status == TaskStatus::Failed && t.attempts == 2)
            .await;
        assert_eq!(again.max_attempts, 4);
        // The first attempt is still in /processed, next to the second.
        assert_eq!(attempt_numbers(&env, id).await, vec![1, 2]);
        let (status, page) = api.get("/processed").await;
        assert_eq!(status, StatusCode::OK);
        let listed = page["processed"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["task_id"] == task["id"])
            .count();
        assert_eq!(listed, 2);
    }
}

both_engines! {
    async fn a_retryable_failure_gets_a_fresh_budget(env: TestEnv) {
        let api = env.spawn_api().await;
        let _worker = env.spawn_worker(env.worker_options()).await;
        let task = api
            .enqueue(&json!({"agent": "fail", "command": "x", "max_attempts": 2}))
            .await;
        let id = id_of(&task);
        env.wait_task(id, WAIT, |t| t.status == TaskStatus::Failed && t.attempts == 2)
            .await;

        let (status, body) = api.post(&format!("/tasks/{id}/retry"), &json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["max_attempts"], 4);
        // Two more attempts, retried by the worker in between, then failed for good.
        env.wait_task(id, WAIT, |t| t.status == TaskStatus::Failed && t.attempts == 4)
            .await;
        assert_eq!(attempt_numbers(&env, id).await, vec![1, 2, 3, 4]);

        // A second retry counts from the budget the task was enqueued with, not from 4.
        let (status, body) = api.post(&format!("/tasks/{id}/retry"), &json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["max_attempts"], 6);
    }
}

both_engines! {
    async fn a_cancelled_task_is_retried_and_runs(env: TestEnv) {
        let api = env.spawn_api().await;
        let _worker = env.spawn_worker(env.worker_options()).await;
        // Delayed, so it is still queued when cancelled: it never ran (attempts 0).
        let task = api
            .enqueue(&json!({"agent": "echo", "command": "again", "delay_secs": 3600}))
            .await;
        let id = id_of(&task);
        let (status, _) = api.post(&format!("/tasks/{id}/cancel"), &json!({})).await;
        assert_eq!(status, StatusCode::OK);

        let (status, body) = api.post(&format!("/tasks/{id}/retry"), &json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "queued");
        // Due now, and published by the API: it runs well inside the relay's grace.
        let done = env
            .wait_task(id, Duration::from_secs(4), |t| t.status == TaskStatus::Succeeded)
            .await;
        assert_eq!(done.attempts, 1);
        assert_eq!(done.result.unwrap()["command"], "again");
    }
}

both_engines! {
    async fn only_failed_or_cancelled_tasks_are_retried(env: TestEnv) {
        let api = env.spawn_api().await;
        let _worker = env.spawn_worker(env.worker_options()).await;
        let queued = api
            .enqueue(&json!({"agent": "echo", "command": "x", "delay_secs": 3600}))
            .await;
        let running = api
            .enqueue(&json!({"agent": "sleep", "command": "x", "meta": {"ms": 60000}}))
            .await;
        let succeeded = api.enqueue(&json!({"agent": "echo", "command": "x"})).await;
        env.wait_task(id_of(&running), WAIT, |t| t.status == TaskStatus::Running)
            .await;
        env.wait_task(id_of(&succeeded), WAIT, |t| t.status == TaskStatus::Succeeded)
            .await;
        for task in [&queued, &running, &succeeded] {
            let got = api
                .post(&format!("/tasks/{}/retry", id_of(task)), &json!({}))
                .await;
            assert_error(&got, StatusCode::CONFLICT, "conflict");
        }
        // Nothing changed.
        let still = env.store.task(id_of(&running)).await.unwrap().unwrap();
        assert_eq!(still.status, TaskStatus::Running);
        assert_eq!(still.attempts, 1);

        let got = api
            .post(&format!("/tasks/{}/retry", Uuid::now_v7()), &json!({}))
            .await;
        assert_error(&got, StatusCode::NOT_FOUND, "not_found");
        let got = api.post("/tasks/not-a-uuid/retry", &json!({})).await;
        assert_eq!(got.0, StatusCode::BAD_REQUEST);
        let got = api.post("/tasks/retry", &json!({"status": "succeeded"})).await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        let got = api.post("/tasks/retry", &json!({"limit": 0})).await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        let got = api.post("/tasks/retry", &json!({"status": "queued"})).await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        // serde reads a struct from an array too; every body must be an object (found by the
        // fuzzer: `[null, null]` retried every failed task).
        for body in [json!([null, null]), json!(["echo", "x"]), json!("x")] {
            for path in ["/tasks/retry", "/enqueue"] {
                let got = api.post(path, &body).await;
                assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
                assert_eq!(got.1["error"]["field"], "body", "{path} {body}");
            }
        }
    }
}

both_engines! {
    async fn bulk_retry_requeues_only_the_matches(env: TestEnv) {
        let api = env.spawn_api().await;
        let _worker = env.spawn_worker(env.worker_options()).await;
        let mut fails = Vec::new();
        for _ in 0..3 {
            let task = api
                .enqueue(&json!({"agent": "fail", "command": "x", "max_attempts": 1,
                                 "meta": {"retryable": false}}))
                .await;
            fails.push(id_of(&task));
        }
        // Another agent's failure (no executor), which a retry by agent leaves alone.
        let other = id_of(&api.enqueue(&json!({"agent": "nobody", "command": "x"})).await);
        for id in fails.iter().chain([&other]) {
            env.wait_task(*id, WAIT, |t| t.status == TaskStatus::Failed).await;
        }

        let (status, body) = api.post("/tasks/retry", &json!({"agent": "fail"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({"retried": 3, "more": false}));
        for id in &fails {
            env.wait_task(*id, WAIT, |t| t.status == TaskStatus::Failed && t.attempts == 2)
                .await;
            assert_eq!(attempt_numbers(&env, *id).await, vec![1, 2]);
        }
        let untouched = env.store.task(other).await.unwrap().unwrap();
        assert_eq!((untouched.status, untouched.attempts), (TaskStatus::Failed, 1));

        // A limit stops the batch and says more may match; a filter in the future matches none.
        let (_, body) = api
            .post("/tasks/retry", &json!({"agent": "fail", "limit": 2}))
            .await;
        assert_eq!(body, json!({"retried": 2, "more": true}));
        let (_, body) = api
            .post(
                "/tasks/retry",
                &json!({"status": "cancelled", "finished_after": "2000-01-01T00:00:00Z"}),
            )
            .await;
        assert_eq!(body, json!({"retried": 0, "more": false}));
        let (_, body) = api
            .post("/tasks/retry", &json!({"finished_after": "2999-01-01T00:00:00Z"}))
            .await;
        assert_eq!(body, json!({"retried": 0, "more": false}));
        env.wait_all_terminal(WAIT).await;
    }
}

both_engines! {
    async fn two_retries_at_once_requeue_the_task_once(env: TestEnv) {
        let api = env.spawn_api().await;
        let worker = env.spawn_worker(env.worker_options()).await;
        let task = api
            .enqueue(&json!({"agent": "fail", "command": "x", "meta": {"retryable": false}}))
            .await;
        let id = id_of(&task);
        env.wait_task(id, WAIT, |t| t.status == TaskStatus::Failed).await;
        // No worker: the retried task stays queued, so the loser sees it queued.
        worker.stop().await;

        let path = format!("/tasks/{id}/retry");
        let body = json!({});
        let (a, b) = tokio::join!(api.post(&path, &body), api.post(&path, &body));
        let mut statuses = [a.0, b.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT], "{} {}", a.1, b.1);
        let queued = env.store.task(id).await.unwrap().unwrap();
        assert_eq!(
            (queued.status, queued.attempts, queued.max_attempts),
            (TaskStatus::Queued, 1, 6)
        );
    }
}

/// The redrive statement's generic plan (the one a prepared statement keeps) reads the batch
/// through `tasks_finished_idx` and updates it through the primary key, never scanning the
/// table, with or without an agent filter, among 100,000 finished tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redrive_batch_uses_indexes_on_postgres() {
    let env = TestEnv::new().await;
    bgagent_shared::db::prefill::finished_tasks(env.db(), 100_000)
        .await
        .unwrap();
    let mut conn = env.db().acquire().await.unwrap();
    sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "prepare redrive as {}",
        bgagent_shared::db::retry::RETRY_BATCH
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    for args in [
        "'failed', null, null, 1000",
        "'failed', 'agent-3', null, 1000",
        "'cancelled', null, '2026-01-01T00:00:00Z', 1000",
    ] {
        let explain = format!("explain (format json) execute redrive({args})");
        let found = crate::plans::explain_nodes(&mut conn, explain).await;
        assert!(
            !found.iter().any(|(node, _, _)| node.contains("Seq Scan")),
            "{args}: {found:?}"
        );
        assert!(
            found
                .iter()
                .any(|(_, _, index)| index == "tasks_finished_idx"),
            "{args}: {found:?}"
        );
    }
    sqlx::Connection::close(conn.detach()).await.unwrap();

    // And it does what it plans: every failed task of agent-3, in batches.
    let filter = bgagent_shared::store::RetryFilter {
        status: TaskStatus::Failed,
        agent: Some("agent-3".into()),
        finished_after: None,
    };
    let mut retried = 0;
    loop {
        let done = env.store.retry_batch(&filter, 1000).await.unwrap().len();
        retried += done;
        if done < 1000 {
            break;
        }
    }
    assert!(retried > 0);
    assert!(
        env.store
            .retry_batch(&filter, 1000)
            .await
            .unwrap()
            .is_empty()
    );
}
