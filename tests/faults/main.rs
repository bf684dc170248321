//! The fault suite: the real `bgagent api` and three `bgagent worker` processes against the
//! suite's own PostgreSQL and RabbitMQ, a recording test agent, load over HTTP, and faults —
//! SIGKILLed workers, broker stops and kills, a database restart, an enqueue burst while the broker
//! is down, cancels, SIGTERM drains, a poison task, concurrent duplicate keys; and one `bgagent dev`
//! on the embedded engine, SIGKILLed under load. After each scenario an invariant checker compares
//! accepted ids, final rows and the agent's receipts.
//!
//! Run it with `scripts/faults` (or `cargo test --test faults`); it is not part of
//! `cargo nextest run --workspace`. `BGAGENT_FAULTS_ONLY=s1,s7` runs some scenarios only;
//! `BGAGENT_FAULTS_KEEP=1` keeps the temporary directory (data, logs). See docs/FAULTS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
mod check;
mod fleet;
mod load;
mod scenarios;
mod services;

use anyhow::{Context, Result};
use bgagent_shared::config::DatabaseConfig;
use bgagent_shared::db;
use serde_json::json;
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::Recorder;
use check::Row;
use fleet::{Fleet, FleetConfig};
use load::Client;
use services::{Postgres, Rabbit};

/// The whole suite must end within this (the brief: 10 minutes on 2 cores).
const SUITE_BUDGET: Duration = Duration::from_secs(570);
/// One scenario may take this long; past it the scenario fails and the next one starts.
const SCENARIO_BUDGET: Duration = Duration::from_secs(150);

/// A temporary directory removed on drop (unless `BGAGENT_FAULTS_KEEP` is set).
pub struct TempRoot(PathBuf);

