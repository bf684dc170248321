//! The Background Agent worker: consumes task messages, claims tasks in PostgreSQL, runs them
//! (built-ins, registered agents over HTTP, or the Omni Gateway), records outcomes and obeys
//! stop/start/cancel. It also runs the relay (publishing due, unpublished tasks), the reaper
//! (recovering tasks of lost workers) and the pruner (deleting rows past their retention), so
//! any number of workers share that work.
//!
//! [`Worker::build`] prepares a worker; [`Worker::run_until_stopped`] runs it until the shutdown
//! token fires, then drains: in-flight tasks get `BGAGENT_SHUTDOWN_GRACE_SECS` to finish and the
//! rest are handed back to the queue, so a clean stop leaves nothing `running`.

mod broker_loss;
mod claim;
pub mod config;
mod dead_letters;
mod delivery;
mod events;
mod execute;
pub mod executor;
mod heartbeat;
pub mod metrics;
mod pruner;
mod reaper;
mod record;
mod relay;
mod state;

use bgagent_shared::Error;
use bgagent_shared::engine::Engine;
use bgagent_shared::labels::AgentLabels;
use bgagent_shared::queue::ConsumerSpec;
use bgagent_types::backoff::Backoff;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{WorkerConfig, WorkerOptions};
use executor::{AgentRegistry, Executors, HttpExecutor};
use state::Shared;

/// How long outcomes may take to reach PostgreSQL after the drain before they are left to the
/// leases.
const RECORD_DEADLINE: Duration = Duration::from_secs(15);

/// `bgagent-worker` / `bgagent worker`: the worker's settings plus logging, run until
/// SIGTERM/SIGINT.
#[derive(clap::Parser)]
#[command(name = "bgagent-worker", version, about = "Background Agent worker")]
pub struct WorkerCommand {
    /// Worker settings.
    #[command(flatten)]
    pub worker: WorkerConfig,
    /// Logging.
    #[command(flatten)]
    pub telemetry: bgagent_shared::telemetry::TelemetryConfig,
}

impl WorkerCommand {
    /// Init logging, build the worker and run it until a shutdown signal, then drain.
    pub async fn run(self) -> Result<(), Error> {
        bgagent_shared::telemetry::init(self.telemetry.log_format);
        Worker::build(&self.worker)
            .await?
            .run_until_stopped(bgagent_shared::shutdown::on_signal())
            .await
    }
}

/// Concurrent outcome writers (each one statement per batch). One: the next batch gathers while a
/// statement commits, and fewer, larger statements measured ~10 % faster end to end than three.
const RECORD_LOOPS: usize = 1;

/// A worker ready to run.
pub struct Worker {
    shared: Arc<Shared>,
    metrics_listener: Option<tokio::net::TcpListener>,
    dead_copies: mpsc::Receiver<bgagent_shared::queue::DeadCopy>,
}

impl Worker {
    /// Validate the configuration, prepare clients and bind the metrics port, on PostgreSQL and
    /// RabbitMQ. Connects nothing yet: the worker starts while either is down and waits for it.
    pub async fn build(config: &WorkerConfig) -> Result<Self, Error> {
        let id = config
            .options
            .worker_id
            .clone()
            .unwrap_or_else(default_worker_id);
        let engine = Engine::postgres_rabbitmq(
            &config.database,
            &config.broker,
            &format!("bgagent-worker@{id}"),
            config.options.amqp_heartbeat_secs,
        )?;
        Self::with_engine(config, engine, id).await
    }

