//! `bgagent processed`: attempt records, newest first.

use bgagent_client::PageQuery;
use chrono::Utc;

use crate::connection::ClientOptions;
use crate::output::{self, Table};

/// Arguments of `bgagent processed`.
#[derive(clap::Args)]
pub struct ProcessedArgs {
    /// Page size (1-500; the API's default is 50).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
    limit: Option<u32>,
    /// Continue after a previous page (its next_cursor).
    #[arg(long)]
    cursor: Option<String>,
}

/// Run the command.
pub async fn run(args: ProcessedArgs, opts: &ClientOptions) -> anyhow::Result<()> {
    let page = opts
        .client()?
        .processed(&PageQuery {
            limit: args.limit,
            cursor: args.cursor,
        })
        .await?;
    if opts.json {
        return output::print_json(&page);
    }
    let now = Utc::now();
    let mut table = Table::new(&[
        "TASK", "ATTEMPT", "AGENT", "OUTCOME", "WORKER", "FINISHED", "TOOK", "ERROR",
    ]);
    for a in &page.processed {
        table.row(vec![
            a.task_id.to_string(),
            a.attempt.to_string(),
            a.agent.clone(),
            a.outcome.clone(),
            a.worker_id.clone().unwrap_or_else(|| "-".into()),
            output::age(a.finished_at, now),
            output::duration((a.finished_at - a.started_at).num_milliseconds()),
            a.error
                .as_deref()
                .map_or_else(|| "-".into(), |e| output::truncate(e, 60)),
        ]);
    }
    if table.is_empty() {
        println!("no attempts recorded");
    } else {
        print!("{}", table.render());
    }
    if let Some(cursor) = page.next_cursor {
        eprintln!("more: bgagent processed --cursor {cursor}");
    }
    Ok(())
}