impl TempRoot {
    fn new() -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!(
            "bgagent-faults-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path)?;
        // The database server runs as `postgres` when we are root and must reach its directory.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        if std::env::var_os("BGAGENT_FAULTS_KEEP").is_some() {
            eprintln!("faults: kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Services shared by every scenario. Fields drop in order: servers first, the directory last.
pub struct Suite {
    pub pg: Postgres,
    pub mq: Rabbit,
    pub agent: Recorder,
    pub api_key: String,
    /// Log directory of the scenario running now (for log tails when it hangs).
    pub current_logs: std::sync::Mutex<Option<PathBuf>>,
    pub root: TempRoot,
}

/// One scenario's database, processes and client.
pub struct Env {
    pub db: PgPool,
    pub fleet: Arc<tokio::sync::Mutex<Fleet>>,
    pub client: Client,
}

impl Suite {
    async fn start() -> Result<Self> {
        let root = TempRoot::new()?;
        let t = Instant::now();
        let pg = Postgres::start(root.path()).context("start PostgreSQL")?;
        println!(
            "faults: PostgreSQL on 127.0.0.1:{} ({:.1} s)",
            pg.port,
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let mut mq = Rabbit::start(root.path()).context("start RabbitMQ")?;
        mq.wait_ready(Duration::from_secs(90)).await?;
        println!(
            "faults: RabbitMQ node {} on 127.0.0.1:{} ({:.1} s)",
            mq.node,
            mq.port,
            t.elapsed().as_secs_f64()
        );
        let agent = Recorder::start().await?;
        Ok(Self {
            pg,
            mq,
            agent,
            api_key: format!("faults-{:016x}", rand::random::<u64>()),
            current_logs: std::sync::Mutex::new(None),
            root,
        })
    }

    /// A fresh database and broker prefix, the API and three workers, the agent registered.
    pub async fn env(&self, slug: &str) -> Result<Env> {
        let database_url = self.pg.url(&format!("faults_{slug}"));
        db::ensure_database(&database_url).await?;
        let pool = db::pool(
            &DatabaseConfig {
                database_url: Some(database_url.clone().into()),
                db_pool_size: 8,
                db_acquire_timeout_secs: 10,
            },
            "bgagent-faults",
        )?;
        db::migrate(&pool).await?;
        let log_dir = self.root.path().join(slug);
        std::fs::create_dir_all(&log_dir)?;
        *self.current_logs.lock().unwrap() = Some(log_dir.clone());
        let api_port = services::spare_ports(1)?[0];
        let fleet = Fleet::start(&FleetConfig {
            database_url,
            amqp_url: self.mq.url(),
            prefix: format!("faults-{slug}"),
            api_key: self.api_key.clone(),
            api_port,
            log_dir: &log_dir,
        })?;
        let client = Client::new(&fleet.api_url, &self.api_key)?;
        let fleet = Arc::new(tokio::sync::Mutex::new(fleet));
        let env = Env {
            db: pool,
            fleet,
            client,
        };
        let ready = async {
            loop {
                if let Ok((status, _)) = env.client.get("/health").await
                    && status.is_success()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (status, body) = env
                .client
                .post(
                    "/agents/register",
                    &json!({"name": "recorder", "endpoint": self.agent.url}),
                )
                .await?;
            anyhow::ensure!(status.is_success(), "register the agent: {status} {body}");
            loop {
                let live: i64 = sqlx::query_scalar(
                    "select count(*) from workers
                     where stopped_at is null and last_seen > now() - interval '5 seconds'",
                )
                .fetch_one(&env.db)
                .await?;
                if live == 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, anyhow::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(60), ready).await {
            Ok(Ok(())) => Ok(env),
            Ok(Err(e)) => Err(e.context(env.fleet.lock().await.tails(20))),
            Err(_) => Err(anyhow::anyhow!(
                "API and workers not ready in 60 s\n{}",
                env.fleet.lock().await.tails(20)
            )),
        }
    }
}

type ScenarioFn =
    for<'a> fn(
        &'a mut Suite,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Row>> + 'a>>;

/// Resolves on SIGTERM (never, if the handler cannot be installed).
async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// Tails of the logs of the scenario running now.
fn print_current_logs(suite: &Suite) {
    let Some(dir) = suite.current_logs.lock().unwrap().clone() else {
        return;
    };
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    for log in logs {
        println!(
            "----- {} -----\n{}",
            log.display(),
            services::tail(&log, 25)
        );
    }
}

/// Print a progress line: seconds since `t0` and what happens.
pub fn step(t0: Instant, what: &str) {
    println!("faults: [{:6.1} s] {what}", t0.elapsed().as_secs_f64());
}

/// Whether `BGAGENT_FAULTS_ONLY`'s entry `wanted` names the scenario `slug`: `s2` selects `s2a-…`
/// and `s2b-…`, `s1` selects `s1-…` but not `s10-…`, `s12`, `s12-embedded-kill`.
fn selects(wanted: &str, slug: &str) -> bool {
    slug.strip_prefix(wanted)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run());
    runtime.shutdown_timeout(Duration::from_secs(5));
    code
}

async fn run() -> ExitCode {
    let started = Instant::now();
    let only: Option<Vec<String>> = std::env::var("BGAGENT_FAULTS_ONLY")
        .ok()
        .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect());
    let all: Vec<(&str, ScenarioFn)> = scenarios::all();
    let selected: Vec<(&str, ScenarioFn)> = all
        .into_iter()
        .filter(|(slug, _)| {
            only.as_ref()
                .is_none_or(|o| o.iter().any(|s| selects(s, slug)))
        })
        .collect();

    let mut suite = match Suite::start().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("faults: FAILED to start the suite's services: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut aborted: Option<String> = None;
    {
        let work = async {
            for (slug, scenario) in &selected {
                println!("\nfaults: ===== scenario {slug} =====");
                let t = Instant::now();
                let outcome = tokio::time::timeout(SCENARIO_BUDGET, scenario(&mut suite)).await;
                let row = match outcome {
                    Ok(Ok(mut row)) => {
                        row.took = t.elapsed();
                        row
                    }
                    Ok(Err(e)) => {
                        let mut row = Row {
                            name: (*slug).to_owned(),
                            took: t.elapsed(),
                            ..Row::default()
                        };
                        row.fail(format!("scenario error: {e:#}"));
                        print_current_logs(&suite);
                        row
                    }
                    Err(_) => {
                        let mut row = Row {
                            name: (*slug).to_owned(),
                            took: t.elapsed(),
                            ..Row::default()
                        };
                        row.fail(format!(
                            "scenario did not finish within {SCENARIO_BUDGET:?}"
                        ));
                        print_current_logs(&suite);
                        row
                    }
                };
                // A scenario that failed half-way may have left the broker stopped.
                if let Err(e) = suite.mq.ensure_running().await {
                    println!("faults: cannot restart RabbitMQ: {e:#}");
                }
                println!("{}", check::text_table(std::slice::from_ref(&row)));
                for n in &row.notes {
                    println!("  note: {n}");
                }
                for f in &row.failures {
                    println!("  FAILED: {f}");
                }
                rows.push(row);
            }
        };
        tokio::select! {
            () = work => {}
            () = tokio::time::sleep(SUITE_BUDGET) => {
                aborted = Some(format!("the suite ran past its budget of {SUITE_BUDGET:?}"));
            }
            _ = tokio::signal::ctrl_c() => aborted = Some("interrupted".into()),
            () = sigterm() => aborted = Some("terminated (SIGTERM)".into()),
        }
        if aborted.is_some() {
            print_current_logs(&suite);
        }
    }
    let took = started.elapsed();
    println!(
        "\n===== fault suite: {} scenarios in {:.0} s =====\n",
        rows.len(),
        took.as_secs_f64()
    );
    println!("{}", check::text_table(&rows));
    println!("Markdown:\n\n{}", check::markdown_table(&rows));
    let mut failed = false;
    for row in &rows {
        for f in &row.failures {
            failed = true;
            println!("FAILED {}: {f}", row.name);
        }
    }
    for row in &rows {
        for n in &row.notes {
            println!("note {}: {n}", row.name);
        }
    }
    if let Some(why) = aborted {
        failed = true;
        println!("FAILED: {why}");
    }
    drop(suite);
    let passed = rows.iter().filter(|r| r.failures.is_empty()).count();
    println!("\nfaults: {passed} passed, {} failed", rows.len() - passed);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
