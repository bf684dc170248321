//! Test harness: service discovery, a per-test environment and an in-process API.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use bgagent_api::{Api, ApiConfig};
use bgagent_shared::config::{
    BrokerConfig, DEFAULT_TASKS_PER_MESSAGE, DatabaseConfig, LOCAL_AMQP_URL, LOCAL_DATABASE_URL,
};
use bgagent_shared::db;
use bgagent_shared::domain::{NewTask, Task, TaskStatus};
use bgagent_shared::engine::Engine;
use bgagent_shared::store::{TaskFilter, TaskStore};
use bgagent_worker::{Worker, WorkerConfig, WorkerOptions};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The API key every test API uses.
pub const TEST_KEY: &str = "test-key-0123456789abcdef";

/// Where the shared test services are.
pub struct Services {
    /// A PostgreSQL URL; tests replace its database name with their own.
    pub database_url: String,
    /// A RabbitMQ URL.
    pub amqp_url: String,
}

/// Find the services once per test binary.
pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let database_url =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| LOCAL_DATABASE_URL.to_owned());
        let amqp_url = std::env::var("AMQP_URL").unwrap_or_else(|_| LOCAL_AMQP_URL.to_owned());
        if reachable(&database_url) && reachable(&amqp_url) {
            return Services {
                database_url,
                amqp_url,
            };
        }
        if docker_available() {
            return containers::start();
        }
        panic!(
            "integration tests need PostgreSQL and RabbitMQ: none answered at DATABASE_URL \
             ({database_url}) / AMQP_URL and no Docker engine is available for testcontainers. \
             Start them (see README.md) or set DATABASE_URL and AMQP_URL."
        );
    })
}

fn reachable(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let host = parsed.host_str().unwrap_or("127.0.0.1");
    let port = parsed
        .port_or_known_default()
        .unwrap_or(match parsed.scheme() {
            "amqp" => 5672,
            _ => 5432,
        });
    let Ok(mut addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

fn docker_available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
}

mod containers {
    //! The testcontainers path, used where a Docker engine exists and no services are running.
    use super::Services;
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt};

    pub fn start() -> Services {
        let (tx, rx) = std::sync::mpsc::channel();
        // The containers live on a runtime of their own for the whole test binary: each test's
        // runtime ends with the test, and the containers must outlive all of them.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("container runtime");
            rt.block_on(async move {
                let pg = GenericImage::new("postgres", "16-alpine")
                    .with_exposed_port(5432.tcp())
                    .with_wait_for(WaitFor::message_on_stderr(
                        "database system is ready to accept connections",
                    ))
                    .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
                    .start()
                    .await
                    .expect("start postgres container");
                let mq = GenericImage::new("rabbitmq", "3.13-alpine")
                    .with_exposed_port(5672.tcp())
                    .with_wait_for(WaitFor::message_on_stdout("Server startup complete"))
                    .start()
                    .await
                    .expect("start rabbitmq container");
                let pg_port = pg.get_host_port_ipv4(5432).await.expect("postgres port");
                let mq_port = mq.get_host_port_ipv4(5672).await.expect("rabbitmq port");
                let _ = tx.send(Services {
                    database_url: format!("postgres://postgres@127.0.0.1:{pg_port}/postgres"),
                    amqp_url: format!("amqp://guest:guest@127.0.0.1:{mq_port}/%2f"),
                });
                std::future::pending::<()>().await;
            });
        });
        rx.recv()
            .expect("testcontainers did not start the services")
    }
}

/// The engines a test body can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// PostgreSQL and RabbitMQ: this test's own database and broker prefix.
    Postgres,
    /// A SQLite file in this test's own data dir and an in-process queue.
    Embedded,
}

/// Run one test body on both engines: `name::postgres` and `name::embedded`.
#[macro_export]
macro_rules! both_engines {
    ($(#[$meta:meta])* async fn $name:ident($env:ident: TestEnv) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($env: $crate::common::TestEnv) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                body($crate::common::TestEnv::new().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                body($crate::common::TestEnv::embedded().await).await
            }
        }
    };
}

