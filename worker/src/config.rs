//! Settings of a worker process.

use bgagent_shared::config::{BrokerConfig, DatabaseConfig, secret_from};
use bgagent_shared::egress::EgressConfig;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `bgagent-worker` reads from flags and the environment.
#[derive(Clone, Debug, clap::Args)]
pub struct WorkerConfig {
    /// PostgreSQL settings.
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// RabbitMQ settings.
    #[command(flatten)]
    pub broker: BrokerConfig,
    /// Egress policy: where agents and the gateway may be reached (`bgagent dev` shares the
    /// API's, so it is not among the [`WorkerOptions`]).
    #[command(flatten)]
    pub egress: EgressConfig,
    /// Worker behaviour.
    #[command(flatten)]
    pub options: WorkerOptions,
}

/// Worker settings other than the database and broker (shared with `bgagent dev`).
#[derive(Clone, Debug, clap::Args)]
pub struct WorkerOptions {
    /// Tasks run at once by this process (sized for I/O-bound work).
    #[arg(long, env = "BGAGENT_CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,
    /// Tasks the queue may deliver ahead of those running, waiting for a free slot. The broker
    /// counts messages, so the worker asks it for this divided by `BGAGENT_TASKS_PER_MESSAGE`.
    #[arg(long, env = "BGAGENT_PREFETCH", default_value_t = 512)]
    pub prefetch: u16,
    /// Address of the worker's /metrics, /health and /ready, or `off`.
    // Spelled out so clap treats "no address" (`off`) as a value, not as an absent flag.
    #[arg(long, env = "BGAGENT_METRICS_BIND", default_value = "0.0.0.0:9091", value_parser = parse_bind)]
    pub metrics_bind: std::option::Option<SocketAddr>,
    /// Seconds in-flight tasks get to finish on SIGTERM before they are handed back.
    #[arg(long, env = "BGAGENT_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Seconds a claim stays valid without renewal (renewed every heartbeat).
    #[arg(long, env = "BGAGENT_LEASE_SECS", default_value_t = 60)]
    pub lease_secs: u64,
    /// Seconds between heartbeats, lease renewals and paused-state reconciliation.
    #[arg(long, env = "BGAGENT_HEARTBEAT_SECS", default_value_t = 5)]
    pub heartbeat_secs: u64,
    /// AMQP heartbeat of the worker's consuming connection, in seconds (0: the broker's, 60 s by
    /// default). A worker that stops making progress (frozen, SIGSTOP, a stalled VM) stops
    /// answering heartbeats; RabbitMQ then closes its connection within about twice this and
    /// hands its prefetched, unstarted tasks to other workers.
    #[arg(long, env = "BGAGENT_AMQP_HEARTBEAT_SECS", default_value_t = 10)]
    pub amqp_heartbeat_secs: u16,
    /// Seconds between checks that the broker still holds the queued tasks it was given (see
    /// docs/OPERATIONS.md); a published task counts as possibly lost after twice this.
    #[arg(long, env = "BGAGENT_BROKER_CHECK_SECS", default_value_t = 30)]
    pub broker_check_secs: u64,
    /// Milliseconds between relay passes (publishing due, unpublished tasks).
    #[arg(long, env = "BGAGENT_RELAY_INTERVAL_MS", default_value_t = 250)]
    pub relay_interval_ms: u64,
    /// First retry delay in milliseconds.
    #[arg(long, env = "BGAGENT_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,
    /// Growth factor of the retry delay per attempt.
    #[arg(long, env = "BGAGENT_RETRY_FACTOR", default_value_t = 2.0)]
    pub retry_factor: f64,
    /// Longest retry delay in seconds.
    #[arg(long, env = "BGAGENT_RETRY_MAX_SECS", default_value_t = 300)]
    pub retry_max_secs: u64,
    /// Largest agent response stored as a result, in bytes.
    #[arg(long, env = "BGAGENT_RESULT_MAX_BYTES", default_value_t = 1024 * 1024)]
    pub result_max_bytes: usize,
    /// Worker id (default: host name, process id and a random suffix).
    #[arg(long, env = "BGAGENT_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Omni Gateway base URL; tasks for unregistered agents go there when set.
    #[arg(long, env = "OMNI_GATEWAY_URL")]
    pub omni_gateway_url: Option<String>,
    /// Omni Gateway API key.
    #[arg(long, env = "OMNI_GATEWAY_API_KEY", hide_env_values = true)]
    pub omni_gateway_api_key: Option<SecretString>,
    /// File holding the Omni Gateway API key.
    #[arg(long, env = "OMNI_GATEWAY_API_KEY_FILE")]
    pub omni_gateway_api_key_file: Option<PathBuf>,
    /// How long finished tasks are kept, and how often the pruner runs.
    #[command(flatten)]
    pub retention: RetentionOptions,
}

