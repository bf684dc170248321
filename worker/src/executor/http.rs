//! Forwarding tasks over HTTP: to a registered agent's endpoint, or to the Omni Gateway.

use bgagent_shared::domain::Task;
use bgagent_shared::egress::{EgressPolicy, Refused};
use bgagent_shared::store::TaskStore;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ExecResult, TaskError};

/// How long a registry lookup is trusted before it is read again.
const REGISTRY_TTL: Duration = Duration::from_secs(2);
/// Most agent lookups kept at once.
const MAX_CACHED_AGENTS: usize = 4096;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// When each agent was looked up, and the endpoint found (None: not registered).
type EndpointCache = HashMap<String, (Instant, Option<String>)>;

/// Cached view of the registered agents: one lookup per agent every few seconds instead of one per
/// task.
#[derive(Clone)]
pub struct AgentRegistry {
    store: Arc<dyn TaskStore>,
    cache: Arc<Mutex<EndpointCache>>,
}

impl AgentRegistry {
    /// A registry reading from `store`.
    pub fn new(store: Arc<dyn TaskStore>) -> Self {
        Self {
            store,
            cache: Arc::default(),
        }
    }

    /// The endpoint registered for `agent`, if any.
    pub async fn endpoint(&self, agent: &str) -> bgagent_shared::Result<Option<String>> {
        if let Ok(cache) = self.cache.lock()
            && let Some((at, endpoint)) = cache.get(agent)
            && at.elapsed() < REGISTRY_TTL
        {
            return Ok(endpoint.clone());
        }
        let endpoint = self.store.agent(agent).await?.map(|a| a.endpoint);
        if let Ok(mut cache) = self.cache.lock() {
            // Agent names come from clients: keep the cache bounded however many are made up.
            if cache.len() >= MAX_CACHED_AGENTS {
                cache.retain(|_, (at, _)| at.elapsed() < REGISTRY_TTL);
                if cache.len() >= MAX_CACHED_AGENTS {
                    cache.clear();
                }
            }
            cache.insert(agent.to_owned(), (Instant::now(), endpoint.clone()));
        }
        Ok(endpoint)
    }
}

/// The Omni Gateway's address and key.
#[derive(Clone)]
pub struct Gateway {
    url: url::Url,
    api_key: Option<SecretString>,
}

impl Gateway {
    /// Validate the gateway URL: http(s), a host, no credentials, allowed by the egress policy.
    pub fn new(
        url: &str,
        api_key: Option<SecretString>,
        egress: &EgressPolicy,
    ) -> bgagent_shared::Result<Self> {
        let parsed = bgagent_shared::domain::parse_endpoint(url)
            .map_err(|e| bgagent_shared::Error::Config(format!("OMNI_GATEWAY_URL: {e}")))?;
        egress
            .check_url(&parsed)
            .map_err(|e| bgagent_shared::Error::Config(format!("OMNI_GATEWAY_URL: {e}")))?;
        Ok(Self {
            url: parsed,
            api_key,
        })
    }

    fn enqueue_url(&self) -> String {
        format!(
            "{}/api/agents/enqueue",
            self.url.as_str().trim_end_matches('/')
        )
    }
}

/// Resolves host names with the system resolver and drops the addresses the egress policy
/// refuses, so the policy holds for the address actually connected to: a name registered while it
/// pointed somewhere harmless cannot be re-pointed at a metadata service (DNS rebinding).
struct EgressResolver {
    policy: Arc<EgressPolicy>,
}

impl reqwest::dns::Resolve for EgressResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            policy.check_name(&host)?;
            let mut refused = None;
            let allowed: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| match policy.check_addr(Some(&host), addr.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            let result: Result<reqwest::dns::Addrs, Box<dyn std::error::Error + Send + Sync>> =
                match refused {
                    Some(refused) if allowed.is_empty() => Err(refused.into()),
                    _ => Ok(Box::new(allowed.into_iter())),
                };
            result
        })
    }
}

/// HTTP client shared by every forwarded task.
#[derive(Clone)]
pub struct HttpExecutor {
    client: reqwest::Client,
    gateway: Option<Gateway>,
    result_max_bytes: usize,
    egress: Arc<EgressPolicy>,
}

