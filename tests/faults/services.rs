//! The suite's own PostgreSQL and RabbitMQ: fresh data directories under the suite's temporary
//! directory, spare loopback ports, started from the installed server programs, so the suite may
//! restart and kill them without touching the machine's services (5432, 5672). Both are stopped
//! by `Drop`, also when a scenario panics.

use anyhow::{Context, Result, bail};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `n` distinct free loopback ports (all listeners are held until every port is picked).
pub fn spare_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("bind a spare port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// Whether the effective user is root (`Uid:` in /proc/self/status: real, effective, ...).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, text.trim());
    }
    Ok(text)
}

/// Last `n` lines of a file (empty when unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// A private PostgreSQL server (initdb into a fresh directory, trust auth, fsync on).
pub struct Postgres {
    bindir: PathBuf,
    /// Owned by the server's user: data directory, socket and log live here.
    home: PathBuf,
    data: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    running: bool,
}

fn pg_bindir() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL server programs (pg_config --bindir, /usr/lib/postgresql/*/bin)")
}

impl Postgres {
    /// initdb and start a server under `root`.
    pub fn start(root: &Path) -> Result<Self> {
        let bindir = pg_bindir()?;
        let home = root.join("pg");
        std::fs::create_dir_all(&home)?;
        if is_root() {
            // initdb and pg_ctl refuse to run as root: the server runs as `postgres`.
            run(
                Command::new("chown").arg("postgres").arg(&home),
                "chown the PostgreSQL directory to `postgres` (needed when running as root)",
            )?;
        }
        let [port] = spare_ports(1)?[..] else {
            unreachable!()
        };
        let pg = Self {
            data: home.join("data"),
            log: home.join("server.log"),
            bindir,
            home,
            port,
            running: false,
        };
        run(
            pg.command("initdb").args([
                "-D",
                pg.data.to_str().context("path")?,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]),
            "initdb",
        )?;
        let mut pg = pg;
        pg.ctl_start()?;
        Ok(pg)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.current_dir(&self.home);
        cmd
    }

    fn server_options(&self) -> String {
        format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on \
             -c synchronous_commit=on -c max_connections=300",
            self.port,
            self.home.display()
        )
    }

    fn ctl_start(&mut self) -> Result<()> {
        self.ctl_with_server_options(&["start"], "pg_ctl start")?;
        self.running = true;
        Ok(())
    }

    /// `pg_ctl restart -m fast`: every connection is cut, the server comes back on the same data.
    pub fn restart_fast(&mut self) -> Result<()> {
        self.ctl_with_server_options(&["-m", "fast", "restart"], "pg_ctl restart")?;
        Ok(())
    }

    /// `pg_ctl` on this data directory and log, waiting up to 60 s, with our server options.
    fn ctl_with_server_options(&self, action: &[&str], what: &str) -> Result<String> {
        let opts = self.server_options();
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "-o", &opts])
                .args(action),
            what,
        )
    }

    /// SIGSTOP (`freeze`) or SIGCONT the server: the postmaster and every process it started,
    /// so connections stay open but nothing answers, as in a stalled disk or a paused VM.
    pub fn signal_all(&self, sig: nix::sys::signal::Signal) -> Result<usize> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .context("read postmaster.pid")?;
        let postmaster: i32 = pid_file
            .lines()
            .next()
            .context("empty postmaster.pid")?
            .trim()
            .parse()?;
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the parenthesised command name: state, then the parent's pid.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        for pid in &pids {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), sig)
                .with_context(|| format!("{sig} to PostgreSQL process {pid}"))?;
        }
        Ok(pids.len())
    }

    /// URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let data = self.data.clone();
        if let Err(e) = run(
            self.command("pg_ctl").arg("-D").arg(&data).args([
                "-w",
                "-t",
                "30",
                "-m",
                "immediate",
                "stop",
            ]),
            "pg_ctl stop",
        ) {
            eprintln!("faults: {e:#}");
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------------------------

/// A private RabbitMQ node, run as a child process (`rabbitmq-server` in the foreground).
pub struct Rabbit {
    pub node: String,
    pub port: u16,
    dir: PathBuf,
    pid_file: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// epmd was not running before the node started one; stop it at the end.
    started_epmd: bool,
    starts: u32,
}

const EPMD_PORT: u16 = 4369;

fn rabbit_program(name: &str) -> PathBuf {
    // Debian's /usr/sbin wrappers switch to the `rabbitmq` user and its data directory; the
    // scripts behind them run the node with our environment as is.
    let direct = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if direct.exists() {
        direct
    } else {
        PathBuf::from(name)
    }
}

impl Rabbit {
    /// Prepare a fresh node under `root` and start it.
    pub fn start(root: &Path) -> Result<Self> {
        let dir = root.join("rabbitmq");
        std::fs::create_dir_all(&dir)?;
        let ports = spare_ports(2)?;
        let (port, dist_port) = (ports[0], ports[1]);
        let node = format!("bgagent-faults-{}@localhost", std::process::id());
        let plugins = dir.join("enabled_plugins");
        std::fs::write(&plugins, "[].\n")?;
        let config = dir.join("rabbitmq.conf");
        std::fs::write(
            &config,
            format!("listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\n"),
        )?;
        // An empty env file, so /etc/rabbitmq/rabbitmq-env.conf (node name, ports) is not read.
        let env_file = dir.join("rabbitmq-env.conf");
        std::fs::write(&env_file, "")?;
        let pid_file = dir.join("node.pid");
        let path = |p: &Path| p.display().to_string();
        let env = vec![
            // Our own Erlang cookie (written by the first start) for the node and rabbitmqctl.
            ("HOME".into(), path(&dir)),
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("RABBITMQ_NODENAME".into(), node.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT".into(), port.to_string()),
            ("RABBITMQ_DIST_PORT".into(), dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE".into(), path(&dir.join("mnesia"))),
            ("RABBITMQ_LOG_BASE".into(), path(&dir.join("log"))),
            ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), path(&plugins)),
            ("RABBITMQ_CONFIG_FILE".into(), path(&config)),
            ("RABBITMQ_CONF_ENV_FILE".into(), path(&env_file)),
            ("RABBITMQ_PID_FILE".into(), path(&pid_file)),
            ("ERL_EPMD_ADDRESS".into(), "127.0.0.1".into()),
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS".into(),
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
        ];
        let mut rabbit = Self {
            node,
            port,
            log: dir.join("server.out"),
            dir,
            pid_file,
            env,
            child: None,
            started_epmd: !port_open(EPMD_PORT),
            starts: 0,
        };
        rabbit.spawn()?;
        Ok(rabbit)
    }

    /// AMQP URL of this node.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Start the node (on the same data directory after a stop or a kill); returns once it
    /// accepts AMQP connections.
    pub fn spawn(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.pid_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(rabbit_program("rabbitmq-server"))
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start rabbitmq-server")?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Wait until the node accepts AMQP connections (a real AMQP handshake, not just TCP).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "rabbitmq-server exited ({status}) during start; log:\n{}",
                    tail(&self.log, 30)
                );
            }
            if port_open(self.port)
                && let Ok(conn) =
                    bgagent_shared::queue::rabbit::connect(&self.url(), "bgagent-faults-probe")
                        .await
            {
                let _ = conn.close(200, "probe".into()).await;
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!(
                    "RabbitMQ not ready after {timeout:?}; log:\n{}",
                    tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Run `rabbitmqctl -n <node> -t 60 <args>`.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(rabbit_program("rabbitmqctl"));
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .args(["-n", &self.node, "-t", "60"])
            .args(args);
        tokio::task::block_in_place(|| run(&mut cmd, "rabbitmqctl"))
    }

    /// Start the node again if it is not running (after a scenario that failed half-way).
    pub async fn ensure_running(&mut self) -> Result<()> {
        let alive = match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        };
        if !alive {
            self.child = None;
            self.spawn()?;
        }
        self.wait_ready(Duration::from_secs(90)).await.map(|_| ())
    }

    /// The node's OS pid (the Erlang VM, not the wrapper script).
    fn os_pid(&self) -> Result<i32> {
        if let Ok(text) = std::fs::read_to_string(&self.pid_file)
            && let Ok(pid) = text.trim().parse()
        {
            return Ok(pid);
        }
        let out = self.ctl(&["eval", "os:getpid()."])?;
        out.trim()
            .trim_matches('"')
            .parse()
            .context("parse os:getpid()")
    }

    async fn wait_child_exit(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        while let Some(child) = &mut self.child {
            if child.try_wait()?.is_some() {
                self.child = None;
                break;
            }
            if started.elapsed() > timeout {
                bail!("rabbitmq-server did not exit within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Clean stop: `rabbitmqctl stop`, then wait for the process to exit.
    pub async fn stop_clean(&mut self) -> Result<()> {
        let pid = self.os_pid().ok();
        self.ctl(&["stop"])?;
        self.wait_child_exit(Duration::from_secs(60)).await?;
        if let Some(pid) = pid {
            wait_pid_gone(pid, Duration::from_secs(10)).await;
        }
        Ok(())
    }

    /// Delete the stopped node's data directory (every queue, message and definition): the next
    /// start is a broker that lost its disk.
    pub fn wipe_data(&mut self) -> Result<()> {
        anyhow::ensure!(self.child.is_none(), "wipe the data of a running broker");
        let mnesia = self.dir.join("mnesia");
        if mnesia.exists() {
            std::fs::remove_dir_all(&mnesia).context("delete the broker's data directory")?;
        }
        Ok(())
    }

    /// Hard kill: SIGKILL of the Erlang VM (kill -9 of the broker).
    pub async fn kill9(&mut self) -> Result<()> {
        let pid = self.os_pid()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .context("SIGKILL the broker")?;
        wait_pid_gone(pid, Duration::from_secs(10)).await;
        self.wait_child_exit(Duration::from_secs(30)).await
    }
}

async fn wait_pid_gone(pid: i32, timeout: Duration) {
    let started = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && started.elapsed() < timeout {
        // A zombie still has /proc/<pid>; its status says so.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split_whitespace().nth(2) == Some("Z") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Ok(pid) = self.os_pid() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.started_epmd {
            // The node started epmd as a daemon; nothing else used it before us.
            let _ = Command::new("epmd")
                .arg("-kill")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
