//! `bgagent-api`: the HTTP API. Configuration comes from the environment (see README.md).

use anyhow::Context;
use bgagent_api::{Api, ApiConfig};
use bgagent_shared::telemetry::{self, TelemetryConfig};
use clap::Parser;

#[derive(Parser)]
#[command(name = "bgagent-api", version, about = "Background Agent HTTP API")]
struct Cli {
    #[command(flatten)]
    api: ApiConfig,
    #[command(flatten)]
    telemetry: TelemetryConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.telemetry.log_format);
    let api = Api::build(&cli.api).await.context("cannot start the API")?;
    api.run_until_stopped(bgagent_shared::shutdown::on_signal())
        .await
        .context("API failed")
}
