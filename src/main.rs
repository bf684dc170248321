//! `bgagent`: the Background Agent command line (dev mode, migrations, client commands, bench).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    bgagent::run().await
}
