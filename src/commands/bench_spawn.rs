//! `bgagent bench --spawn`: the API and workers as separate processes on a fresh database and
//! broker prefix, or (`--embedded`) one `bgagent dev` process on a fresh data dir, so one command
//! measures a clean setup, and removes everything afterwards.

use anyhow::{Context, bail};
use bgagent_shared::config::{
    BrokerConfig, DEFAULT_TASKS_PER_MESSAGE, LOCAL_AMQP_URL, LOCAL_DATABASE_URL,
};
use bgagent_shared::store::TaskStore;
use bgagent_shared::store::postgres::PgStore;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running API and workers started by the bench.
pub struct SpawnedSystem {
    /// API base URL.
    pub url: String,
    /// Its API key.
    pub api_key: String,
    storage: Storage,
    api: Child,
    workers: Vec<Child>,
}

/// What a spawned system stores, and where, to remove it afterwards.
enum Storage {
    Services {
        database_url: String,
        broker: BrokerConfig,
    },
    Embedded {
        data_dir: PathBuf,
    },
}

impl SpawnedSystem {
    /// One `bgagent dev` process on the embedded engine, with `workers` worker loops, on a fresh
    /// data dir; wait until it is ready.
    pub async fn start_embedded(workers: usize) -> anyhow::Result<Self> {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let data_dir = std::env::temp_dir().join(format!("bgagent-bench-{suffix}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let api_key = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let exe = std::env::current_exe().context("cannot find the bgagent executable")?;
        let dev = Command::new(&exe)
            .arg("dev")
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .env("BGAGENT_DATA_DIR", &data_dir)
            .env("BGAGENT_BIND", format!("127.0.0.1:{port}"))
            .env("BACKGROUND_AGENT_API_KEY", &api_key)
            .env("BGAGENT_DEV_WORKERS", workers.max(1).to_string())
            .env("BGAGENT_METRICS_BIND", "off")
            .env("BGAGENT_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start bgagent dev")?;
        let mut system = Self {
            url: format!("http://127.0.0.1:{port}"),
            api_key,
            storage: Storage::Embedded { data_dir },
            api: dev,
            workers: Vec::new(),
        };
        if let Err(e) = system.wait_ready().await {
            system.stop().await?;
            return Err(e);
        }
        Ok(system)
    }

    /// Create the database, start the processes and wait until the API is ready.
    pub async fn start(workers: usize) -> anyhow::Result<Self> {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| LOCAL_DATABASE_URL.into());
        let mut database_url = url::Url::parse(&base).context("DATABASE_URL")?;
        database_url.set_path(&format!("bgagent_bench_{suffix}"));
        let database_url = database_url.to_string();
        let amqp_url = std::env::var("AMQP_URL").unwrap_or_else(|_| LOCAL_AMQP_URL.into());
        let prefix = format!("bench-{suffix}");
        PgStore::create_database(&database_url).await?;
        let store = PgStore::connect_lazy(
            &bgagent_shared::config::DatabaseConfig {
                database_url: Some(database_url.clone().into()),
                db_pool_size: 1,
                db_acquire_timeout_secs: 5,
            },
            "bgagent-bench",
        )?;
        store.migrate().await?;
        store.close().await;

        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let api_key = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let exe = std::env::current_exe().context("cannot find the bgagent executable")?;
        let common = [
            ("DATABASE_URL", database_url.clone()),
            ("AMQP_URL", amqp_url.clone()),
            ("BGAGENT_BROKER_PREFIX", prefix.clone()),
            ("BGAGENT_MIGRATE", "false".into()),
            ("BGAGENT_LOG_FORMAT", "json".into()),
            (
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ];
        let spawn = |role: &str, extra: Vec<(&str, String)>| {
            Command::new(&exe)
                .arg(role)
                .envs(common.iter().map(|(k, v)| (*k, v.as_str())))
                .envs(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start bgagent {role}"))
        };
        let api = spawn(
            "api",
            vec![
                ("BGAGENT_BIND", format!("127.0.0.1:{port}")),
                ("BACKGROUND_AGENT_API_KEY", api_key.clone()),
            ],
        )?;
        let mut system = Self {
            url: format!("http://127.0.0.1:{port}"),
            api_key,
            storage: Storage::Services {
                database_url,
                broker: BrokerConfig {
                    amqp_url: Some(amqp_url.into()),
                    broker_prefix: prefix,
                    delivery_limit: 20,
                    tasks_per_message: DEFAULT_TASKS_PER_MESSAGE,
                },
            },
            api,
            workers: Vec::new(),
        };
        for n in 0..workers.max(1) {
            let worker = spawn(
                "worker",
                vec![
                    ("BGAGENT_METRICS_BIND", "off".into()),
                    ("BGAGENT_WORKER_ID", format!("bench-{suffix}-{n}")),
                ],
            );
            match worker {
                Ok(child) => system.workers.push(child),
                Err(e) => {
                    system.stop().await?;
                    return Err(e);
                }
            }
        }
        if let Err(e) = system.wait_ready().await {
            system.stop().await?;
            return Err(e);
        }
        Ok(system)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = bgagent_client::Client::builder()
            .base_url(&self.url)
            .retry(bgagent_client::RetryPolicy::none())
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.api.try_wait() {
                bail!("the API exited during start: {status}");
            }
            if client.ready().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the API did not become ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The PostgreSQL database of a system on the services (None on the embedded engine).
    pub fn database_url(&self) -> Option<&str> {
        match &self.storage {
            Storage::Services { database_url, .. } => Some(database_url),
            Storage::Embedded { .. } => None,
        }
    }

    /// Peak resident memory of the API process.
    pub fn api_peak_rss_mib(&self) -> Option<f64> {
        peak_rss_mib(self.api.id())
    }

    /// Largest peak resident memory among the worker processes.
    pub fn worker_peak_rss_mib(&self) -> Option<f64> {
        self.workers
            .iter()
            .filter_map(|w| peak_rss_mib(w.id()))
            .reduce(f64::max)
    }

    /// SIGTERM every process, wait for them, and remove what they stored.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for child in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.api))
        {
            terminate(child);
        }
        match &self.storage {
            Storage::Services {
                database_url,
                broker,
            } => super::dev::teardown(database_url, broker).await,
            Storage::Embedded { data_dir } => std::fs::remove_dir_all(data_dir)
                .with_context(|| format!("cannot remove {}", data_dir.display())),
        }
    }
}

impl Drop for SpawnedSystem {
    /// On an early exit (error or panic) no process outlives the bench.
    fn drop(&mut self) {
        for child in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.api))
        {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn terminate(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = child.wait();
}

/// `VmHWM` (peak resident set) of a process, in MiB (Linux).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Largest peak RSS among running processes whose command line contains one of `patterns`.
pub fn peak_rss_of(patterns: &[&str]) -> Option<f64> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
                patterns.iter().any(|p| cmdline.contains(p))
            })
        })
        .filter_map(peak_rss_mib)
        .reduce(f64::max)
}
