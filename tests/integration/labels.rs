//! Clients do not choose the size of `/metrics`: made-up agent names (and methods) share one label
//! value, while registered and built-in agents keep their own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use crate::fake_agent::FakeAgent;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

const MADE_UP: usize = 50;

/// Sum of the samples of `metric` (exact family name, no histogram suffix) whose labels include
/// `agent="<agent>"`.
fn sum_for(exposition: &str, metric: &str, agent: &str) -> f64 {
    let label = format!("agent=\"{agent}\"");
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{'))
                && l.contains(&label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

both_engines! {
    async fn made_up_agent_names_share_one_label_value(env: TestEnv) {
        let api = env.spawn_api().await;
        let mut options = env.worker_options();
        options.metrics_bind = Some("127.0.0.1:0".parse().unwrap());
        let worker = env.spawn_worker(options).await;
        let agent = FakeAgent::start(Vec::new()).await;
        let (status, _) = api
            .post(
                "/agents/register",
                &json!({"name": "registered-one", "endpoint": format!("{}/run", agent.url)}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);

        for i in 0..MADE_UP {
            // No route for these names: each fails terminally on its first attempt.
            api.enqueue(&json!({"agent": format!("made-up-{i}"), "command": "x", "max_attempts": 1}))
                .await;
        }
        api.enqueue(&json!({"agent": "registered-one", "command": "x"}))
            .await;
        api.enqueue(&json!({"agent": "echo", "command": "x"})).await;
        // An extension method is a client-chosen label too.
        let odd = reqwest::Method::from_bytes(b"MADEUPMETHOD").unwrap();
        api.http
            .request(odd, api.url("/health"))
            .send()
            .await
            .unwrap();
        env.wait_all_terminal(Duration::from_secs(30)).await;

        let api_text = api.text(&api.url("/metrics")).await;
        assert!(!api_text.contains("made-up-"), "{api_text}");
        assert!(!api_text.contains("MADEUPMETHOD"), "{api_text}");
        let enqueued = "bgagent_tasks_enqueued_total";
        assert_eq!(sum_for(&api_text, enqueued, "_other"), MADE_UP as f64);
        assert_eq!(sum_for(&api_text, enqueued, "registered-one"), 1.0);
        assert_eq!(sum_for(&api_text, enqueued, "echo"), 1.0);

        // The worker counts an attempt just after its outcome is stored: wait for the last ones.
        let url = format!("http://{}/metrics", worker.metrics_addr.unwrap());
        let processed = "bgagent_tasks_processed_total";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let worker_text = loop {
            let text = api.text(&url).await;
            let counted = sum_for(&text, processed, "_other")
                + sum_for(&text, processed, "registered-one")
                + sum_for(&text, processed, "echo");
            if counted >= (MADE_UP + 2) as f64 || tokio::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(!worker_text.contains("made-up-"), "{worker_text}");
        assert_eq!(sum_for(&worker_text, processed, "_other"), MADE_UP as f64);
        assert_eq!(sum_for(&worker_text, processed, "registered-one"), 1.0);
        assert_eq!(sum_for(&worker_text, processed, "echo"), 1.0);
        assert_eq!(
            sum_for(&worker_text, "bgagent_task_run_seconds_count", "_other"),
            MADE_UP as f64
        );
        assert_eq!(agent.receipts().len(), 1);
    }
}
