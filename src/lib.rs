//! The `bgagent` command line. Each subcommand lives in its own module under `commands`; the
//! client commands share `connection` (URL, key, `--json`), `output` (tables) and `exit` (exit
//! codes that tell failure kinds apart).

mod commands;
mod connection;
mod exit;
mod output;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Background Agent command line.
#[derive(Parser)]
#[command(
    name = "bgagent",
    version,
    about = "Background Agent: durable tasks for AI agents",
    after_help = exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: connection::ClientOptions,
}

#[derive(Subcommand)]
enum Command {
    /// Run migrations, the API and workers in one process against local services.
    Dev(commands::dev::DevArgs),
    /// Apply database migrations and exit.
    Migrate(commands::migrate::MigrateArgs),
    /// Run the HTTP API (same as `bgagent-api`).
    Api(bgagent_api::ApiCommand),
    /// Run a worker (same as `bgagent-worker`).
    Worker(bgagent_worker::WorkerCommand),
    /// Submit a task.
    Enqueue(commands::enqueue::EnqueueArgs),
    /// List, show, cancel and watch tasks.
    Tasks(commands::tasks::TasksArgs),
    /// List attempt records, newest first.
    Processed(commands::processed::ProcessedArgs),
    /// Pause the worker fleet (in-flight tasks finish, no new ones start).
    Stop,
    /// Resume the worker fleet.
    Start,
    /// Register, unregister and list agents.
    Agents(commands::agents::AgentsArgs),
    /// List worker processes from their heartbeats.
    Workers,
    /// Check that the server answers /health (exit 0 only on 200).
    Health(commands::health::HealthArgs),
    /// Print a shell completion script.
    Completions(commands::completions::CompletionsArgs),
    /// Measure throughput and latency of a running system (or one it spawns).
    Bench(commands::bench::BenchArgs),
}

/// Parse arguments, run the command, and map failures to exit codes.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => commands::dev::run(args).await,
        Command::Migrate(args) => commands::migrate::run(args).await,
        Command::Api(args) => commands::run::api(args).await,
        Command::Worker(args) => commands::run::worker(args).await,
        Command::Enqueue(args) => commands::enqueue::run(args, &cli.client).await,
        Command::Tasks(args) => commands::tasks::run(args, &cli.client).await,
        Command::Processed(args) => commands::processed::run(args, &cli.client).await,
        Command::Stop => commands::control::run(true, &cli.client).await,
        Command::Start => commands::control::run(false, &cli.client).await,
        Command::Agents(args) => commands::agents::run(args, &cli.client).await,
        Command::Workers => commands::workers::run(&cli.client).await,
        Command::Health(args) => commands::health::run(args, &cli.client).await,
        Command::Completions(args) => commands::completions::run(args),
        Command::Bench(args) => commands::bench::run(args, &cli.client).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Client commands exit with a code per failure kind (see `exit`); the services'
            // failures (dev, migrate, api, worker) are all 1.
            exit::report(&e);
            ExitCode::from(exit::code(&e))
        }
    }
}
