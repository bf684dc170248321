//! `bgagent bench` smoke test: a small run of the real command, output shape and completion.
//! (Figures are not asserted: benchmarks print them, tests do not time things.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::services;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_spawn_reports_every_figure_and_finishes_every_task() {
    let services = services();
    let (database_url, amqp_url) = (services.database_url.clone(), services.amqp_url.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_bgagent"))
            .args([
                "bench",
                "--spawn",
                "--workers",
                "2",
                "--tasks",
                "300",
                "--concurrency",
                "8",
                "--json",
            ])
            .env("DATABASE_URL", database_url)
            .env("AMQP_URL", amqp_url)
            .env("RUST_LOG", "warn")
            .output()
    })
    .await
    .unwrap()
    .expect("run bgagent bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["tasks"], 300);
    assert_eq!(report["succeeded"], 300, "every task finished: {report}");
    assert_eq!(report["failures"], 0);
    assert_eq!(report["workers"], 2);
    for key in [
        "enqueue_per_sec",
        "enqueue_p50_ms",
        "enqueue_p95_ms",
        "enqueue_p99_ms",
        "end_to_end_per_sec",
        "queue_wait_p50_ms",
        "queue_wait_p99_ms",
        "run_time_p50_ms",
        "run_time_p99_ms",
        "api_peak_rss_mib",
        "worker_peak_rss_mib",
    ] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} missing or zero: {report}"
        );
    }
    assert!(report["enqueue_p50_ms"].as_f64() <= report["enqueue_p99_ms"].as_f64());
}
