//! `bgagent dev`: everything in one process for local use: creates the database if absent,
//! migrates, starts the API and workers, and prints the URL and API key.

use anyhow::Context;
use bgagent_api::{Api, ApiConfig};
use bgagent_shared::config::BrokerConfig;
use bgagent_shared::db;
use bgagent_shared::telemetry::{self, LogFormat};
use bgagent_worker::{Worker, WorkerConfig, WorkerOptions};
use rand::RngCore;
use secrecy::ExposeSecret;

/// Arguments of `bgagent dev`.
#[derive(clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    api: ApiConfig,
    #[command(flatten)]
    worker: WorkerOptions,
    /// Drop the database and delete this prefix's exchanges and queues on exit (tests, demos).
    #[arg(long)]
    ephemeral: bool,
    /// Workers to run in this process.
    #[arg(long, env = "BGAGENT_DEV_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Log format (pretty for terminals).
    #[arg(long, env = "BGAGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
}

/// Run the command until Ctrl-C / SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let mut config = args.api;
    config.database = config.database.or_local();
    config.broker = config.broker.or_local();
    let generated = config.api_key.is_none() && config.api_key_file.is_none();
    if generated {
        config.api_key = Some(random_key().into());
    }
    db::ensure_database(config.database.url()?).await.context(
        "cannot reach PostgreSQL to create the database (is it running? set DATABASE_URL)",
    )?;
    let api = Api::build(&config).await.context("cannot start the API")?;
    let mut workers = Vec::new();
    for n in 0..args.workers {
        let mut options = args.worker.clone();
        // One metrics port per process: only the first in-process worker serves it.
        if n > 0 {
            options.metrics_bind = None;
        }
        let worker_config = WorkerConfig {
            database: config.database.clone(),
            broker: config.broker.clone(),
            egress: config.egress.clone(),
            options,
        };
        workers.push(
            Worker::build(&worker_config)
                .await
                .context("cannot start a worker")?,
        );
    }
    let addr = api.local_addr()?;
    let key = config.resolved_api_key()?;
    let shown_host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    println!("Background Agent is running (Ctrl-C stops it)");
    println!("  BGAGENT_URL=http://{shown_host}:{}", addr.port());
    if generated {
        println!("  BACKGROUND_AGENT_API_KEY={}", key.expose_secret());
    } else {
        println!("  BACKGROUND_AGENT_API_KEY=(the one you set)");
    }
    println!("  workers: {}", workers.len());
    let shutdown = bgagent_shared::shutdown::on_signal();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in workers {
        tasks.spawn(worker.run_until_stopped(shutdown.clone()));
    }
    tasks.spawn(api.run_until_stopped(shutdown.clone()));
    let mut failure = None;
    while let Some(done) = tasks.join_next().await {
        // One part failing stops the rest, so dev mode never runs half a system.
        if let Ok(Err(e)) = done {
            shutdown.cancel();
            failure.get_or_insert(e);
        }
    }
    if args.ephemeral {
        teardown(config.database.url()?, &config.broker)
            .await
            .context("cannot remove the ephemeral database and broker objects")?;
        println!("ephemeral run: database and broker objects removed");
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn random_key() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Remove what an ephemeral run (or `bench --spawn`) created: its database and its prefix's
/// exchanges and queues.
pub async fn teardown(database_url: &str, broker: &BrokerConfig) -> anyhow::Result<()> {
    let topology =
        bgagent_shared::queue::rabbit::Topology::new(&broker.broker_prefix, broker.delivery_limit);
    let conn = bgagent_shared::queue::rabbit::connect(broker.url()?, "bgagent-teardown").await?;
    let channel = conn.create_channel().await?;
    for queue in topology.queues() {
        channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await?;
    }
    for exchange in topology.exchanges() {
        channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await?;
    }
    let _ = conn.close(200, "bye".into()).await;
    db::drop_database(database_url).await?;
    Ok(())
}
