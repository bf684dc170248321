//! Typed async client for the Background Agent HTTP API.
//!
//! One method per endpoint, the API's own request and answer types (from `bgagent-types`, which
//! carries no server dependencies), one [`Error`] type that carries the API's error `code`,
//! `message` and `field` with the HTTP status, and:
//!
//! - **Retries** with exponential backoff and jitter ([`RetryPolicy`]): on connection failures
//!   (nothing was sent, so every call retries them) and, for idempotent calls, on 408 and 503
//!   answers (503 `outcome_unknown` included).
//!   Idempotent calls are the GETs, `stop`, `start`, `register_agent`, and `enqueue`, because
//!   [`Client::enqueue`] sends an idempotency key on every call (a fresh UUID unless the request
//!   has one), so a retried enqueue returns the task the first try created instead of a duplicate.
//! - **Waiting** for a task: [`Client::wait`] polls until the task is succeeded, failed or
//!   cancelled, or fails with [`Error::WaitTimeout`].
//!
//! # Example
//!
//! ```no_run
//! use bgagent_client::{Client, EnqueueRequest, TaskStatus};
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), bgagent_client::Error> {
//! let client = Client::new("http://127.0.0.1:8080", "my-api-key")?;
//! let enqueued = client
//!     .enqueue(EnqueueRequest {
//!         agent: "echo".into(),
//!         command: "say hi".into(),
//!         meta: Some(serde_json::json!({"n": 1})),
//!         ..Default::default()
//!     })
//!     .await?;
//! let task = client.wait(enqueued.task.id, Duration::from_secs(30)).await?;
//! assert_eq!(task.status, TaskStatus::Succeeded);
//! println!("result: {:?}", task.result);
//!
//! // Errors carry the API's code and status.
//! match client.get_task(uuid::Uuid::nil()).await {
//!     Err(e) if e.is_not_found() => println!("no such task: {e}"),
//!     other => println!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The builder tunes timeouts and retries:
//!
//! ```no_run
//! use bgagent_client::{Client, RetryPolicy};
//! use std::time::Duration;
//!
//! # fn demo() -> Result<(), bgagent_client::Error> {
//! let client = Client::builder()
//!     .base_url("http://127.0.0.1:8080")
//!     .api_key("my-api-key")
//!     .timeout(Duration::from_secs(10))
//!     .retry(RetryPolicy {
//!         max_retries: 5,
//!         initial_backoff: Duration::from_millis(100),
//!         max_backoff: Duration::from_secs(2),
//!     })
//!     .build()?;
//! # Ok(())
//! # }
//! ```

mod error;
mod types;

pub use bgagent_types::{
    Agent, Attempt, AttemptPage, EnqueueRequest, Health, PausedState, RetryAllRequest,
    RetryAllResult, RetryableStatus, Task, TaskPage, TaskStatus, Unregistered, WorkerInfo,
};
pub use error::{Error, Result};
pub use types::{Cancellation, Enqueued, PageQuery, TaskQuery};

use bgagent_types::backoff::Backoff;
use bgagent_types::{AgentList, RegisterRequest, UnregisterRequest, WorkerList};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// Base URL used when none is given: a local `bgagent dev`.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:8080";
/// Header carrying the API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// How failed calls are retried: up to `max_retries` more tries, waiting `initial_backoff`,
/// then twice as long each time up to `max_backoff`, each wait jittered to 50-100 %. A 503's
/// `Retry-After` is honoured up to `max_backoff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (0 disables retrying).
    pub max_retries: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Longest wait between tries.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 3 retries, 200 ms doubling to at most 5 s.
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The wait before retry number `retry` (from 0).
    fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        // 50-100 % of the exponential step, so clients that failed together retry apart.
        let jittered = Backoff {
            base: self.initial_backoff,
            factor: 2.0,
            max: self.max_backoff,
            jitter: 0.5..=1.0,
        }
        .delay(retry);
        match retry_after {
            Some(after) => after.min(self.max_backoff).max(jittered),
            None => jittered,
        }
    }
}

/// Which failures a call may retry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Connection failures only: nothing reached the server.
    ConnectOnly,
    /// Connection failures and 408 and 503 answers: the call is idempotent.
    Idempotent,
}

