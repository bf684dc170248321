//! `bgagent api` and `bgagent worker`: the two services, for images and process-level tests that
//! want one binary.

use anyhow::Context;
use bgagent_api::{Api, ApiConfig};
use bgagent_shared::telemetry::{self, TelemetryConfig};
use bgagent_worker::{Worker, WorkerConfig};

/// Arguments of `bgagent api`.
#[derive(clap::Args)]
pub struct ApiArgs {
    #[command(flatten)]
    api: ApiConfig,
    #[command(flatten)]
    telemetry: TelemetryConfig,
}

/// Arguments of `bgagent worker`.
#[derive(clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    worker: WorkerConfig,
    #[command(flatten)]
    telemetry: TelemetryConfig,
}

/// Run the API until SIGTERM / Ctrl-C.
pub async fn api(args: ApiArgs) -> anyhow::Result<()> {
    telemetry::init(args.telemetry.log_format);
    let api = Api::build(&args.api)
        .await
        .context("cannot start the API")?;
    api.run_until_stopped(bgagent_shared::shutdown::on_signal())
        .await
        .context("API failed")
}

/// Run a worker until SIGTERM / Ctrl-C.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    telemetry::init(args.telemetry.log_format);
    let worker = Worker::build(&args.worker)
        .await
        .context("cannot start the worker")?;
    worker
        .run_until_stopped(bgagent_shared::shutdown::on_signal())
        .await
        .context("worker failed")
}
