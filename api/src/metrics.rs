//! Prometheus metrics of the API process.

use bgagent_shared::labels::AgentLabels;
use bgagent_shared::store::BACKLOG_COUNT_CAP;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;
use std::time::Instant;

/// Counters and histograms the API exports at `/metrics`.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// The `agent` label of a name (bounded: registered and built-in agents by name).
    pub agents: AgentLabels,
    /// Tasks accepted (new rows), by agent.
    pub tasks_enqueued: IntCounterVec,
    /// Enqueued tasks whose publish was not confirmed (left for the relay).
    pub publish_failures: IntCounterVec,
    /// Requests by method, matched route and status.
    pub(crate) http_requests: IntCounterVec,
    /// Request durations by method, matched route and status.
    pub(crate) http_duration: HistogramVec,
    /// Messages waiting in the queue (`tasks`, `dead`), sampled at scrape time.
    pub(crate) queue_messages: IntGaugeVec,
    /// The fleet's paused state, sampled at scrape time.
    pub(crate) fleet_paused: IntGauge,
    /// Live workers, sampled at scrape time.
    pub(crate) workers_live: IntGauge,
    /// Requests of this process waiting for a task to be final, sampled at scrape time.
    pub(crate) task_waiters: IntGauge,
    /// Open `GET /events` streams of this process, sampled at scrape time.
    pub(crate) event_streams: IntGauge,
    /// Task events this process dropped (buffer full, queue unreachable), caught up at scrape.
    pub(crate) events_dropped: IntCounter,
    /// Tasks by state (`due`, `delayed`, `running`), from the store at most every few seconds.
    pub(crate) backlog_tasks: IntGaugeVec,
    /// Age of the oldest due task (no labels; a vector so a failed refresh can omit it).
    pub(crate) oldest_due_age: GaugeVec,
    /// When the backlog gauges were last refreshed; held while a refresh runs.
    pub(crate) backlog_refreshed: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

impl Metrics {
    /// Create and register every metric; `agents` picks the `agent` label values.
    pub fn new(agents: AgentLabels) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let tasks_enqueued = IntCounterVec::new(
            Opts::new("bgagent_tasks_enqueued_total", "Tasks accepted by the API"),
            &["agent"],
        )?;
        let publish_failures = IntCounterVec::new(
            Opts::new(
                "bgagent_publish_failures_total",
                "Enqueued tasks whose publish was not confirmed (the relay publishes them later)",
            ),
            &["reason"],
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new("bgagent_http_requests_total", "HTTP requests served"),
            &["method", "route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "bgagent_http_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route", "status"],
        )?;
        let queue_messages = IntGaugeVec::new(
            Opts::new(
                "bgagent_queue_messages",
                "Messages ready in a queue (tasks, dead)",
            ),
            &["queue"],
        )?;
        let fleet_paused = IntGauge::new("bgagent_fleet_paused", "1 while the fleet is paused")?;
        let task_waiters = IntGauge::new(
            "bgagent_api_task_waiters",
            "Requests of this API process waiting for a task to be final (GET /tasks/{id}?wait_secs=)",
        )?;
        registry.register(Box::new(task_waiters.clone()))?;
        let event_streams = IntGauge::new(
            "bgagent_api_event_streams",
            "GET /events streams open on this API process",
        )?;
        registry.register(Box::new(event_streams.clone()))?;
        let events_dropped = IntCounter::new(
            "bgagent_events_dropped_total",
            "Task status events this process dropped instead of publishing (buffer full or queue \
             unreachable); clients resuming a stream are told to re-read",
        )?;
        registry.register(Box::new(events_dropped.clone()))?;
        let workers_live = IntGauge::new(
            "bgagent_workers_live",
            "Workers that sent a heartbeat in the last 30 seconds",
        )?;
        let backlog_tasks = IntGaugeVec::new(
            Opts::new(
                "bgagent_backlog_tasks",
                format!(
                    "Tasks by state: due (queued, run_at passed), delayed (queued, run_at \
                     ahead), running; each count stops at {BACKLOG_COUNT_CAP}"
                ),
            ),
            &["state"],
        )?;
        let oldest_due_age = GaugeVec::new(
            Opts::new(
                "bgagent_oldest_due_task_age_seconds",
                "Seconds since the oldest queued task became due (0 when none is due)",
            ),
            &[],
        )?;
        // Zero-valued series exist from the start, so rate() and alerts see them before the
        // first failure.
        publish_failures.with_label_values(&["unconfirmed"]);
        registry.register(Box::new(queue_messages.clone()))?;
        registry.register(Box::new(fleet_paused.clone()))?;
        registry.register(Box::new(workers_live.clone()))?;
        registry.register(Box::new(backlog_tasks.clone()))?;
        registry.register(Box::new(oldest_due_age.clone()))?;
        registry.register(Box::new(tasks_enqueued.clone()))?;
        registry.register(Box::new(publish_failures.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        Ok(Self {
            registry,
            agents,
            tasks_enqueued,
            publish_failures,
            http_requests,
            http_duration,
            queue_messages,
            fleet_paused,
            workers_live,
            task_waiters,
            event_streams,
            events_dropped,
            backlog_tasks,
            oldest_due_age,
            backlog_refreshed: Arc::default(),
        })
    }

    /// The `agent` label value of `agent` (see [`AgentLabels::label`]).
    pub fn agent_label<'a>(&self, agent: &'a str) -> &'a str {
        self.agents.label(agent)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
