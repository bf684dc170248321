//! The backlog gauges of `GET /metrics`: tasks due, delayed and running, and the age of the
//! oldest due task, from the store (not the broker), on both engines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use crate::common::{TestApi, TestEnv};
use serde_json::json;
use std::time::{Duration, Instant};

/// The gauges can take one refresh interval (5 s) to follow a change.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Figures {
    due: Option<f64>,
    delayed: Option<f64>,
    running: Option<f64>,
    oldest_age: Option<f64>,
}

fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn figures(api: &TestApi) -> Figures {
    let text = api.text(&api.url("/metrics")).await;
    Figures {
        due: value(&text, r#"bgagent_backlog_tasks{state="due"}"#),
        delayed: value(&text, r#"bgagent_backlog_tasks{state="delayed"}"#),
        running: value(&text, r#"bgagent_backlog_tasks{state="running"}"#),
        oldest_age: value(&text, "bgagent_oldest_due_task_age_seconds"),
    }
}

/// Scrape until `ok` holds; the last figures otherwise.
async fn wait_figures(api: &TestApi, what: &str, ok: impl Fn(&Figures) -> bool) -> Figures {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = figures(api).await;
        if ok(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "{what}: last scrape {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

both_engines! {
    async fn backlog_gauges_count_due_delayed_and_running(env: TestEnv) {
        let api = env.spawn_api().await;
        // No worker yet: three due tasks (each holds a worker slot for a while once running) and
        // two delayed by an hour.
        for _ in 0..3 {
            api.enqueue(&json!({"agent": "sleep", "command": "hold", "meta": {"ms": 20_000}}))
                .await;
        }
        for _ in 0..2 {
            api.enqueue(&json!({"agent": "echo", "command": "later", "delay_secs": 3600}))
                .await;
        }
        let first = wait_figures(&api, "3 due, 2 delayed, none running", |f| {
            f.due == Some(3.0) && f.delayed == Some(2.0) && f.running == Some(0.0)
        })
        .await;
        let age = first.oldest_age.expect("the oldest due age is exported");
        assert!((0.0..60.0).contains(&age), "oldest due age {age}");

        // Nothing runs them, so the oldest due task keeps ageing (a later refresh reads more).
        wait_figures(&api, "the oldest due task ages", |f| {
            f.oldest_age.is_some_and(|a| a >= age + 1.0) && f.due == Some(3.0)
        })
        .await;

        // A worker takes the due tasks; the delayed ones stay.
        let worker = env.spawn_worker(env.worker_options()).await;
        wait_figures(&api, "3 running, none due, 2 delayed", |f| {
            f.running == Some(3.0)
                && f.due == Some(0.0)
                && f.delayed == Some(2.0)
                && f.oldest_age == Some(0.0)
        })
        .await;
        worker.stop().await;
    }
}

/// A store that does not answer leaves the backlog gauges out of the scrape (the other metrics
/// are still served): a stale figure would keep scaling workers on nothing measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_gauges_are_omitted_while_the_store_is_down() {
    let env = TestEnv::new().await;
    let api = env.spawn_api_without_database().await;
    let text = api.text(&api.url("/metrics")).await;
    assert!(text.contains("bgagent_queue_messages{"), "{text}");
    assert!(!text.contains("bgagent_backlog_tasks{"), "{text}");
    assert!(
        !text.contains("bgagent_oldest_due_task_age_seconds "),
        "{text}"
    );
}
