//! Logging and tracing set-up shared by every binary.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    #[default]
    Json,
    /// Human-readable, for terminals.
    Pretty,
}

/// Telemetry settings (`RUST_LOG`, `BGAGENT_LOG_FORMAT`).
#[derive(Clone, Debug, clap::Args)]
pub struct TelemetryConfig {
    /// Log line format.
    #[arg(long, env = "BGAGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Install the global subscriber. `RUST_LOG` filters (default `info`), except that the AMQP
/// client never logs at trace (see [`never_logged`]). Safe to call twice: the second call is
/// ignored, which lets tests and `bgagent dev` share one process.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(filter_fn(|meta| !never_logged(meta)));
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(true))
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer()).try_init(),
    };
}

/// Events no `RUST_LOG` may turn on: the trace level of the AMQP client (`lapin`, `amq_protocol*`)
/// dumps whole frames, among them the login (`Connection.StartOk`, user and password in clear) and
/// every message body. Its debug level and above stay available.
pub fn never_logged(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::TRACE
        && ["lapin", "amq_protocol"]
            .iter()
            .any(|prefix| meta.target().starts_with(prefix))
}

/// This machine's name (`HOSTNAME`, else /etc/hostname), for connection names, worker ids and
/// logs.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
