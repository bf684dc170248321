//! `bgagent-worker`: consumes and runs tasks. Configuration comes from the environment (see
//! README.md).

use anyhow::Context;
use bgagent_shared::telemetry::{self, TelemetryConfig};
use bgagent_worker::{Worker, WorkerConfig};
use clap::Parser;

#[derive(Parser)]
#[command(name = "bgagent-worker", version, about = "Background Agent worker")]
struct Cli {
    #[command(flatten)]
    worker: WorkerConfig,
    #[command(flatten)]
    telemetry: TelemetryConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.telemetry.log_format);
    let worker = Worker::build(&cli.worker)
        .await
        .context("cannot start the worker")?;
    worker
        .run_until_stopped(bgagent_shared::shutdown::on_signal())
        .await
        .context("worker failed")
}
