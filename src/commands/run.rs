//! `bgagent api` and `bgagent worker`: the two services, for images and process-level tests that
//! want one binary. They are the same commands as `bgagent-api` and `bgagent-worker`.

use anyhow::Context;
use bgagent_api::ApiCommand;
use bgagent_worker::WorkerCommand;

/// Run the API until SIGTERM / Ctrl-C.
pub async fn api(command: ApiCommand) -> anyhow::Result<()> {
    command.run().await.context("the API failed")
}

/// Run a worker until SIGTERM / Ctrl-C, then drain.
pub async fn worker(command: WorkerCommand) -> anyhow::Result<()> {
    command.run().await.context("the worker failed")
}
