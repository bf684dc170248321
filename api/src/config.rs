//! Settings of the API process.

use bgagent_shared::config::{BrokerConfig, DatabaseConfig, secret_from};
use bgagent_shared::egress::EgressConfig;
use clap::ArgAction;
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Seconds a client has to send a request's headers, counted from the connection's opening or
    /// the end of its previous response; a keep-alive connection waiting longer is closed.
    #[arg(long, env = "BGAGENT_HEADER_READ_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may sit with no byte moving either way while no request is being
    /// handled (a stalled upload, a client that stops reading its answer) before it is closed.
    #[arg(long, env = "BGAGENT_IDLE_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
    /// Open client connections served at once; further connections wait in the listen backlog
    /// until one closes.
    #[arg(long, env = "BGAGENT_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds in-flight requests get to finish on shutdown; connections still open then are
    /// dropped. Keep the platform's grace period (Kubernetes `terminationGracePeriodSeconds`)
    /// longer.
    #[arg(
        id = "api_shutdown_grace_secs",
        long = "api-shutdown-grace-secs",
        value_name = "SECS",
        env = "BGAGENT_SHUTDOWN_GRACE_SECS",
        default_value_t = 30
    )]
    pub shutdown_grace_secs: u64,
    /// Apply database migrations at start (turn off when a migration job runs them).
    #[arg(long, env = "BGAGENT_MIGRATE", default_value_t = true, action = ArgAction::Set)]
    pub migrate: bool,
    /// Concurrent group-commit loops for enqueue. One suits a database on the same few cores
    /// (largest batches, least CPU); more can lower latency when the database is remote.
    #[arg(long, env = "BGAGENT_ENQUEUE_LOOPS", default_value_t = 1)]
    pub enqueue_loops: usize,
    /// How long a dashboard (`/ui`) session lasts after sign-in (`12h`, `30m`, `7d`).
    #[arg(long, env = "BGAGENT_UI_SESSION_TTL", default_value = "12h",
          value_parser = parse_session_ttl)]
    pub ui_session_ttl: Duration,
    /// Mark the dashboard's session cookie `Secure` (and name it `__Host-…`): set it when TLS
    /// terminates in front of the API, so the browser never sends the cookie in clear.
    #[arg(long, env = "BGAGENT_UI_SECURE_COOKIE", default_value_t = false, action = ArgAction::Set)]
    pub ui_secure_cookie: bool,
    /// Most `GET /events` streams open at once on this process; beyond it the route answers
    /// 503. Each costs a connection (see BGAGENT_MAX_CONNECTIONS) and a few KiB.
    #[arg(long, env = "BGAGENT_MAX_EVENT_STREAMS", default_value_t = 1000)]
    pub max_event_streams: usize,
}

/// A session lifetime: a humantime duration from one minute to 30 days.
fn parse_session_ttl(raw: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(60)..=Duration::from_secs(30 * 24 * 3600)).contains(&ttl) {
        return Err("must be from 1m to 30d".into());
    }
    Ok(ttl)
}

/// Shortest API key accepted, in characters (after trimming surrounding whitespace).
pub const MIN_API_KEY_CHARS: usize = 16;

impl ApiConfig {
    /// The API key from `BACKGROUND_AGENT_API_KEY` or `BACKGROUND_AGENT_API_KEY_FILE`; the API
    /// refuses to start without one, or with one shorter than [`MIN_API_KEY_CHARS`].
    pub fn resolved_api_key(&self) -> bgagent_shared::Result<SecretString> {
        let key = secret_from(
            self.api_key.as_ref(),
            self.api_key_file.as_ref(),
            "BACKGROUND_AGENT_API_KEY",
        )?
        .ok_or_else(|| {
            bgagent_shared::Error::Config(if self.api_key.is_some() {
                "BACKGROUND_AGENT_API_KEY is set but empty".into()
            } else {
                "BACKGROUND_AGENT_API_KEY (or BACKGROUND_AGENT_API_KEY_FILE) is required".into()
            })
        })?;
        let chars = key.expose_secret().chars().count();
        if chars < MIN_API_KEY_CHARS {
            return Err(bgagent_shared::Error::Config(format!(
                "BACKGROUND_AGENT_API_KEY (or BACKGROUND_AGENT_API_KEY_FILE) is too short: \
                 {chars} characters, at least {MIN_API_KEY_CHARS} required \
                 (e.g. `openssl rand -hex 32`)"
            )));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        api: ApiConfig,
    }

    fn key_error(key: &str) -> Option<String> {
        let mut config = Cli::parse_from(["api"]).api;
        config.api_key = Some(key.into());
        config.api_key_file = None;
        config.resolved_api_key().err().map(|e| e.to_string())
    }

    #[test]
    fn short_and_empty_keys_are_refused_naming_the_setting() {
        for bad in ["", "   ", "0123456789abcde", "  0123456789abcde \n"] {
            let err = key_error(bad).unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(err.contains("BACKGROUND_AGENT_API_KEY"), "{err}");
        }
        assert_eq!(key_error("0123456789abcdef"), None);
        assert_eq!(key_error(" 0123456789abcdef\n"), None);
    }

    #[test]
    fn server_limits_have_safe_defaults() {
        let config = Cli::parse_from(["api"]).api;
        assert_eq!(config.header_read_timeout_secs, 10);
        assert_eq!(config.idle_timeout_secs, 60);
        assert_eq!(config.max_connections, 1024);
        assert_eq!(config.shutdown_grace_secs, 30);
        assert_eq!(config.ui_session_ttl, Duration::from_secs(12 * 3600));
        assert!(!config.ui_secure_cookie);
    }

    #[test]
    fn session_ttl_is_bounded() {
        assert!(parse_session_ttl("30m").is_ok());
        assert!(parse_session_ttl("10s").is_err());
        assert!(parse_session_ttl("365d").is_err());
        assert!(parse_session_ttl("soon").is_err());
    }
}
