//! `GET /tasks/{id}?wait_secs=N` on both engines: the answer comes once a worker finishes the
//! task, or with its current state after N seconds; 404 and 422 at once; a client that goes away
//! leaves no waiter behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use crate::common::{TEST_KEY, assert_error};
use crate::neutral::metric;
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

const WAITERS: &str = "bgagent_api_task_waiters";

both_engines! {
    async fn wait_answers_when_final(env: TestEnv) {
        let api = env.spawn_api().await;
        let _worker = env.spawn_worker(env.worker_options()).await;
        let task = api
            .enqueue(&json!({"agent": "sleep", "command": "nap", "meta": {"ms": 300}}))
            .await;
        let id = task["id"].as_str().unwrap();
        let started = Instant::now();
        let (status, body) = api.get(&format!("/tasks/{id}?wait_secs=10")).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "succeeded", "{body}");
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
    }
}

both_engines! {
    async fn wait_times_out_with_current_state(env: TestEnv) {
        let api = env.spawn_api().await;
        let task = api.enqueue(&json!({"agent": "echo", "command": "x"})).await;
        let id = task["id"].as_str().unwrap();
        let started = Instant::now();
        let (status, body) = api.get(&format!("/tasks/{id}?wait_secs=1")).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "queued", "{body}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "answered after {took:?}"
        );
        // Without the parameter, or with 0, the answer is immediate.
        let started = Instant::now();
        let (status, body) = api.get(&format!("/tasks/{id}?wait_secs=0")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(started.elapsed() < Duration::from_millis(900));
        assert_eq!(metric(&api, WAITERS).await, 0);
    }
}

both_engines! {
    async fn wait_rejects_unknown_and_invalid(env: TestEnv) {
        let api = env.spawn_api().await;
        let started = Instant::now();
        let got = api
            .get("/tasks/0190c4a0-0000-7000-8000-000000000000?wait_secs=30")
            .await;
        assert_error(&got, StatusCode::NOT_FOUND, "not_found");
        assert!(started.elapsed() < Duration::from_secs(5));
        let task = api.enqueue(&json!({"agent": "echo", "command": "x"})).await;
        let id = task["id"].as_str().unwrap();
        for bad in ["61", "junk", "-1", "1.5", ""] {
            let got = api.get(&format!("/tasks/{id}?wait_secs={bad}")).await;
            assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
            assert_eq!(got.1["error"]["field"], "wait_secs", "{bad}: {}", got.1);
        }
        // The API document states the parameter and its range.
        let (_, doc) = api.get("/openapi.json").await;
        let params = doc["paths"]["/tasks/{id}"]["get"]["parameters"].as_array().unwrap();
        let wait = params.iter().find(|p| p["name"] == "wait_secs").expect("wait_secs documented");
        assert_eq!(wait["in"], "query");
        assert_eq!(wait["schema"]["maximum"], 60, "{wait}");
    }
}

both_engines! {
    async fn wait_client_gone_leaves_no_waiter(env: TestEnv) {
        let api = env.spawn_api().await;
        let task = api.enqueue(&json!({"agent": "echo", "command": "x"})).await;
        let id = task["id"].as_str().unwrap().to_owned();
        let url = api.url(&format!("/tasks/{id}?wait_secs=30"));
        let request = tokio::spawn(async move {
            reqwest::Client::new()
                .get(url)
                .header("x-api-key", TEST_KEY)
                .send()
                .await
        });
        wait_gauge(&api, |n| n == 1).await;
        // Dropping the request closes its connection.
        request.abort();
        wait_gauge(&api, |n| n == 0).await;
    }
}

async fn wait_gauge(api: &crate::common::TestApi, want: impl Fn(i64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = metric(api, WAITERS).await;
        if want(n) {
            return;
        }
        assert!(Instant::now() < deadline, "{WAITERS} stuck at {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both_engines! {
    async fn wait_cli_watch_ends_when_the_task_does(env: TestEnv) {
        let api = env.spawn_api().await;
        let _worker = env.spawn_worker(env.worker_options()).await;
        let task = api
            .enqueue(&json!({"agent": "sleep", "command": "nap", "meta": {"ms": 300}}))
            .await;
        let id = task["id"].as_str().unwrap().to_owned();
        let base = api.base.clone();
        let started = Instant::now();
        // With a 10 s interval each refresh is one long wait, answered when the task is final.
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_bgagent"))
                .args(["tasks", "watch", &id, "--interval", "10", "--json"])
                .env("BGAGENT_URL", base)
                .env("BACKGROUND_AGENT_API_KEY", TEST_KEY)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("\"succeeded\""), "{text}");
        assert!(took < Duration::from_secs(6), "watch took {took:?}");
    }
}

both_engines! {
    async fn wait_ends_before_the_request_timeout(env: TestEnv) {
        let mut config = env.api_config();
        config.request_timeout_secs = 2;
        let api = env.spawn_api_with(config).await;
        let task = api.enqueue(&json!({"agent": "echo", "command": "x"})).await;
        let id = task["id"].as_str().unwrap();
        let started = Instant::now();
        // 10 s asked, 1 s served: the current state, not a 408 from the 2 s request timeout.
        let (status, body) = api.get(&format!("/tasks/{id}?wait_secs=10")).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "queued", "{body}");
        assert!(took < Duration::from_secs(2), "answered after {took:?}");
    }
}
