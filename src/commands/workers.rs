//! `bgagent workers`: worker processes from their heartbeats.

use bgagent_client::WorkerInfo;
use chrono::{DateTime, Utc};

use crate::connection::ClientOptions;
use crate::output::{self, Table};

/// A worker silent this long is shown as `lost` (the API counts live workers the same way).
const LIVE_SECS: i64 = 30;

/// Run the command.
pub async fn run(opts: &ClientOptions) -> anyhow::Result<()> {
    let workers = opts.client()?.workers().await?;
    if opts.json {
        return output::print_json(&serde_json::json!({ "workers": workers }));
    }
    if workers.is_empty() {
        println!("no workers have reported");
        return Ok(());
    }
    let now = Utc::now();
    let mut table = Table::new(&[
        "ID",
        "STATE",
        "HOST",
        "VERSION",
        "IN FLIGHT",
        "PROCESSED",
        "LAST SEEN",
        "STARTED",
    ]);
    for w in &workers {
        table.row(vec![
            w.id.clone(),
            state(w, now).to_owned(),
            w.host.clone(),
            w.version.clone(),
            w.in_flight.to_string(),
            w.processed.to_string(),
            output::age(w.last_seen, now),
            output::age(w.started_at, now),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

fn state(worker: &WorkerInfo, now: DateTime<Utc>) -> &'static str {
    if worker.stopped_at.is_some() {
        "stopped"
    } else if (now - worker.last_seen).num_seconds() > LIVE_SECS {
        "lost"
    } else if worker.paused {
        "paused"
    } else {
        "running"
    }
}
