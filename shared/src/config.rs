//! Settings shared by the API, the workers and the CLI. Each is an environment variable with a
//! matching flag; binaries flatten these into their own `clap` structs.

use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

/// Default PostgreSQL URL used by `bgagent dev` and the tests when `DATABASE_URL` is unset.
pub const LOCAL_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/bgagent";
/// Default RabbitMQ URL used by `bgagent dev` and the tests when `AMQP_URL` is unset.
pub const LOCAL_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// PostgreSQL settings.
#[derive(Clone, Debug, clap::Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL, e.g. postgres://user:pass@host:5432/bgagent.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// Connections in this process's pool. Budget replicas x pool <= the server's max_connections.
    #[arg(long, env = "BGAGENT_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    /// Seconds to wait for a pooled connection before answering 503.
    #[arg(long, env = "BGAGENT_DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 3)]
    pub db_acquire_timeout_secs: u64,
}

impl DatabaseConfig {
    /// The URL, or a configuration error naming `DATABASE_URL`.
    pub fn url(&self) -> Result<&str> {
        self.database_url
            .as_ref()
            .map(|s| s.expose_secret())
            .ok_or_else(|| Error::Config("DATABASE_URL is required".into()))
    }

    /// Pool acquire timeout.
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.db_acquire_timeout_secs.max(1))
    }

    /// Fill in the local default URL when none was given (dev mode and tests).
    pub fn or_local(mut self) -> Self {
        if self.database_url.is_none() {
            self.database_url = Some(LOCAL_DATABASE_URL.into());
        }
        self
    }
}

/// Default of `BGAGENT_TASKS_PER_MESSAGE`: large enough that a busy API sends a few messages per
/// insert batch instead of hundreds, small enough that one message's tasks spread over a fleet.
pub const DEFAULT_TASKS_PER_MESSAGE: u16 = 64;

/// RabbitMQ settings.
#[derive(Clone, Debug, clap::Args)]
pub struct BrokerConfig {
    /// RabbitMQ URL, e.g. amqp://user:pass@host:5672/%2f.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<SecretString>,
    /// Prefix of every exchange and queue name, so several deployments can share a broker.
    #[arg(long, env = "BGAGENT_BROKER_PREFIX", default_value = "bgagent", value_parser = parse_prefix)]
    pub broker_prefix: String,
    /// Redeliveries after which the quorum queue dead-letters a message (poison-loop guard).
    #[arg(long, env = "BGAGENT_DELIVERY_LIMIT", default_value_t = 20)]
    pub delivery_limit: u32,
    /// Most task ids in one queue message, 1-256. Tasks enqueued together (and relayed together)
    /// share a message up to this many, so a lone enqueue still goes out at once; 1 sends every
    /// task alone. Workers size their prefetch in messages from it, so set it fleet-wide.
    #[arg(long, env = "BGAGENT_TASKS_PER_MESSAGE", default_value_t = DEFAULT_TASKS_PER_MESSAGE,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub tasks_per_message: u16,
}

impl BrokerConfig {
    /// The URL, or a configuration error naming `AMQP_URL`.
    pub fn url(&self) -> Result<&str> {
        self.amqp_url
            .as_ref()
            .map(|s| s.expose_secret())
            .ok_or_else(|| Error::Config("AMQP_URL is required".into()))
    }

    /// Fill in the local default URL when none was given (dev mode and tests).
    pub fn or_local(mut self) -> Self {
        if self.amqp_url.is_none() {
            self.amqp_url = Some(LOCAL_AMQP_URL.into());
        }
        self
    }
}

fn parse_prefix(value: &str) -> std::result::Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err("use 1-64 characters from [A-Za-z0-9._-]".into())
    }
}

/// Read a secret from `value`, or from the file at `file` (Docker and Kubernetes secrets). Both
/// are trimmed of surrounding whitespace (the newline editors add, a pasted space). A value that
/// is set but empty counts as unset, so no caller ever takes `""` for a key; an empty file is an
/// error. `name` is the variable named in errors.
pub fn secret_from(
    value: Option<&SecretString>,
    file: Option<&PathBuf>,
    name: &str,
) -> Result<Option<SecretString>> {
    if let Some(v) = value {
        let trimmed = v.expose_secret().trim();
        if !trimmed.is_empty() {
            return Ok(Some(trimmed.into()));
        }
    }
    let Some(path) = file else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("{name}_FILE: cannot read {}: {e}", path.display())))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Error::Config(format!(
            "{name}_FILE: {} is empty",
            path.display()
        )));
    }
    Ok(Some(trimmed.into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(value: &str) -> Result<Option<String>> {
        let secret = SecretString::from(value);
        secret_from(Some(&secret), None, "SOME_KEY")
            .map(|s| s.map(|s| s.expose_secret().to_owned()))
    }

    #[test]
    fn secrets_are_trimmed_and_empty_ones_are_unset() {
        assert_eq!(read("  abc \n").unwrap().as_deref(), Some("abc"));
        for empty in ["", "   ", "\n\t"] {
            assert_eq!(read(empty).unwrap(), None, "{empty:?}");
        }
        assert!(secret_from(None, None, "SOME_KEY").unwrap().is_none());
    }

    #[test]
    fn an_empty_secret_file_is_refused() {
        let path = std::env::temp_dir().join(format!("bgagent-empty-{}", std::process::id()));
        std::fs::write(&path, " \n").unwrap();
        let err = secret_from(None, Some(&path), "SOME_KEY")
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("SOME_KEY_FILE"), "{err}");
    }
}
