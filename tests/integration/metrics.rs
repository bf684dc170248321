//! Every metric the dashboard and the alert rules use is exported by a running API or worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

/// `bgagent_*` names in a monitoring file, with histogram suffixes reduced to the family name.
fn names_in(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("bgagent_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        names.insert(text[start..end].to_owned());
        i = end;
    }
    names
}

fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

both_engines! {
    async fn dashboard_and_alerts_use_only_exported_metrics(env: TestEnv) {
        let api = env.spawn_api().await;
        let mut options = env.worker_options();
        options.metrics_bind = Some("127.0.0.1:0".parse().unwrap());
        let worker = env.spawn_worker(options).await;
        // Exercise the paths that create labelled series: success, retry, failure, relay.
        for body in [
            json!({"agent": "echo", "command": "x"}),
            json!({"agent": "fail", "command": "x", "max_attempts": 2}),
            json!({"agent": "echo", "command": "later", "delay_secs": 1}),
        ] {
            api.enqueue(&body).await;
        }
        env.wait_all_terminal(Duration::from_secs(20)).await;

        let api_text = api.text(&api.url("/metrics")).await;
        let worker_url = format!("http://{}/metrics", worker.metrics_addr.unwrap());
        let worker_text = api.text(&worker_url).await;
        let available: BTreeSet<String> = exported(&api_text)
            .union(&exported(&worker_text))
            .cloned()
            .collect();

        let used: BTreeSet<String> = names_in("monitoring/alerts.yml")
            .union(&names_in("monitoring/grafana/dashboards/bgagent.json"))
            .cloned()
            .collect();
        assert!(
            used.len() >= 10,
            "the monitoring files use our metrics: {used:?}"
        );
        let missing: Vec<&String> = used.iter().filter(|n| !available.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "used by monitoring but not exported: {missing:?}"
        );

        // The worker's own endpoints answer too.
        let base = format!("http://{}", worker.metrics_addr.unwrap());
        assert_eq!(
            api.http
                .get(format!("{base}/health"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            api.http
                .get(format!("{base}/ready"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
}