/// One test's private storage, removed on drop: a database and broker prefix (PostgreSQL and
/// RabbitMQ), or a data dir (embedded).
pub struct TestEnv {
    pub kind: EngineKind,
    pub database_url: String,
    pub amqp_url: String,
    pub prefix: String,
    /// The rows, on either engine.
    pub store: Arc<dyn TaskStore>,
    pg: Option<PgPool>,
    /// The embedded engine, shared by this test's API and workers.
    embedded: Option<Engine>,
    data_dir: Option<PathBuf>,
}

impl TestEnv {
    /// A test environment on `kind`.
    pub async fn with(kind: EngineKind) -> Self {
        match kind {
            EngineKind::Postgres => Self::new().await,
            EngineKind::Embedded => Self::embedded().await,
        }
    }

    /// A fresh data dir with the embedded engine.
    pub async fn embedded() -> Self {
        // `services()` installs it on the other path; reqwest needs one either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let id = Uuid::new_v4().simple().to_string();
        let data_dir = std::env::temp_dir().join(format!("bgagent-test-{id}"));
        let engine = Engine::embedded(&data_dir)
            .await
            .expect("open the embedded engine");
        Self {
            kind: EngineKind::Embedded,
            database_url: String::new(),
            amqp_url: String::new(),
            prefix: format!("test-{}", &id[..12]),
            store: engine.store.clone(),
            pg: None,
            embedded: Some(engine),
            data_dir: Some(data_dir),
        }
    }

    /// The PostgreSQL pool of a PostgreSQL-only test.
    pub fn db(&self) -> &PgPool {
        self.pg
            .as_ref()
            .expect("this test needs PostgreSQL: build it with TestEnv::new()")
    }

    /// A fresh database and broker prefix on PostgreSQL and RabbitMQ.
    pub async fn new() -> Self {
        let services = services();
        let id = Uuid::new_v4().simple().to_string();
        let mut url = url::Url::parse(&services.database_url).expect("DATABASE_URL");
        url.set_path(&format!("bgagent_test_{id}"));
        let database_url = url.to_string();
        db::ensure_database(&database_url)
            .await
            .expect("create the test database");
        let pool = db::pool(&database_config(&database_url), "bgagent-test").expect("pool");
        db::migrate(&pool).await.expect("migrate");
        let store = bgagent_shared::store::postgres::PgStore::connect_lazy(
            &database_config(&database_url),
            "bgagent-test",
        )
        .expect("store");
        Self {
            kind: EngineKind::Postgres,
            pg: Some(pool),
            store: Arc::new(store),
            database_url,
            amqp_url: services.amqp_url.clone(),
            prefix: format!("test-{}", &id[..12]),
            embedded: None,
            data_dir: None,
        }
    }

