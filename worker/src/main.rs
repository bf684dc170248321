//! `bgagent-worker`: consumes and runs tasks. Configuration comes from the environment (see
//! README.md).

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bgagent_worker::WorkerCommand::parse()
        .run()
        .await
        .context("the worker failed")
}
