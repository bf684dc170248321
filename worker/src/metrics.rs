//! Prometheus metrics of a worker process, served with `/health` and `/ready` on
//! `BGAGENT_METRICS_BIND`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use bgagent_shared::labels::AgentLabels;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

/// Worker metrics.
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    /// The `agent` label of a name (bounded: registered and built-in agents by name).
    pub agents: AgentLabels,
    /// Attempts finished, by agent and outcome.
    pub processed: IntCounterVec,
    /// Tasks that failed terminally (no retry follows), by agent: the failure-rate alerts.
    pub failed: IntCounterVec,
    /// Attempt run time, by agent.
    pub run_seconds: HistogramVec,
    /// Time from due to start, by agent.
    pub queue_wait_seconds: HistogramVec,
    /// Tasks running now.
    pub in_flight: IntGauge,
    /// 1 while this worker is paused.
    pub paused: IntGauge,
    /// Executor errors by kind.
    pub executor_errors: IntCounterVec,
    /// Tasks the relay published.
    pub relay_published: IntCounter,
    /// Running tasks recovered from lost workers.
    pub recovered: IntCounter,
    /// Queued tasks published again because the broker no longer held them (data lost, queue
    /// purged or deleted).
    pub republished: IntCounter,
    /// Items a loop stopped retrying, by loop (`claim`, `record`, `release`, `dead_letter_event`,
    /// `dead_copy`).
    pub gave_up: IntCounterVec,
    /// Rows the pruner deleted, by kind (`tasks`, `attempts`, `workers`).
    pub pruned: IntCounterVec,
    /// Task events this process dropped (buffer full, queue unreachable), caught up at render.
    pub events_dropped: IntCounter,
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0,
    ]
}

impl WorkerMetrics {
    /// Create and register every metric; `agents` picks the `agent` label values.
    pub fn new(agents: AgentLabels) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let processed = IntCounterVec::new(
            Opts::new("bgagent_tasks_processed_total", "Task attempts finished"),
            &["agent", "outcome"],
        )?;
        let failed = IntCounterVec::new(
            Opts::new(
                "bgagent_tasks_failed_total",
                "Tasks that failed terminally (last attempt failed or timed out, worker lost on \
                 the last attempt, message dead-lettered)",
            ),
            &["agent"],
        )?;
        let run_seconds = HistogramVec::new(
            HistogramOpts::new("bgagent_task_run_seconds", "Attempt run time")
                .buckets(latency_buckets()),
            &["agent"],
        )?;
        let queue_wait_seconds = HistogramVec::new(
            HistogramOpts::new(
                "bgagent_task_queue_wait_seconds",
                "Time from a task being due to its attempt starting",
            )
            .buckets(latency_buckets()),
            &["agent"],
        )?;
        let in_flight = IntGauge::new("bgagent_worker_in_flight", "Tasks running now")?;
        let paused = IntGauge::new("bgagent_worker_paused", "1 while this worker is paused")?;
        let executor_errors = IntCounterVec::new(
            Opts::new("bgagent_executor_errors_total", "Executor errors by kind"),
            &["kind"],
        )?;
        let relay_published = IntCounter::new(
            "bgagent_relay_published_total",
            "Due, unpublished tasks published by the relay",
        )?;
        let recovered = IntCounter::new(
            "bgagent_tasks_recovered_total",
            "Running tasks of lost workers returned to the queue or failed",
        )?;
        registry.register(Box::new(processed.clone()))?;
        registry.register(Box::new(failed.clone()))?;
        registry.register(Box::new(run_seconds.clone()))?;
        registry.register(Box::new(queue_wait_seconds.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(paused.clone()))?;
        registry.register(Box::new(executor_errors.clone()))?;
        registry.register(Box::new(relay_published.clone()))?;
        let gave_up = IntCounterVec::new(
            Opts::new(
                "bgagent_worker_gave_up_total",
                "Items a worker loop stopped retrying after the database kept refusing them",
            ),
            &["what"],
        )?;
        registry.register(Box::new(recovered.clone()))?;
        registry.register(Box::new(gave_up.clone()))?;
        let republished = IntCounter::new(
            "bgagent_tasks_republished_total",
            "Queued tasks published again because the broker no longer held them",
        )?;
        registry.register(Box::new(republished.clone()))?;
        let pruned = IntCounterVec::new(
            Opts::new(
                "bgagent_pruned_rows_total",
                "Rows deleted past their retention: finished tasks, their attempt records, and \
                 workers gone for a day",
            ),
            &["kind"],
        )?;
        // Every series exists from the start, so rate() sees the first deletions.
        for kind in ["tasks", "attempts", "workers"] {
            pruned.with_label_values(&[kind]);
        }
        registry.register(Box::new(pruned.clone()))?;
        let events_dropped = IntCounter::new(
            "bgagent_events_dropped_total",
            "Task status events this process dropped instead of publishing (buffer full or queue \
             unreachable); clients resuming a stream are told to re-read",
        )?;
        registry.register(Box::new(events_dropped.clone()))?;
        Ok(Self {
            registry,
            agents,
            processed,
            failed,
            run_seconds,
            queue_wait_seconds,
            in_flight,
            paused,
            executor_errors,
            relay_published,
            recovered,
            gave_up,
            republished,
            pruned,
            events_dropped,
        })
    }

    /// The `agent` label value of `agent` (see [`AgentLabels::label`]).
    pub fn agent_label<'a>(&self, agent: &'a str) -> &'a str {
        self.agents.label(agent)
    }

    /// Text exposition.
    pub fn render(&self) -> String {
        let dropped = bgagent_shared::events::dropped_total();
        let counted = self.events_dropped.get();
        if dropped > counted {
            self.events_dropped.inc_by(dropped - counted);
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// State of the worker's small HTTP server.
#[derive(Clone)]
pub struct ServerState {
    /// Metrics.
    pub metrics: Arc<WorkerMetrics>,
    /// True while the worker has a broker session.
    pub connected: Arc<AtomicBool>,
}

/// Serve `/metrics`, `/health` and `/ready` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn render(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<ServerState>) -> impl IntoResponse {
    if state.connected.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker",
        )
    }
}