    pub fn database_config(&self) -> DatabaseConfig {
        database_config(&self.database_url)
    }

    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            amqp_url: Some(self.amqp_url.clone().into()),
            broker_prefix: self.prefix.clone(),
            delivery_limit: 20,
            tasks_per_message: DEFAULT_TASKS_PER_MESSAGE,
        }
    }

    pub fn api_config(&self) -> ApiConfig {
        ApiConfig {
            database: self.database_config(),
            broker: self.broker_config(),
            egress: Default::default(),
            bind: "127.0.0.1:0".parse().unwrap(),
            api_key: Some(TEST_KEY.into()),
            api_key_file: None,
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 1024,
            shutdown_grace_secs: 5,
            migrate: false,
            enqueue_loops: 4,
            ui_session_ttl: Duration::from_secs(12 * 3600),
            ui_secure_cookie: false,
            max_event_streams: 1000,
        }
    }

    /// Worker options suited to tests: fast heartbeats, relay and retries, no metrics port.
    pub fn worker_options(&self) -> WorkerOptions {
        WorkerOptions {
            concurrency: 64,
            prefetch: 128,
            metrics_bind: None,
            shutdown_grace_secs: 5,
            lease_secs: 10,
            heartbeat_secs: 1,
            relay_interval_ms: 50,
            retry_base_ms: 100,
            retry_factor: 2.0,
            retry_max_secs: 5,
            ..WorkerOptions::default()
        }
    }

    pub async fn spawn_worker(&self, options: WorkerOptions) -> TestWorker {
        self.spawn_worker_with_egress(options, Default::default())
            .await
            .expect("build a worker")
    }

    /// A worker under egress policy `egress`; the build error when the settings are refused.
    pub async fn spawn_worker_with_egress(
        &self,
        options: WorkerOptions,
        egress: bgagent_shared::egress::EgressConfig,
    ) -> Result<TestWorker, bgagent_shared::Error> {
        let config = WorkerConfig {
            database: self.database_config(),
            broker: self.broker_config(),
            egress,
            options,
        };
        let worker = match &self.embedded {
            Some(engine) => {
                Worker::with_engine(&config, engine.clone(), bgagent_worker::default_worker_id())
                    .await?
            }
            None => Worker::build(&config).await?,
        };
        let id = worker.id().to_owned();
        let metrics_addr = worker.metrics_addr();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
        Ok(TestWorker {
            id,
            metrics_addr,
            shutdown,
            handle: Some(handle),
        })
    }

    /// Environment for a worker or API process of this test (PostgreSQL and RabbitMQ only:
    /// another process cannot share the embedded engine).
    pub fn process_env(&self) -> Vec<(&'static str, String)> {
        assert_eq!(
            self.kind,
            EngineKind::Postgres,
            "processes need PostgreSQL and RabbitMQ"
        );
        vec![
            ("DATABASE_URL", self.database_url.clone()),
            ("AMQP_URL", self.amqp_url.clone()),
            ("BGAGENT_BROKER_PREFIX", self.prefix.clone()),
            ("BGAGENT_METRICS_BIND", "off".into()),
            ("BGAGENT_HEARTBEAT_SECS", "1".into()),
            ("BGAGENT_RELAY_INTERVAL_MS", "50".into()),
            ("BGAGENT_RETRY_BASE_MS", "100".into()),
            ("BGAGENT_LEASE_SECS", "10".into()),
            ("BGAGENT_LOG_FORMAT", "json".into()),
            ("RUST_LOG", "warn".into()),
        ]
    }

    /// A `bgagent worker` process of this test, killed if the test ends without stopping it.
    pub fn spawn_worker_process(&self, extra: &[(&str, &str)]) -> ChildGuard {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bgagent"));
        cmd.arg("worker").envs(self.process_env());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        ChildGuard(
            cmd.stdin(std::process::Stdio::null())
                .spawn()
                .expect("start a worker process"),
        )
    }

    /// Insert queued tasks straight into the database, as the API would. `published` says whether
    /// they count as on the broker already; if not, the relay publishes them.
    pub async fn insert_tasks(
        &self,
        agent: &str,
        command: &str,
        meta: Value,
        count: usize,
        published: bool,
    ) -> Vec<Uuid> {
        let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
        if self.kind == EngineKind::Embedded {
            let tasks: Vec<NewTask> = ids
                .iter()
                .map(|id| NewTask {
                    id: *id,
                    agent: agent.to_owned(),
                    command: command.to_owned(),
                    meta: meta.clone(),
                    idempotency_key: None,
                    max_attempts: 5,
                    timeout_secs: 300,
                    delay_secs: 0,
                })
                .collect();
            for inserted in self.store.insert_tasks(&tasks).await {
                inserted.expect("insert tasks");
            }
            if published {
                self.store
                    .mark_published(&ids)
                    .await
                    .expect("mark published");
            }
            return ids;
        }
        sqlx::query(
            "insert into tasks (id, agent, command, meta, published_at)
             select id, $2, $3, $4, case when $5 then now() end from unnest($1::uuid[]) as t(id)",
        )
        .bind(&ids)
        .bind(agent)
        .bind(command)
        .bind(meta)
        .bind(published)
        .execute(self.db())
        .await
        .expect("insert tasks");
        ids
    }

    /// Play a consumer that crashes before acknowledging, again and again, until the broker stops
    /// redelivering the first task message (its delivery limit dead-letters it). Returns how many
    /// deliveries it saw.
    pub async fn nack_until_dead_lettered(&self) -> usize {
        let conn = self.amqp().await;
        let ch = conn.create_channel().await.expect("channel");
        let mut deliveries = 0;
        for _ in 0..100 {
            let got = ch
                .basic_get(
                    self.topology().tasks_queue().into(),
                    lapin::options::BasicGetOptions { no_ack: false },
                )
                .await
                .expect("basic.get");
            match got {
                Some(m) => {
                    deliveries += 1;
                    m.delivery
                        .acker
                        .nack(lapin::options::BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await
                        .expect("nack");
                }
                None if deliveries > 0 => break,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        conn.close(0, "done".into()).await.ok();
        deliveries
    }

    /// Poll a task until `done` holds for it, or panic after `timeout`.
    pub async fn wait_task(
        &self,
        id: Uuid,
        timeout: Duration,
        done: impl Fn(&Task) -> bool,
    ) -> Task {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let task = self
                .store
                .task(id)
                .await
                .expect("read task")
                .expect("task exists");
            if done(&task) {
                return task;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("task {id} did not reach the expected state in {timeout:?}: {task:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until no task is queued or running, or panic after `timeout`.
    pub async fn wait_all_terminal(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut open = 0;
            for status in [TaskStatus::Queued, TaskStatus::Running] {
                let filter = TaskFilter {
                    status: Some(status),
                    limit: 1000,
                    ..Default::default()
                };
                open += self.store.tasks(&filter).await.expect("count").len();
            }
            if open == 0 {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{open} tasks still queued or running after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An API of this test whose PostgreSQL is unreachable (nothing listens on port 1).
    pub async fn spawn_api_without_database(&self) -> TestApi {
        let mut config = self.api_config();
        config.database.database_url =
            Some("postgres://postgres@127.0.0.1:1/bgagent".to_owned().into());
        config.database.db_acquire_timeout_secs = 1;
        TestApi::spawn(config).await
    }

    pub async fn spawn_api(&self) -> TestApi {
        self.spawn_api_with(self.api_config()).await
    }

    /// An API of this test with `config` (on this test's engine).
    pub async fn spawn_api_with(&self, config: ApiConfig) -> TestApi {
        match &self.embedded {
            Some(engine) => TestApi::spawn_on(config, engine.clone()).await,
            None => TestApi::spawn(config).await,
        }
    }

    /// The queue this test's processes exchange task events on (to publish events directly).
    pub fn event_queue(&self) -> Arc<dyn bgagent_shared::queue::TaskQueue> {
        match &self.embedded {
            Some(engine) => engine.queue.clone(),
            None => Arc::new(
                bgagent_shared::queue::rabbit::RabbitQueue::new(
                    &self.broker_config(),
                    "bgagent-test/publish",
                    0,
                )
                .expect("queue"),
            ),
        }
    }

    pub async fn amqp(&self) -> lapin::Connection {
        bgagent_shared::queue::rabbit::connect(&self.amqp_url, "bgagent-test")
            .await
            .expect("connect to RabbitMQ")
    }

    /// An exclusive queue bound to this test's control exchange, to watch control messages.
    /// Keep the connection: the queue lives as long as it does.
    pub async fn control_listener(&self) -> (lapin::Connection, lapin::Channel, String) {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let conn = self.amqp().await;
        let ch = conn.create_channel().await.expect("channel");
        let options = QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .expect("declare a listener queue");
        ch.queue_bind(
            q.name().clone(),
            self.topology().control_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind it to the control exchange");
        let name = q.name().to_string();
        (conn, ch, name)
    }

    pub fn topology(&self) -> bgagent_shared::queue::rabbit::Topology {
        bgagent_shared::queue::rabbit::Topology::new(&self.prefix, 20)
    }
}

fn database_config(url: &str) -> DatabaseConfig {
    DatabaseConfig {
        database_url: Some(url.to_owned().into()),
        db_pool_size: 8,
        db_acquire_timeout_secs: 3,
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(dir) = self.data_dir.take() {
            // The files may still be open by API and worker tasks winding down; on Unix the
            // directory goes anyway.
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!("cleanup: cannot remove {}: {e}", dir.display());
            }
            return;
        }
        let database_url = self.database_url.clone();
        let amqp_url = self.amqp_url.clone();
        let topology = self.topology();
        let pool = self.db().clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: clean up on a thread
        // with a runtime of its own, and wait for it so nothing outlives the test.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                pool.close().await;
                if let Err(e) = db::drop_database(&database_url).await {
                    eprintln!("cleanup: cannot drop {database_url}: {e}");
                }
                if let Ok(conn) =
                    bgagent_shared::queue::rabbit::connect(&amqp_url, "bgagent-test-cleanup").await
                    && let Ok(ch) = conn.create_channel().await
                {
                    for q in topology.queues() {
                        let _ = ch
                            .queue_delete(q.into(), QueueDeleteOptions::default())
                            .await;
                    }
                    for x in topology.exchanges() {
                        let _ = ch
                            .exchange_delete(x.into(), ExchangeDeleteOptions::default())
                            .await;
                    }
                    let _ = conn.close(200, "bye".into()).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// An API served in-process on a free port, stopped on drop.
pub struct TestApi {
    pub base: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl TestApi {
    /// An API on PostgreSQL and RabbitMQ as `config` says.
    pub async fn spawn(config: ApiConfig) -> Self {
        let api = Api::build(&config).await.expect("build the API");
        Self::serve(api)
    }

    /// An API on `engine`.
    pub async fn spawn_on(config: ApiConfig, engine: Engine) -> Self {
        let api = Api::with_engine(&config, engine)
            .await
            .expect("build the API");
        Self::serve(api)
    }

    fn serve(api: Api) -> Self {
        let addr = api.local_addr().expect("bound address");
        let shutdown = CancellationToken::new();
        tokio::spawn(api.run_until_stopped(shutdown.clone()));
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            shutdown,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Send with the test key; returns status and JSON body (Null when the body is not JSON).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let res = req
            .header("x-api-key", TEST_KEY)
            .send()
            .await
            .expect("request");
        let status = res.status();
        let bytes = res.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The body of a GET without the key, as text (`/metrics`, `/health`).
    pub async fn text(&self, url: &str) -> String {
        self.http
            .get(url)
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body")
    }

    /// A public endpoint's JSON body, fetched without the key.
    pub async fn public_json(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON body")
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn enqueue(&self, body: &Value) -> Value {
        let (status, task) = self.post("/enqueue", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "enqueue failed: {task}");
        task
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Assert an error response: status, code and (for 422) field.
pub fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "unexpected status, body {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "unexpected body {}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without message: {}",
        got.1
    );
}

/// An in-process worker, stopped (cleanly) on drop or with [`TestWorker::stop`].
pub struct TestWorker {
    pub id: String,
    pub metrics_addr: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<(), bgagent_shared::Error>>>,
}

impl TestWorker {
    /// Stop and wait for the drain to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("worker task").expect("worker run");
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A child process killed on drop, so a failing test leaves no process behind.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        self.0.wait().expect("wait for the process")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
