//! `bgagent-api`: the HTTP API. Configuration comes from the environment (see README.md).

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bgagent_api::ApiCommand::parse()
        .run()
        .await
        .context("the API failed")
}
