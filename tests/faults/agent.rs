//! The test agent `recorder`: a real HTTP server the workers forward tasks to. It logs every
//! receipt with its `Idempotency-Key` and answers according to the task's `meta`:
//!
//! - `delay_ms`: answer after this long (default: 20-50 ms, so work is in flight when faults hit);
//! - `fail_first`: answer 500 to the first N receipts of the task (it is then retrying), with
//!   `Retry-After: <retry_after>` when `retry_after` is set;
//! - `poison`: hand the task to the poison hook (which kills the worker running it) and answer
//!   500 afterwards — to a worker that no longer exists.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// One request the agent received.
#[derive(Clone, Debug)]
pub struct Receipt {
    /// The `Idempotency-Key` header.
    pub key: String,
    /// `task_id` of the body.
    pub task_id: Option<Uuid>,
    /// `attempt` of the body.
    pub attempt: i64,
    /// When it arrived.
    pub at: Instant,
    /// What the agent answered (or meant to: the worker may be dead by then).
    pub status: u16,
}

/// A poisoned task arrived: kill its worker, then answer on the sender.
pub type PoisonEvent = (Uuid, oneshot::Sender<()>);

#[derive(Default)]
struct Inner {
    receipts: Vec<Receipt>,
    seen: HashMap<String, u32>,
    poison_hook: Option<mpsc::UnboundedSender<PoisonEvent>>,
}

/// Handle to the running agent.
#[derive(Clone)]
pub struct Recorder {
    /// Endpoint to register.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl Recorder {
    /// Serve on 127.0.0.1 at a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/run", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url, inner })
    }

    /// Every receipt so far.
    pub fn receipts(&self) -> Vec<Receipt> {
        self.inner
            .lock()
            .map(|i| i.receipts.clone())
            .unwrap_or_default()
    }

    /// Route poisoned tasks to `hook` (None: answer them 500 without killing anything).
    pub fn set_poison_hook(&self, hook: Option<mpsc::UnboundedSender<PoisonEvent>>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.poison_hook = hook;
        }
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let meta = &body["meta"];
    let task_id = body["task_id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok());
    let poison = meta["poison"].as_bool().unwrap_or(false);
    let fail_first = meta["fail_first"].as_u64().unwrap_or(0);
    let retry_after = meta["retry_after"].as_u64();
    let delay = match meta["delay_ms"].as_u64() {
        Some(ms) => Duration::from_millis(ms),
        None => Duration::from_millis(rand::rng().random_range(20..=50)),
    };
    let (status, hook) = {
        let Ok(mut inner) = inner.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let seen = inner.seen.entry(key.clone()).or_default();
        *seen += 1;
        let status = if poison || u64::from(*seen) <= fail_first {
            500
        } else {
            200
        };
        inner.receipts.push(Receipt {
            key,
            task_id,
            attempt: body["attempt"].as_i64().unwrap_or(0),
            at,
            status,
        });
        (
            status,
            if poison {
                inner.poison_hook.clone()
            } else {
                None
            },
        )
    };
    if let (Some(hook), Some(id)) = (hook, task_id) {
        let (done, killed) = oneshot::channel();
        if hook.send((id, done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(15), killed).await;
        }
    }
    tokio::time::sleep(delay).await;
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        if status == 200 {
            "{\"ok\":true}"
        } else {
            "{\"error\":\"scripted failure\"}"
        },
    )
        .into_response();
    if status != 200
        && let Some(secs) = retry_after
        && let Ok(value) = secs.to_string().parse()
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}
