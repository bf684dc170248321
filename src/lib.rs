//! The `bgagent` command line. Each subcommand lives in its own module under `commands`.

mod commands;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Background Agent command line.
#[derive(Parser)]
#[command(
    name = "bgagent",
    version,
    about = "Background Agent: durable tasks for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run migrations, the API and workers in one process against local services.
    Dev(commands::dev::DevArgs),
    /// Apply database migrations and exit.
    Migrate(commands::migrate::MigrateArgs),
    /// Run the HTTP API (same as `bgagent-api`).
    Api(commands::run::ApiArgs),
    /// Run a worker (same as `bgagent-worker`).
    Worker(commands::run::WorkerArgs),
}

/// Parse arguments, run the command, and map failures to exit codes.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => commands::dev::run(args).await,
        Command::Migrate(args) => commands::migrate::run(args).await,
        Command::Api(args) => commands::run::api(args).await,
        Command::Worker(args) => commands::run::worker(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