/// How long finished tasks are kept before the pruner deletes them (with their attempt records),
/// and its period. Durations in human form (`30s`, `12h`, `7d`) or `off`.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct RetentionOptions {
    /// Time a succeeded task is kept after it finished, or `off` (kept for ever).
    #[arg(long, env = "BGAGENT_RETAIN_SUCCEEDED", default_value = "7d",
          value_parser = duration_or_off("BGAGENT_RETAIN_SUCCEEDED"))]
    pub retain_succeeded: std::option::Option<Duration>,
    /// Time a cancelled task is kept after it finished, or `off` (kept for ever).
    #[arg(long, env = "BGAGENT_RETAIN_CANCELLED", default_value = "7d",
          value_parser = duration_or_off("BGAGENT_RETAIN_CANCELLED"))]
    pub retain_cancelled: std::option::Option<Duration>,
    /// Time a failed task is kept after it finished, or `off` (kept for ever).
    #[arg(long, env = "BGAGENT_RETAIN_FAILED", default_value = "30d",
          value_parser = duration_or_off("BGAGENT_RETAIN_FAILED"))]
    pub retain_failed: std::option::Option<Duration>,
    /// Time between pruner passes, or `off` (this worker never prunes).
    #[arg(long, env = "BGAGENT_PRUNE_INTERVAL", default_value = "1m",
          value_parser = interval_or_off("BGAGENT_PRUNE_INTERVAL"))]
    pub prune_interval: std::option::Option<Duration>,
}

const DAY: Duration = Duration::from_secs(86_400);

impl Default for RetentionOptions {
    fn default() -> Self {
        Self {
            retain_succeeded: Some(7 * DAY),
            retain_cancelled: Some(7 * DAY),
            retain_failed: Some(30 * DAY),
            prune_interval: Some(Duration::from_secs(60)),
        }
    }
}

/// A parser of a duration setting in human form (`30s`, `12h`, `7d`) or `off`; its errors name
/// `var`, since clap's own message names only the flag.
// The types are spelled out (`std::option::Option`) so clap takes "off" as a value, not as an
// absent flag.
fn duration_or_off(
    var: &'static str,
) -> impl Fn(&str) -> Result<std::option::Option<Duration>, String> + Clone + Send + Sync + 'static
{
    move |value| {
        let value = value.trim();
        if value.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        humantime::parse_duration(value)
            .map(Some)
            .map_err(|e| format!("{var}: {e} (use a duration such as 30s, 12h or 7d, or off)"))
    }
}

/// [`duration_or_off`] for a period, which must not be zero.
fn interval_or_off(
    var: &'static str,
) -> impl Fn(&str) -> Result<std::option::Option<Duration>, String> + Clone + Send + Sync + 'static
{
    let parse = duration_or_off(var);
    move |value| match parse(value)? {
        Some(period) if period.is_zero() => Err(format!(
            "{var}: a period must be longer than zero (use off to stop pruning in this worker)"
        )),
        parsed => Ok(parsed),
    }
}

fn parse_bind(value: &str) -> Result<Option<SocketAddr>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e| format!("{e} (use host:port or off)"))
}