/// Configures a [`Client`]; start with [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    base_url: String,
    api_key: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    poll_interval: Duration,
    user_agent: String,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            poll_interval: Duration::from_secs(1),
            user_agent: concat!("bgagent-client/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl ClientBuilder {
    /// The API's base URL, e.g. `http://127.0.0.1:8080` (default) or `https://host/prefix`.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The key sent in `x-api-key`. Without one only `/health` and `/ready` answer.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Time limit of each HTTP request (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time limit of establishing a connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How failed calls are retried (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Longest pause between polls of [`Client::wait`] when the server answers a wait early
    /// (a server without `wait_secs`; default 1 s; pauses start at 50 ms and double up to this).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The `User-Agent` header (default `bgagent-client/<version>`).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Check the settings and build the client.
    pub fn build(self) -> Result<Client> {
        let base = reqwest::Url::parse(&self.base_url)
            .map_err(|e| Error::Config(format!("base URL {:?}: {e}", self.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(Error::Config(format!(
                "base URL {:?}: must be an http(s) URL with a host",
                self.base_url
            )));
        }
        let api_key = match self.api_key {
            Some(key) => {
                let value = reqwest::header::HeaderValue::from_str(&key).map_err(|_| {
                    Error::Config("API key: must be visible ASCII without newlines".into())
                })?;
                Some(value)
            }
            None => None,
        };
        // reqwest is built without a default TLS crypto provider; install ring's (a no-op when a
        // provider is already installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            // The API closes idle keep-alive connections after its header-read timeout (10 s by
            // default); dropping ours sooner avoids sending on one it is closing.
            .pool_idle_timeout(Duration::from_secs(5))
            .connect_timeout(self.connect_timeout)
            .user_agent(self.user_agent)
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: base.as_str().trim_end_matches('/').to_owned(),
            api_key: api_key.map(|mut v| {
                v.set_sensitive(true);
                v
            }),
            retry: self.retry,
            poll_interval: self.poll_interval.max(Duration::from_millis(10)),
            timeout: self.timeout,
        })
    }
}