    /// A worker on `engine` (the embedded engine, or one shared with an API in the same process),
    /// with the id `id`. The database and broker settings of `config` are not used.
    pub async fn with_engine(
        config: &WorkerConfig,
        engine: Engine,
        id: String,
    ) -> Result<Self, Error> {
        let options = config.options.clone();
        options.validate()?;
        let egress = config.egress.policy();
        let gateway = match &options.omni_gateway_url {
            Some(url) => Some(executor::http::Gateway::new(
                url,
                options.gateway_key()?,
                &egress,
            )?),
            None => None,
        };
        let http = HttpExecutor::new(gateway, options.result_max_bytes, egress)?;
        let agent_labels = AgentLabels::new(engine.store.clone());
        let metrics = Arc::new(
            metrics::WorkerMetrics::new(agent_labels.clone())
                .map_err(|e| Error::Config(format!("metrics: {e}")))?,
        );
        let metrics_listener = match options.metrics_bind {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::Io(format!(
                    "BGAGENT_METRICS_BIND: cannot listen on {addr}: {e}"
                ))
            })?),
            None => None,
        };
        // 75-100 % jitter: retries of many tasks spread out, yet (for a factor of at least 1.34)
        // each wait still exceeds the one before.
        let backoff = Backoff {
            base: Duration::from_millis(options.retry_base_ms.max(1)),
            factor: options.retry_factor,
            max: Duration::from_secs(options.retry_max_secs.max(1)),
            jitter: 0.75..=1.0,
        };
        let (paused, _) = watch::channel(false);
        let (dead_copies_tx, dead_copies) = mpsc::channel(dead_letters::BACKLOG);
        let shared = Shared {
            id,
            executors: Executors::new(http, AgentRegistry::new(engine.store.clone()), agent_labels),
            permits: Arc::new(Semaphore::new(options.concurrency.max(1))),
            tasks_per_message: usize::from(config.broker.tasks_per_message.max(1)),
            options,
            store: engine.store,
            queue: engine.queue,
            metrics,
            backoff,
            running: Default::default(),
            held: Default::default(),
            processed: AtomicI64::new(0),
            paused,
            interrupt: CancellationToken::new(),
            connected: Arc::new(AtomicBool::new(false)),
            dead_copies: dead_copies_tx,
            broker_check: tokio::sync::Notify::new(),
        };
        Ok(Self {
            shared: Arc::new(shared),
            metrics_listener,
            dead_copies,
        })
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Address of the metrics server, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref()?.local_addr().ok()
    }

    /// Run until `shutdown`, then drain and stop cleanly.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let shared = self.shared;
        let finished = CancellationToken::new();
        if let Some(listener) = self.metrics_listener {
            let state = metrics::ServerState {
                metrics: shared.metrics.clone(),
                connected: shared.connected.clone(),
            };
            tokio::spawn(metrics::serve(listener, state, finished.clone()));
        }
        if !register(&shared, &shutdown).await {
            return Ok(());
        }
        // Adopt the stored paused state before consuming anything.
        heartbeat::reconcile_paused(&shared).await;
        tracing::info!(worker_id = %shared.id, paused = shared.is_paused(), "worker started");

        let prefetch = shared.prefetch_messages();
        let (deliveries_tx, deliveries_rx) = mpsc::channel(usize::from(prefetch));
        let (records_tx, records_rx) = mpsc::channel(shared.options.concurrency.max(1) * 2);
        let executions = TaskTracker::new();
        let abandon = CancellationToken::new();

        // Heartbeats (and lease renewal) continue through the drain, until the very end.
        let heartbeat = tokio::spawn(heartbeat::heartbeat_loop(shared.clone(), finished.clone()));
        let relay = tokio::spawn(relay::relay_loop(shared.clone(), shutdown.clone()));
        let reaper = tokio::spawn(reaper::reaper_loop(shared.clone(), shutdown.clone()));
        let pruner = tokio::spawn(pruner::prune_loop(shared.clone(), shutdown.clone()));
        let dead_copies = tokio::spawn(dead_letters::dead_copy_loop(
            shared.clone(),
            self.dead_copies,
            finished.clone(),
        ));
        let broker_check = tokio::spawn(broker_loss::check_loop(shared.clone(), shutdown.clone()));
        let (events_tx, events_rx) = mpsc::channel(EVENT_BACKLOG);
        let events = tokio::spawn(events::event_loop(shared.clone(), events_rx));
        let claims = tokio::spawn(claim::claim_loop(
            shared.clone(),
            deliveries_rx,
            records_tx,
            shutdown.clone(),
            executions.clone(),
        ));
        let records_rx = Arc::new(tokio::sync::Mutex::new(records_rx));
        let mut records = tokio::task::JoinSet::new();
        for _ in 0..RECORD_LOOPS {
            records.spawn(record::record_loop(
                shared.clone(),
                records_rx.clone(),
                abandon.clone(),
            ));
        }

        let session = shared
            .queue
            .consume(ConsumerSpec {
                worker_id: shared.id.clone(),
                prefetch,
                paused: shared.paused.subscribe(),
                deliveries: deliveries_tx,
                events: events_tx,
                stopping: shutdown.clone(),
                connected: shared.connected.clone(),
            })
            .await;

        // Draining: no consumer any more; unclaimed deliveries were handed back.
        tracing::info!(worker_id = %shared.id, in_flight = shared.metrics.in_flight.get(), "draining");
        bounded_join(claims).await;
        executions.close();
        let grace = Duration::from_secs(shared.options.shutdown_grace_secs);
        if tokio::time::timeout(grace, executions.wait())
            .await
            .is_err()
        {
            tracing::warn!(worker_id = %shared.id, "grace period over; handing unfinished tasks back");
            shared.interrupt.cancel();
            executions.wait().await;
        }
        let deadline = tokio::spawn({
            let abandon = abandon.clone();
            async move {
                tokio::time::sleep(RECORD_DEADLINE).await;
                abandon.cancel();
            }
        });
        while records.join_next().await.is_some() {}
        deadline.abort();
        // Every remaining step is bounded, so a stop always ends even if a dependency hangs.
        for task in [relay, reaper, pruner, broker_check, events] {
            bounded_join(task).await;
        }
        finished.cancel();
        bounded_join(heartbeat).await;
        bounded_join(dead_copies).await;
        if let Err(e) = shared.store.mark_worker_stopped(&shared.id).await {
            tracing::warn!(error = %e, "cannot mark the worker stopped");
        }
        if let Some(session) = session {
            let _ = tokio::time::timeout(STOP_STEP, session.close()).await;
        }
        tracing::info!(worker_id = %shared.id, "worker stopped");
        Ok(())
    }
}

/// Queue events waiting for the worker (control messages are few; dead-letter events are
/// bounded by the queue's own prefetch).
const EVENT_BACKLOG: usize = 256;

/// Longest wait for one step of the final shutdown.
const STOP_STEP: Duration = Duration::from_secs(10);

/// Wait for a background loop to end, aborting it if it takes longer than [`STOP_STEP`].
async fn bounded_join(task: tokio::task::JoinHandle<()>) {
    let abort = task.abort_handle();
    if tokio::time::timeout(STOP_STEP, task).await.is_err() {
        tracing::warn!("a background loop did not stop in time; aborted");
        abort.abort();
    }
}

/// Register in `workers`, retrying while PostgreSQL is down; false when shutdown came first.
async fn register(shared: &Shared, shutdown: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(250);
    loop {
        match shared
            .store
            .register_worker(
                &shared.id,
                &bgagent_shared::telemetry::hostname(),
                env!("CARGO_PKG_VERSION"),
            )
            .await
        {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %e, "cannot register the worker; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return false,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// `host-pid-random`: unique across restarts and replicas, readable in the management UI.
pub fn default_worker_id() -> String {
    let suffix: u32 = rand::random();
    format!(
        "{}-{}-{:08x}",
        bgagent_shared::telemetry::hostname(),
        std::process::id(),
        suffix
    )
}
