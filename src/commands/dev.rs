//! `bgagent dev`: everything in one process for local use: the API and workers, on the embedded
//! engine (a SQLite file and an in-process queue; nothing to install) when neither
//! `DATABASE_URL` nor `AMQP_URL` is set, or on PostgreSQL and RabbitMQ when both are. It prints
//! the URL and the API key.

use anyhow::{Context, bail};
use bgagent_api::{Api, ApiConfig};
use bgagent_shared::config::BrokerConfig;
use bgagent_shared::engine::Engine;
use bgagent_shared::store::postgres::PgStore;
use bgagent_shared::telemetry::{self, LogFormat};
use bgagent_worker::{Worker, WorkerConfig, WorkerOptions, default_worker_id};
use rand::RngCore;
use secrecy::ExposeSecret;
use std::path::PathBuf;

/// Arguments of `bgagent dev`.
#[derive(clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    api: ApiConfig,
    #[command(flatten)]
    worker: WorkerOptions,
    /// Where the embedded engine keeps its SQLite file (default: the platform's user data
    /// directory, e.g. ~/.local/share/bgagent). Not used with PostgreSQL and RabbitMQ.
    #[arg(long, env = "BGAGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Remove everything this run stored on exit: the embedded engine's data dir, or the
    /// PostgreSQL database and this prefix's exchanges and queues (tests, demos).
    #[arg(long)]
    ephemeral: bool,
    /// Workers to run in this process.
    #[arg(long, env = "BGAGENT_DEV_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Log format (pretty for terminals).
    #[arg(long, env = "BGAGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
}

/// Which engine a dev run uses, and what it stores where.
enum Choice {
    Embedded { data_dir: PathBuf },
    PostgresRabbitmq,
}

impl Choice {
    fn pick(args: &DevArgs) -> anyhow::Result<Self> {
        let database = args.api.database.database_url.is_some();
        let broker = args.api.broker.amqp_url.is_some();
        match (database, broker) {
            (false, false) => Ok(Self::Embedded {
                data_dir: data_dir(args)?,
            }),
            (true, true) => Ok(Self::PostgresRabbitmq),
            (true, false) => bail!(
                "DATABASE_URL is set but AMQP_URL is not: set both for PostgreSQL and RabbitMQ, \
                 or neither for the embedded engine"
            ),
            (false, true) => bail!(
                "AMQP_URL is set but DATABASE_URL is not: set both for PostgreSQL and RabbitMQ, \
                 or neither for the embedded engine"
            ),
        }
    }
}

fn data_dir(args: &DevArgs) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &args.data_dir {
        return Ok(dir.clone());
    }
    if args.ephemeral {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        return Ok(std::env::temp_dir().join(format!("bgagent-dev-{}", &suffix[..12])));
    }
    let base = dirs::data_dir()
        .context("no user data directory on this platform: set BGAGENT_DATA_DIR or --data-dir")?;
    Ok(base.join("bgagent"))
}

/// Run the command until Ctrl-C / SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let choice = Choice::pick(&args)?;
    let mut config = args.api;
    let generated = config.api_key.is_none() && config.api_key_file.is_none();
    if generated {
        config.api_key = Some(random_key().into());
    }
    let (engine, described) = match &choice {
        Choice::Embedded { data_dir } => {
            let engine = Engine::embedded(data_dir)
                .await
                .with_context(|| format!("cannot open the data dir {}", data_dir.display()))?;
            let file = data_dir.join(bgagent_shared::store::sqlite::FILE_NAME);
            let described = format!(
                "embedded (SQLite file {}, in-process queue)",
                file.display()
            );
            (engine, described)
        }
        Choice::PostgresRabbitmq => {
            PgStore::create_database(config.database.url()?)
                .await
                .context("cannot reach PostgreSQL to create the database (is it running?)")?;
            let host = bgagent_shared::telemetry::hostname();
            let engine = Engine::postgres_rabbitmq(
                &config.database,
                &config.broker,
                &format!("bgagent-dev@{host}"),
                args.worker.amqp_heartbeat_secs,
            )?;
            (engine, "PostgreSQL + RabbitMQ".to_owned())
        }
    };
    // Dev mode always brings its schema up to date, whatever BGAGENT_MIGRATE says.
    config.migrate = true;
    let api = Api::with_engine(&config, engine.clone())
        .await
        .context("cannot start the API")?;
    let mut workers = Vec::new();
    for n in 0..args.workers.max(1) {
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
        let id = worker_config
            .options
            .worker_id
            .clone()
            .map(|id| if n > 0 { format!("{id}-{n}") } else { id })
            .unwrap_or_else(default_worker_id);
        workers.push(
            Worker::with_engine(&worker_config, engine.clone(), id)
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
    println!("  engine: {described}");
    println!("  BGAGENT_URL=http://{shown_host}:{}", addr.port());
    if generated {
        println!("  BACKGROUND_AGENT_API_KEY={}", key.expose_secret());
    } else {
        println!("  BACKGROUND_AGENT_API_KEY=(the one you set)");
    }
    println!("  workers: {}", workers.len());
    println!(
        "  dashboard: http://{shown_host}:{}/ui (sign in with the API key)",
        addr.port()
    );
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
    engine.store.close().await;
    drop(engine);
    if args.ephemeral {
        match &choice {
            Choice::Embedded { data_dir } => {
                std::fs::remove_dir_all(data_dir).with_context(|| {
                    format!(
                        "cannot remove the ephemeral data dir {}",
                        data_dir.display()
                    )
                })?;
                println!("ephemeral run: data dir removed");
            }
            Choice::PostgresRabbitmq => {
                teardown(config.database.url()?, &config.broker)
                    .await
                    .context("cannot remove the ephemeral database and broker objects")?;
                println!("ephemeral run: database and broker objects removed");
            }
        }
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

/// Remove what an ephemeral run (or `bench --spawn`) created on PostgreSQL and RabbitMQ: its
/// database and its prefix's exchanges and queues.
pub async fn teardown(database_url: &str, broker: &BrokerConfig) -> anyhow::Result<()> {
    bgagent_shared::queue::rabbit::delete_objects(broker).await?;
    PgStore::drop_database(database_url).await?;
    Ok(())
}
