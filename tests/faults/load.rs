//! Load through HTTP, as a real client sends it: an enqueue carries an idempotency key, and a
//! 5xx, 408, 429, timeout or connection error is retried with the SAME key until it is accepted.
//! Accepted = any 2xx; the id it names is counted once. A task sent without a key
//! ([`Spec::keyless`]) is retried only where nothing can have been accepted.

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

/// How long one enqueue keeps retrying before the client gives up on it.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// An HTTP client of the API under test.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

/// A task to enqueue.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The idempotency key sent with it; for a task sent without one ([`Spec::keyless`]), only
    /// the load's label of it.
    pub key: String,
    pub body: Value,
    /// Whether `key` is sent as the `Idempotency-Key`.
    pub send_key: bool,
}

impl Spec {
    /// A task with this idempotency key.
    pub fn keyed(key: String, body: Value) -> Self {
        Self {
            key,
            body,
            send_key: true,
        }
    }

    /// A task for the `recorder` agent.
    pub fn recorder(key: String, meta: Value) -> Self {
        Self::keyed(
            key.clone(),
            json!({"agent": "recorder", "command": key, "meta": meta}),
        )
    }

    /// A task sent without an idempotency key (`label` names it in the load's results only). It
    /// cannot be retried safely: it is sent again only when the connection was refused (nothing
    /// reached the API) or the API answered 503 or 429 (nothing was accepted); any other failure
    /// gives it up, its outcome unknown.
    pub fn keyless(label: String, body: Value) -> Self {
        Self {
            key: label,
            body,
            send_key: false,
        }
    }
}

/// Answers seen by the load: final answers and retried failures.
#[derive(Default, Debug)]
pub struct Answers {
    /// Status code (0 = connection error or timeout) → count, over every try.
    pub statuses: BTreeMap<u16, usize>,
    /// Enqueues given up after [`GIVE_UP_AFTER`] or refused with a 4xx.
    pub given_up: Vec<String>,
}

/// What a load run accepted.
#[derive(Default)]
pub struct Accepted {
    /// Idempotency key → task id.
    pub ids: HashMap<String, Uuid>,
    /// When each key was accepted.
    pub at: HashMap<String, Instant>,
    pub answers: Answers,
}

impl Accepted {
    /// Merge another run's results.
    pub fn merge(&mut self, other: Accepted) {
        self.ids.extend(other.ids);
        self.at.extend(other.at);
        for (s, n) in other.answers.statuses {
            *self.answers.statuses.entry(s).or_default() += n;
        }
        self.answers.given_up.extend(other.answers.given_up);
    }
}

/// One accepted enqueue.
#[derive(Clone, Debug)]
pub struct Enqueued {
    pub id: Uuid,
    pub status: u16,
}

impl Client {
    pub fn new(base: &str, key: &str) -> Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .pool_max_idle_per_host(64)
                .build()?,
            base: base.to_owned(),
            key: key.to_owned(),
        })
    }

    /// POST with the API key; status and JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(StatusCode, Value)> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// GET with the API key; status and JSON body.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// Send with the API key; the status and the body as JSON (`null` when it is not JSON).
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(StatusCode, Value)> {
        let res = request.header("x-api-key", &self.key).send().await?;
        let status = res.status();
        let bytes = res.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Enqueue one task, retrying transient failures with the same key. Records every answer.
    pub async fn enqueue(&self, spec: &Spec, answers: &Mutex<Answers>) -> Result<Enqueued> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut request = self
                .http
                .post(format!("{}/enqueue", self.base))
                .header("x-api-key", &self.key);
            if spec.send_key {
                request = request.header("idempotency-key", &spec.key);
            }
            let result = request.json(&spec.body).send().await;
            let refused = result.as_ref().is_err_and(reqwest::Error::is_connect);
            let (status, body) = match result {
                Ok(res) => {
                    let status = res.status();
                    match res.bytes().await {
                        Ok(bytes) => (
                            status.as_u16(),
                            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                        ),
                        Err(_) => (0, Value::Null),
                    }
                }
                Err(_) => (0, Value::Null),
            };
            if let Ok(mut a) = answers.lock() {
                *a.statuses.entry(status).or_default() += 1;
            }
            if (200..300).contains(&status) {
                let id = body["id"]
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .with_context(|| format!("enqueue answered {status} without an id: {body}"))?;
                return Ok(Enqueued { id, status });
            }
            let transient = if spec.send_key {
                status == 0 || status == 408 || status == 429 || status >= 500
            } else {
                refused || status == 429 || status == 503
            };
            if !transient && !spec.send_key && (status == 0 || status >= 500) {
                anyhow::bail!(
                    "keyless enqueue {} not retried after {status} {body}: outcome unknown",
                    spec.key
                );
            }
            if !transient {
                anyhow::bail!("enqueue {} refused: {status} {body}", spec.key);
            }
            if started.elapsed() > GIVE_UP_AFTER {
                anyhow::bail!("enqueue {} still failing after {GIVE_UP_AFTER:?}", spec.key);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Enqueue `specs` at `rate` per second with at most `in_flight` requests open.
    pub async fn drive(&self, specs: Vec<Spec>, rate: f64, in_flight: usize) -> Accepted {
        let answers = Arc::new(Mutex::new(Answers::default()));
        let permits = Arc::new(Semaphore::new(in_flight.max(1)));
        let start = tokio::time::Instant::now();
        let mut set = JoinSet::new();
        for (i, spec) in specs.into_iter().enumerate() {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let client = self.clone();
            let answers = answers.clone();
            set.spawn(async move {
                let result = client.enqueue(&spec, &answers).await;
                drop(permit);
                (spec.key, result, Instant::now())
            });
        }
        let mut accepted = Accepted::default();
        while let Some(joined) = set.join_next().await {
            let Ok((key, result, at)) = joined else {
                continue;
            };
            match result {
                Ok(e) => {
                    accepted.at.insert(key.clone(), at);
                    accepted.ids.insert(key, e.id);
                }
                Err(e) => {
                    if let Ok(mut a) = answers.lock() {
                        a.given_up.push(format!("{e:#}"));
                    }
                }
            }
        }
        if let Ok(mut a) = answers.lock() {
            accepted.answers = std::mem::take(&mut a);
        }
        accepted
    }
}
