//! The options every client command shares: where the API is, the key, and the output format.

use bgagent_client::{Client, DEFAULT_BASE_URL};
use bgagent_shared::config::secret_from;
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;
use std::time::Duration;

/// Global options of the client commands. They are `global`, so they go before or after the
/// subcommand. The ids and types of `api_key` and `api_key_file` match the API's own flags, so
/// `bgagent api` and `bgagent dev` keep theirs unchanged (clap does not add a global argument to a
/// subcommand that already has one with the same id).
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Client options")]
pub struct ClientOptions {
    /// Base URL of the API.
    #[arg(long, global = true, env = "BGAGENT_URL", default_value = DEFAULT_BASE_URL)]
    pub url: String,
    /// Key sent in x-api-key.
    #[arg(
        long,
        global = true,
        env = "BACKGROUND_AGENT_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<SecretString>,
    /// File holding the API key (Docker / Kubernetes secrets).
    #[arg(long, global = true, env = "BACKGROUND_AGENT_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Print the API's JSON (one document) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientOptions {
    /// A client sending the API key. Without a key the API answers 401 (exit code 4).
    pub fn client(&self) -> anyhow::Result<Client> {
        let key = secret_from(
            self.api_key.as_ref(),
            self.api_key_file.as_ref(),
            "BACKGROUND_AGENT_API_KEY",
        )?;
        let mut builder = self.builder();
        if let Some(key) = key {
            builder = builder.api_key(key.expose_secret());
        }
        Ok(builder.build()?)
    }

    /// A client without a key, for the public endpoints (`/health`): a probe must not depend on
    /// a readable key file.
    pub fn public_client(&self) -> anyhow::Result<Client> {
        Ok(self.builder().timeout(Duration::from_secs(10)).build()?)
    }

    fn builder(&self) -> bgagent_client::ClientBuilder {
        Client::builder()
            .base_url(&self.url)
            .user_agent(concat!("bgagent-cli/", env!("CARGO_PKG_VERSION")))
    }
}