impl HttpExecutor {
    /// A client that follows no redirects (an agent cannot bounce a task, with its data, to
    /// another host), connects only where `egress` allows and caps results at `result_max_bytes`.
    pub fn new(
        gateway: Option<Gateway>,
        result_max_bytes: usize,
        egress: EgressPolicy,
    ) -> bgagent_shared::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let egress = Arc::new(egress);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(EgressResolver {
                policy: Arc::clone(&egress),
            }))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("bgagent-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bgagent_shared::Error::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            gateway,
            result_max_bytes,
            egress,
        })
    }

    /// Whether unregistered agents go to the gateway.
    pub fn has_gateway(&self) -> bool {
        self.gateway.is_some()
    }

    /// POST the task to a registered agent.
    pub async fn call_agent(&self, endpoint: &str, task: &Task, attempt: i32) -> ExecResult {
        let body = json!({
            "task_id": task.id,
            "agent": task.agent,
            "command": task.command,
            "meta": task.meta,
            "attempt": attempt,
        });
        // The resolver sees only names: an IP literal is checked here. Endpoints stored before
        // the policy existed (or under a looser one) are caught the same way.
        if let Ok(url) = url::Url::parse(endpoint) {
            self.egress.check_url(&url).map_err(egress_refused)?;
        }
        let request = self
            .client
            .post(endpoint)
            .header("Idempotency-Key", task.id.to_string())
            .json(&body);
        self.send(request).await
    }

    /// POST the task to the Omni Gateway.
    pub async fn call_gateway(&self, task: &Task) -> ExecResult {
        let Some(gateway) = &self.gateway else {
            return Err(TaskError::terminal("no_route", "no gateway configured"));
        };
        let body = json!({"role": task.agent, "objective": task.command, "context": task.meta});
        let mut request = self.client.post(gateway.enqueue_url()).json(&body);
        if let Some(key) = &gateway.api_key {
            request = request.header("X-API-KEY", key.expose_secret());
        }
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> ExecResult {
        let mut response = request.send().await.map_err(|e| {
            if let Some(refused) = find_refusal(&e) {
                return egress_refused(refused.clone());
            }
            // No URL in the message: it may carry query secrets; the error kind is enough.
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            TaskError::retryable("connect", format!("agent {what}"))
        })?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = read_capped(&mut response, self.result_max_bytes).await?;
        if status.is_success() {
            return Ok(parse_body(&body));
        }
        let snippet = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        let message = format!("agent answered {status}: {snippet}");
        if is_retryable(status) {
            Err(TaskError::Retryable {
                message,
                retry_after,
                kind: "http_retryable",
            })
        } else {
            Err(TaskError::terminal("http_rejected", message))
        }
    }
}

/// A refused address is terminal: retrying reaches the same address under the same policy.
fn egress_refused(refused: Refused) -> TaskError {
    TaskError::terminal("egress_refused", refused.to_string())
}

/// The egress refusal behind a request error, if the resolver refused every address.
fn find_refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return Some(refused);
        }
        current = err.source();
    }
    None
}

fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default()
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Read the body, failing (terminally) past `max` bytes rather than buffering an unbounded answer.
async fn read_capped(response: &mut reqwest::Response, max: usize) -> Result<Vec<u8>, TaskError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(TaskError::terminal(
                        "result_too_large",
                        format!("agent response exceeds {max} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => {
                return Err(TaskError::retryable(
                    "connect",
                    "agent connection broke while reading the response",
                ));
            }
        }
    }
}

/// JSON bodies are stored as JSON; anything else as a string.
fn parse_body(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn statuses_are_classified() {
        for s in [408, 429, 500, 502, 503] {
            assert!(
                is_retryable(StatusCode::from_u16(s).unwrap_or_default()),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(
                !is_retryable(StatusCode::from_u16(s).unwrap_or_default()),
                "{s}"
            );
        }
    }

    #[test]
    fn bodies_are_json_or_text() {
        assert_eq!(parse_body(b"{\"a\":1}"), json!({"a": 1}));
        assert_eq!(parse_body(b"plain"), json!("plain"));
        assert_eq!(parse_body(b""), Value::Null);
    }
}