impl WorkerOptions {
    /// The gateway key from `OMNI_GATEWAY_API_KEY` or its `_FILE`.
    pub fn gateway_key(&self) -> bgagent_shared::Result<Option<SecretString>> {
        secret_from(
            self.omni_gateway_api_key.as_ref(),
            self.omni_gateway_api_key_file.as_ref(),
            "OMNI_GATEWAY_API_KEY",
        )
    }

    /// Refuse settings under which a live worker would lose its own tasks: a lease must
    /// outlast at least two missed heartbeats, since the heartbeat renews it.
    pub fn validate(&self) -> bgagent_shared::Result<()> {
        if self.lease_secs < 3 * self.heartbeat_secs.max(1) {
            return Err(bgagent_shared::Error::Config(format!(
                "BGAGENT_LEASE_SECS ({}) must be at least 3 x BGAGENT_HEARTBEAT_SECS ({}): the \
                 heartbeat renews leases, and a lease must survive two missed heartbeats",
                self.lease_secs, self.heartbeat_secs
            )));
        }
        Ok(())
    }

    /// Heartbeat period.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 256,
            prefetch: 512,
            metrics_bind: None,
            shutdown_grace_secs: 30,
            lease_secs: 60,
            heartbeat_secs: 5,
            amqp_heartbeat_secs: 10,
            broker_check_secs: 30,
            relay_interval_ms: 250,
            retry_base_ms: 1000,
            retry_factor: 2.0,
            retry_max_secs: 300,
            result_max_bytes: 1024 * 1024,
            worker_id: None,
            omni_gateway_url: None,
            omni_gateway_api_key: None,
            omni_gateway_api_key_file: None,
            retention: RetentionOptions::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Retention {
        #[command(flatten)]
        options: RetentionOptions,
    }

    fn retention(args: &[&str]) -> Result<RetentionOptions, String> {
        Retention::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .map(|parsed| parsed.options)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn retention_takes_human_durations_and_off() {
        assert_eq!(retention(&[]).unwrap(), RetentionOptions::default());
        let parsed = retention(&[
            "--retain-succeeded",
            "off",
            "--retain-cancelled",
            "12h",
            "--retain-failed",
            "7d",
            "--prune-interval",
            "30s",
        ])
        .unwrap();
        assert_eq!(parsed.retain_succeeded, None);
        assert_eq!(
            parsed.retain_cancelled,
            Some(Duration::from_secs(12 * 3600))
        );
        assert_eq!(parsed.retain_failed, Some(7 * DAY));
        assert_eq!(parsed.prune_interval, Some(Duration::from_secs(30)));
        assert_eq!(
            retention(&["--prune-interval", "OFF"])
                .unwrap()
                .prune_interval,
            None
        );
    }

    #[test]
    fn a_bad_retention_names_its_variable() {
        for (flag, value, var) in [
            ("--retain-succeeded", "7", "BGAGENT_RETAIN_SUCCEEDED"),
            ("--retain-cancelled", "soon", "BGAGENT_RETAIN_CANCELLED"),
            ("--retain-failed", "-1d", "BGAGENT_RETAIN_FAILED"),
            ("--prune-interval", "0s", "BGAGENT_PRUNE_INTERVAL"),
        ] {
            match retention(&[&format!("{flag}={value}")]) {
                Err(err) => assert!(err.contains(var), "{flag} {value}: {err}"),
                Ok(parsed) => panic!("{flag} {value} accepted: {parsed:?}"),
            }
        }
    }

    #[test]
    fn a_lease_must_outlast_two_missed_heartbeats() {
        let options = |lease_secs, heartbeat_secs| WorkerOptions {
            lease_secs,
            heartbeat_secs,
            ..WorkerOptions::default()
        };
        assert!(options(60, 5).validate().is_ok());
        assert!(options(3, 1).validate().is_ok());
        for (lease, heartbeat) in [(5, 5), (4, 5), (14, 5), (0, 1)] {
            match options(lease, heartbeat).validate() {
                Err(err) => assert!(err.to_string().contains("BGAGENT_LEASE_SECS"), "{err}"),
                Ok(()) => panic!("lease {lease} s with heartbeat {heartbeat} s accepted"),
            }
        }
    }
}