/// A Background Agent API client. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<reqwest::header::HeaderValue>,
    retry: RetryPolicy,
    poll_interval: Duration,
    /// The per-request time limit, which bounds each long wait of [`Client::wait`].
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `base_url` sending `api_key`, with default timeouts and retries.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Result<Self> {
        Self::builder().base_url(base_url).api_key(api_key).build()
    }

    /// Start configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /enqueue`: submit a task. Sends an idempotency key (a fresh UUID unless the request
    /// carries one), so the call is retried safely.
    pub async fn enqueue(&self, mut request: EnqueueRequest) -> Result<Enqueued> {
        if request.idempotency_key.is_none() {
            request.idempotency_key = Some(Uuid::now_v7().to_string());
        }
        let response = self
            .send(
                Retry::Idempotent,
                Method::POST,
                "/enqueue",
                &[],
                Some(&request),
            )
            .await?;
        let created = response.status() == StatusCode::ACCEPTED;
        let task = decode(response).await?;
        Ok(Enqueued { task, created })
    }

    /// `GET /tasks/{id}`: one task.
    pub async fn get_task(&self, id: Uuid) -> Result<Task> {
        self.call(
            Retry::Idempotent,
            Method::GET,
            &format!("/tasks/{id}"),
            &[],
            None::<&()>,
        )
        .await
    }

    /// `GET /tasks/{id}?wait_secs=N`: the task as soon as it is final, or its current state
    /// after `wait_secs` (0-60; the server ends a wait before its request timeout, and this
    /// client's own time limit must exceed the wait).
    pub async fn get_task_wait(&self, id: Uuid, wait_secs: u64) -> Result<Task> {
        self.call(
            Retry::Idempotent,
            Method::GET,
            &format!("/tasks/{id}"),
            &[("wait_secs", wait_secs.to_string())],
            None::<&()>,
        )
        .await
    }

    /// `GET /tasks`: tasks newest first, filtered and paged by `query`; summaries (no `meta`,
    /// no `result`) unless `query.full`.
    pub async fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage> {
        self.call(
            Retry::Idempotent,
            Method::GET,
            "/tasks",
            &query.pairs(),
            None::<&()>,
        )
        .await
    }

    /// `POST /tasks/{id}/cancel`: cancel a queued task at once, or ask a running one's worker to
    /// stop it. A finished task answers 409 (`conflict`).
    pub async fn cancel_task(&self, id: Uuid) -> Result<Cancellation> {
        let response = self
            .send(
                Retry::ConnectOnly,
                Method::POST,
                &format!("/tasks/{id}/cancel"),
                &[],
                None::<&()>,
            )
            .await?;
        let pending = response.status() == StatusCode::ACCEPTED;
        let task = decode(response).await?;
        Ok(Cancellation { task, pending })
    }

    /// `POST /tasks/{id}/retry`: queue a failed or cancelled task again under its id, with a
    /// fresh attempt budget. A queued, running or succeeded task answers 409 (`conflict`).
    pub async fn retry(&self, id: Uuid) -> Result<Task> {
        self.call(
            Retry::ConnectOnly,
            Method::POST,
            &format!("/tasks/{id}/retry"),
            &[],
            None::<&()>,
        )
        .await
    }

    /// `POST /tasks/retry`: queue again the failed (or cancelled) tasks that match `filter`;
    /// `more` says the limit was reached (call again).
    pub async fn retry_all(&self, filter: &RetryAllRequest) -> Result<RetryAllResult> {
        self.call(
            Retry::ConnectOnly,
            Method::POST,
            "/tasks/retry",
            &[],
            Some(filter),
        )
        .await
    }

    /// `GET /processed`: attempt records, newest first.
    pub async fn processed(&self, page: &PageQuery) -> Result<AttemptPage> {
        self.call(
            Retry::Idempotent,
            Method::GET,
            "/processed",
            &page.pairs(),
            None::<&()>,
        )
        .await
    }

    /// `POST /stop`: pause the worker fleet (in-flight tasks finish, no new ones start).
    pub async fn stop(&self) -> Result<PausedState> {
        self.call(Retry::Idempotent, Method::POST, "/stop", &[], None::<&()>)
            .await
    }

    /// `POST /start`: resume the worker fleet.
    pub async fn start(&self) -> Result<PausedState> {
        self.call(Retry::Idempotent, Method::POST, "/start", &[], None::<&()>)
            .await
    }

    /// `POST /agents/register`: register (or update) an agent; its tasks are then POSTed to
    /// `endpoint`.
    pub async fn register_agent(
        &self,
        name: &str,
        endpoint: &str,
        meta: Option<Value>,
    ) -> Result<Agent> {
        let body = RegisterRequest {
            name: name.to_owned(),
            endpoint: endpoint.to_owned(),
            meta,
        };
        self.call(
            Retry::Idempotent,
            Method::POST,
            "/agents/register",
            &[],
            Some(&body),
        )
        .await
    }

    /// `POST /agents/unregister`: remove an agent (404 when it is not registered).
    pub async fn unregister_agent(&self, name: &str) -> Result<Unregistered> {
        let body = UnregisterRequest {
            name: name.to_owned(),
        };
        self.call(
            Retry::ConnectOnly,
            Method::POST,
            "/agents/unregister",
            &[],
            Some(&body),
        )
        .await
    }

    /// `GET /agents`: registered agents by name.
    pub async fn list_agents(&self) -> Result<Vec<Agent>> {
        let list: AgentList = self
            .call(Retry::Idempotent, Method::GET, "/agents", &[], None::<&()>)
            .await?;
        Ok(list.agents)
    }

    /// `GET /workers`: worker processes, latest heartbeat first.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let list: WorkerList = self
            .call(Retry::Idempotent, Method::GET, "/workers", &[], None::<&()>)
            .await?;
        Ok(list.workers)
    }

    /// `GET /health`: liveness (always 200 while the API serves) and the state of its
    /// dependencies. A 503 is not retried: it is the probe's answer.
    pub async fn health(&self) -> Result<Health> {
        self.call(Retry::ConnectOnly, Method::GET, "/health", &[], None::<&()>)
            .await
    }

    /// `GET /health` returning the body of a 200 answer as text, whatever it holds (a worker's
    /// metrics port answers plain `ok`). Any other status is an [`Error::Api`].
    pub async fn health_text(&self) -> Result<String> {
        let response = self
            .send(Retry::ConnectOnly, Method::GET, "/health", &[], None::<&()>)
            .await?;
        let url = response.url().to_string();
        response.text().await.map_err(|e| Error::transport(&url, e))
    }

    /// `GET /ready`: Ok when PostgreSQL and RabbitMQ are reachable, else an [`Error::Api`] with
    /// status 503 and code `not_ready` naming what is down. A 503 is not retried.
    pub async fn ready(&self) -> Result<()> {
        self.send(Retry::ConnectOnly, Method::GET, "/ready", &[], None::<&()>)
            .await
            .map(drop)
    }

    /// Wait until a task is succeeded, failed or cancelled, and return it; fails with
    /// [`Error::WaitTimeout`] when `timeout` passes first. Each call is a long wait
    /// (`GET /tasks/{id}?wait_secs=N`, at most 20 s and within the request time limit) that the
    /// server answers as soon as the task is final, so nothing polls. Should a server answer a
    /// wait early without the task being final, the next call comes after a pause that starts
    /// at 50 ms and doubles up to the builder's `poll_interval`.
    pub async fn wait(&self, id: Uuid, timeout: Duration) -> Result<Task> {
        /// Longest single wait: well inside the server's default 30 s request timeout.
        const LONGEST: u64 = 20;
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(50).min(self.poll_interval);
        let mut last_status = None;
        let timed_out = |last_status| Error::WaitTimeout {
            task_id: id,
            timeout,
            last_status,
        };
        // Leave the answer 2 s to arrive within the request time limit.
        let per_call = self
            .timeout
            .saturating_sub(Duration::from_secs(2))
            .as_secs()
            .min(LONGEST);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // Whole seconds that end before the deadline, so the answer carries the latest
            // status; the last fraction of a second is paced like an early answer.
            let wait_secs = remaining.as_secs().min(per_call);
            let asked = Instant::now();
            let call = self.get_task_wait(id, wait_secs);
            let task = match tokio::time::timeout(remaining, call).await {
                Ok(task) => task?,
                Err(_) => return Err(timed_out(last_status)),
            };
            if task.status.is_terminal() {
                return Ok(task);
            }
            last_status = Some(task.status);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timed_out(last_status));
            }
            // A full wait needs no pause; an early answer (an older server) is paced.
            if asked.elapsed() < Duration::from_secs(wait_secs) / 2 || wait_secs == 0 {
                tokio::time::sleep(pause.min(remaining)).await;
                pause = (pause * 2).min(self.poll_interval);
            }
        }
    }

    /// Send and decode a JSON answer.
    async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        retry: Retry,
        method: Method,
        path: &str,
        query: &[(&'static str, String)],
        body: Option<&B>,
    ) -> Result<T> {
        decode(self.send(retry, method, path, query, body).await?).await
    }

    /// Send with retries; a success status returns the response, anything else an error.
    async fn send<B: Serialize + ?Sized>(
        &self,
        retry: Retry,
        method: Method,
        path: &str,
        query: &[(&'static str, String)],
        body: Option<&B>,
    ) -> Result<Response> {
        let url = format!("{}{path}", self.base);
        let build = || -> RequestBuilder {
            let mut req = self.http.request(method.clone(), &url);
            if !query.is_empty() {
                req = req.query(query);
            }
            if let Some(key) = &self.api_key {
                req = req.header(API_KEY_HEADER, key.clone());
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            req
        };
        let mut retries = 0;
        loop {
            let (error, retry_after) = match build().send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let body = response
                        .bytes()
                        .await
                        .map_err(|e| Error::transport(&url, e))?;
                    (Error::from_answer(status.as_u16(), &body), retry_after)
                }
                Err(e) => (Error::transport(&url, e), None),
            };
            let retryable = match &error {
                Error::Connect { .. } => true,
                // 503 (unavailable, or outcome unknown) and 408 may hide a stored request: only
                // calls that are safe to repeat (enqueue carries an idempotency key) retry them.
                Error::Api {
                    status: 408 | 503, ..
                } => retry == Retry::Idempotent,
                _ => false,
            };
            if !retryable || retries >= self.retry.max_retries {
                return Err(error);
            }
            tokio::time::sleep(self.retry.delay(retries, retry_after)).await;
            retries += 1;
        }
    }
}

/// Read a success answer's JSON body as `T`.
async fn decode<T: DeserializeOwned>(response: Response) -> Result<T> {
    let url = response.url().to_string();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| Error::transport(&url, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
        url,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_counts_up_to_the_cap() {
        // The steps themselves are bgagent-types' backoff tests.
        let policy = RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        let first = policy.delay(0, None);
        assert!((50..=100).contains(&first.as_millis()), "{first:?}");
        // Retry-After wins over a shorter step but never exceeds the cap.
        assert_eq!(
            policy.delay(0, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(60))),
            Duration::from_millis(1000)
        );
    }

    #[test]
    fn builder_rejects_bad_urls_and_keys() {
        assert!(matches!(
            Client::builder().base_url("not a url").build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Client::builder().base_url("ftp://host/").build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Client::new(DEFAULT_BASE_URL, "bad\nkey"),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn base_url_loses_its_trailing_slash_and_debug_hides_the_key() {
        let client = Client::new("http://127.0.0.1:9/prefix/", "secret-key").ok();
        let client = client.as_ref();
        assert_eq!(
            client.map(Client::base_url),
            Some("http://127.0.0.1:9/prefix")
        );
        let debug = format!("{client:?}");
        assert!(!debug.contains("secret-key"), "{debug}");
    }
}
