//! `GET /tasks` lists summaries (no `meta`, no `result`) unless asked for `full=true`;
//! `GET /tasks/{id}` has them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use crate::common::assert_error;
use bgagent_shared::domain::TaskStatus;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

fn id_of(task: &Value) -> Uuid {
    task["id"].as_str().unwrap().parse().unwrap()
}

both_engines! {
    async fn lists_answer_summaries_unless_asked_for_the_full_tasks(env: TestEnv) {
        let api = env.spawn_api().await;
        let worker = env.spawn_worker(env.worker_options()).await;
        let task = api
            .enqueue(&json!({"agent": "echo", "command": "hi", "meta": {"n": 1}}))
            .await;
        let id = id_of(&task);
        env.wait_task(id, Duration::from_secs(30), |t| {
            t.status == TaskStatus::Succeeded
        })
        .await;

        for query in ["", "?status=succeeded", "?agent=echo", "?agent=echo&status=succeeded"] {
            let (status, page) = api.get(&format!("/tasks{query}")).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let listed = &page["tasks"][0];
            assert_eq!(listed["id"], id.to_string(), "{query}: {page}");
            assert_eq!(listed["status"], "succeeded");
            assert_eq!(listed["command"], "hi");
            assert!(listed.get("meta").is_none(), "{query}: {listed}");
            assert!(listed.get("result").is_none(), "{query}: {listed}");

            let sep = if query.is_empty() { "?" } else { "&" };
            let (status, page) = api.get(&format!("/tasks{query}{sep}full=true")).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let listed = &page["tasks"][0];
            assert_eq!(listed["meta"], json!({"n": 1}), "{query}: {listed}");
            assert!(listed["result"].is_object(), "{query}: {listed}");
        }
        let (_, page) = api.get("/tasks?full=false").await;
        assert!(page["tasks"][0].get("meta").is_none(), "{page}");
        let (_, one) = api.get(&format!("/tasks/{id}")).await;
        assert_eq!(one["meta"], json!({"n": 1}));
        assert!(one["result"].is_object(), "{one}");

        for bad in ["full=yes", "full=1", "full="] {
            assert_error(
                &api.get(&format!("/tasks?{bad}")).await,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            );
        }
        worker.stop().await;
    }
}
