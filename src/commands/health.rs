//! `bgagent health`: is the server alive? Exit 0 only when `/health` answers 200.
//!
//! Used by the image's HEALTHCHECK (`bgagent health --quiet`) against the API and, with
//! `BGAGENT_URL=http://127.0.0.1:9091`, against a worker, whose `/health` answers plain `ok`:
//! any 200 is healthy, and only a JSON body is shown as fields.

use bgagent_client::Health;

use crate::connection::ClientOptions;
use crate::exit::{self, Exit};
use crate::output;

/// Arguments of `bgagent health`.
#[derive(clap::Args)]
pub struct HealthArgs {
    /// Print nothing, not even errors: only the exit code tells.
    #[arg(long, short)]
    quiet: bool,
}

/// Run the command.
pub async fn run(args: HealthArgs, opts: &ClientOptions) -> anyhow::Result<()> {
    let answer = match opts.public_client() {
        Ok(client) => client.health_text().await.map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    let body = match answer {
        Ok(body) => body,
        Err(e) if args.quiet => return Err(Exit::silent(exit::code(&e)).into()),
        Err(e) => return Err(e),
    };
    if args.quiet {
        return Ok(());
    }
    let json = serde_json::from_str::<serde_json::Value>(&body).ok();
    match (opts.json, json) {
        (true, Some(value)) => output::print_json(&value)?,
        (true, None) => output::print_json(&body.trim())?,
        (false, Some(value)) => match serde_json::from_value::<Health>(value.clone()) {
            Ok(health) => print!("{}", fields(&health)),
            Err(_) => println!("{value}"),
        },
        (false, None) => println!("{}", output::one_line(body.trim())),
    }
    Ok(())
}

fn fields(health: &Health) -> String {
    let yes_no = |ok: bool| if ok { "ok" } else { "unreachable" }.to_owned();
    let unknown = || "unknown".to_owned();
    output::fields(&[
        ("status", health.status.clone()),
        ("store (database)", yes_no(health.db_ok)),
        ("queue (broker)", yes_no(health.broker_ok)),
        (
            "fleet",
            health
                .paused
                .map_or_else(unknown, |p| if p { "paused" } else { "running" }.to_owned()),
        ),
        (
            "live workers",
            health.workers.map_or_else(unknown, |n| n.to_string()),
        ),
    ])
}
