//! The system under test as separate processes: one `bgagent api` and three `bgagent worker`
//! (ids w1..w3), each logging to its own file, killed on drop; or (scenario 12) one `bgagent dev`
//! on the embedded engine.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::services::tail;

/// One service process that can be started, killed and started again with the same settings.
pub struct Proc {
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
}

impl Proc {
    pub fn new(name: &str, args: &[&str], env: Vec<(String, String)>, log_dir: &Path) -> Self {
        Self {
            name: name.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        }
    }

    /// Start the process (appending to its log).
    pub fn start(&mut self) -> Result<()> {
        if self.running() {
            bail!("{} is already running", self.name);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_bgagent"))
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.name))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Whether the process is alive.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The OS pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                signal(child.id(), nix::sys::signal::Signal::SIGKILL)?;
            }
            child.wait()?;
        }
        Ok(())
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): the process freezes with its connections open.
    pub fn freeze(&mut self, frozen: bool) -> Result<()> {
        let sig = if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        match &self.child {
            Some(child) => signal(child.id(), sig),
            None => Ok(()),
        }
    }

    /// Send SIGTERM (the process drains and exits by itself).
    pub fn sigterm(&mut self) -> Result<()> {
        match &self.child {
            Some(child) => signal(child.id(), nix::sys::signal::Signal::SIGTERM),
            None => Ok(()),
        }
    }

    /// Wait for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            let Some(child) = &mut self.child else {
                bail!("{} is not running", self.name);
            };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if started.elapsed() > timeout {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The end of its log.
    pub fn tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(pid, sig).with_context(|| format!("{sig} to {pid}"))
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// One `bgagent dev` process on the embedded engine: the API and two worker loops (ids `e1`,
/// `e1-1`) on a SQLite file in `data_dir`, with an in-process queue. Its environment is cleared
/// first, so neither `DATABASE_URL` nor `AMQP_URL` reaches it; the workers' settings are those of
/// the fleet's workers. Logs to `<log_dir>/dev.log`; not started yet.
pub fn embedded_dev(data_dir: &Path, api_key: &str, api_port: u16, log_dir: &Path) -> Proc {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
        (
            "BGAGENT_DATA_DIR".to_owned(),
            data_dir.display().to_string(),
        ),
        ("BGAGENT_BIND".to_owned(), format!("127.0.0.1:{api_port}")),
        ("BACKGROUND_AGENT_API_KEY".to_owned(), api_key.to_owned()),
    ];
    env.extend(
        [
            ("BGAGENT_DEV_WORKERS", "2"),
            ("BGAGENT_WORKER_ID", "e1"),
            ("BGAGENT_LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
            ("BGAGENT_METRICS_BIND", "off"),
            ("BGAGENT_HEARTBEAT_SECS", "1"),
            ("BGAGENT_LEASE_SECS", "10"),
            ("BGAGENT_RELAY_INTERVAL_MS", "50"),
            ("BGAGENT_RETRY_BASE_MS", "100"),
            ("BGAGENT_CONCURRENCY", "32"),
            ("BGAGENT_PREFETCH", "64"),
            ("BGAGENT_SHUTDOWN_GRACE_SECS", "10"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    if let Ok(per_message) = std::env::var("BGAGENT_TASKS_PER_MESSAGE") {
        env.push(("BGAGENT_TASKS_PER_MESSAGE".to_owned(), per_message));
    }
    Proc::new("dev", &["dev"], env, log_dir)
}

/// Settings shared by the API and the workers of one scenario.
pub struct FleetConfig<'a> {
    pub database_url: String,
    pub amqp_url: String,
    pub prefix: String,
    pub api_key: String,
    pub api_port: u16,
    pub log_dir: &'a Path,
}

/// The API and the workers of one scenario.
pub struct Fleet {
    pub api: Proc,
    pub workers: Vec<Proc>,
    pub api_url: String,
}

/// Worker ids, as `BGAGENT_WORKER_ID`.
pub const WORKER_IDS: [&str; 3] = ["w1", "w2", "w3"];

impl Fleet {
    /// Start the API and the three workers.
    pub fn start(config: &FleetConfig<'_>) -> Result<Self> {
        let common = vec![
            ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
            ("DATABASE_URL".to_owned(), config.database_url.clone()),
            ("AMQP_URL".to_owned(), config.amqp_url.clone()),
            ("BGAGENT_BROKER_PREFIX".to_owned(), config.prefix.clone()),
            ("BGAGENT_LOG_FORMAT".to_owned(), "json".to_owned()),
            ("RUST_LOG".to_owned(), "info".to_owned()),
            ("BGAGENT_DB_POOL_SIZE".to_owned(), "10".to_owned()),
        ];
        let mut api_env = common.clone();
        api_env.extend([
            (
                "BACKGROUND_AGENT_API_KEY".to_owned(),
                config.api_key.clone(),
            ),
            (
                "BGAGENT_BIND".to_owned(),
                format!("127.0.0.1:{}", config.api_port),
            ),
            ("BGAGENT_MIGRATE".to_owned(), "false".to_owned()),
        ]);
        // The suite can run with several tasks per message: `BGAGENT_TASKS_PER_MESSAGE=16 scripts/faults`.
        if let Ok(per_message) = std::env::var("BGAGENT_TASKS_PER_MESSAGE") {
            api_env.push(("BGAGENT_TASKS_PER_MESSAGE".to_owned(), per_message));
        }
        let mut api = Proc::new("api", &["api"], api_env, config.log_dir);
        api.start()?;
        let mut workers = Vec::new();
        for id in WORKER_IDS {
            let mut env = common.clone();
            env.extend(
                [
                    ("BGAGENT_WORKER_ID", id),
                    ("BGAGENT_METRICS_BIND", "off"),
                    ("BGAGENT_HEARTBEAT_SECS", "1"),
                    ("BGAGENT_LEASE_SECS", "10"),
                    ("BGAGENT_RELAY_INTERVAL_MS", "50"),
                    ("BGAGENT_RETRY_BASE_MS", "100"),
                    ("BGAGENT_CONCURRENCY", "32"),
                    ("BGAGENT_PREFETCH", "64"),
                    ("BGAGENT_SHUTDOWN_GRACE_SECS", "10"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
            );
            let mut worker = Proc::new(id, &["worker"], env, config.log_dir);
            worker.start()?;
            workers.push(worker);
        }
        Ok(Self {
            api,
            workers,
            api_url: format!("http://127.0.0.1:{}", config.api_port),
        })
    }

    /// The worker with this id.
    pub fn worker(&mut self, id: &str) -> Option<&mut Proc> {
        self.workers.iter_mut().find(|w| w.name == id)
    }

    /// Log tails of every process.
    pub fn tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in std::iter::once(&self.api).chain(&self.workers) {
            out.push_str(&format!(
                "----- {} ({}) -----\n{}\n",
                p.name,
                p.log.display(),
                p.tail(lines)
            ));
        }
        out
    }

    /// SIGTERM everything and wait (then SIGKILL whatever is left).
    pub async fn stop(&mut self) {
        for p in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.api))
        {
            if p.running() {
                let _ = p.sigterm();
            }
        }
        for p in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.api))
        {
            if p.running() && p.wait_exit(Duration::from_secs(20)).await.is_err() {
                let _ = p.kill9();
            }
        }
    }
}
