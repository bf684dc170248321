//! Settings of the API process.

use bgagent_shared::config::{BrokerConfig, DatabaseConfig, secret_from};
use bgagent_shared::egress::EgressConfig;
use clap::ArgAction;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything `bgagent-api` reads from flags and the environment.
#[derive(Clone, Debug, clap::Args)]
pub struct ApiConfig {
    /// PostgreSQL settings.
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// RabbitMQ settings.
    #[command(flatten)]
    pub broker: BrokerConfig,
    /// Egress policy: which agent endpoints may be registered.
    #[command(flatten)]
    pub egress: EgressConfig,
    /// Address to listen on.
    #[arg(long, env = "BGAGENT_BIND", default_value = "0.0.0.0:8080")]
    pub bind: SocketAddr,
    /// Key clients send in `x-api-key`.
    #[arg(long, env = "BACKGROUND_AGENT_API_KEY", hide_env_values = true)]
    pub api_key: Option<SecretString>,
    /// File holding the API key (Docker / Kubernetes secrets).
    #[arg(long, env = "BACKGROUND_AGENT_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "BGAGENT_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a request may take before it is answered 408.
    #[arg(long, env = "BGAGENT_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Apply database migrations at start (turn off when a migration job runs them).
    #[arg(long, env = "BGAGENT_MIGRATE", default_value_t = true, action = ArgAction::Set)]
    pub migrate: bool,
    /// Concurrent group-commit loops for enqueue. One suits a database on the same few cores
    /// (largest batches, least CPU); more can lower latency when the database is remote.
    #[arg(long, env = "BGAGENT_ENQUEUE_LOOPS", default_value_t = 1)]
    pub enqueue_loops: usize,
    /// Task ids per broker message, 1-256. Above 1, tasks enqueued together share a message:
    /// less broker work per task, but acks, redelivery and the queue depth count messages, and
    /// workers built before multi-task messages cannot read them (upgrade workers first).
    #[arg(long, env = "BGAGENT_TASKS_PER_MESSAGE", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub tasks_per_message: u16,
}

impl ApiConfig {
    /// The API key from `BACKGROUND_AGENT_API_KEY` or `BACKGROUND_AGENT_API_KEY_FILE`; the API
    /// refuses to start without one.
    pub fn resolved_api_key(&self) -> bgagent_shared::Result<SecretString> {
        secret_from(
            self.api_key.as_ref(),
            self.api_key_file.as_ref(),
            "BACKGROUND_AGENT_API_KEY",
        )?
        .ok_or_else(|| {
            bgagent_shared::Error::Config(
                "BACKGROUND_AGENT_API_KEY (or BACKGROUND_AGENT_API_KEY_FILE) is required".into(),
            )
        })
    }
}
