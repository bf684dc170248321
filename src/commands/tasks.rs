//! `bgagent tasks list|get|cancel|retry|watch`.

use bgagent_client::{Client, RetryAllRequest, RetryableStatus, Task, TaskQuery, TaskStatus};
use chrono::{DateTime, Utc};
use std::io::{IsTerminal, Write};
use std::time::Duration;
use uuid::Uuid;

use crate::commands::enqueue::print_finished;
use crate::connection::ClientOptions;
use crate::output;

/// Arguments of `bgagent tasks`.
#[derive(clap::Args)]
pub struct TasksArgs {
    #[command(subcommand)]
    command: TasksCommand,
}

#[derive(clap::Subcommand)]
enum TasksCommand {
    /// List tasks, newest first.
    List(ListArgs),
    /// Show one task.
    Get {
        /// Task id.
        id: Uuid,
    },
    /// Cancel a task: a queued one at once, a running one through its worker.
    Cancel {
        /// Task id.
        id: Uuid,
    },
    /// Queue a failed or cancelled task again under its id, with a fresh attempt budget; or,
    /// with --all, every task that matches the filters (up to --limit).
    Retry(RetryArgs),
    /// Refresh live: a table of recent tasks, or one task until it finishes (Ctrl-C stops).
    Watch(WatchArgs),
}

/// Filters of `tasks list` and `tasks watch`.
#[derive(clap::Args)]
struct Filters {
    /// Only tasks with this status (queued, running, succeeded, failed, cancelled).
    #[arg(long, value_parser = parse_status)]
    status: Option<TaskStatus>,
    /// Only tasks of this agent.
    #[arg(long)]
    agent: Option<String>,
}

#[derive(clap::Args)]
struct ListArgs {
    #[command(flatten)]
    filters: Filters,
    /// Page size (1-500; the API's default is 50).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
    limit: Option<u32>,
    /// Continue after a previous page (its next_cursor).
    #[arg(long)]
    cursor: Option<String>,
    /// Also fetch each task's meta and result (with --json; the table shows neither). Without
    /// it the API answers summaries; `tasks get` shows one task in full.
    #[arg(long)]
    full: bool,
}

/// The statuses `tasks retry --all` takes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum RetryStatusArg {
    Failed,
    Cancelled,
}

#[derive(clap::Args)]
struct RetryArgs {
    /// Task id.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<Uuid>,
    /// Retry every task that matches the filters instead of one.
    #[arg(long)]
    all: bool,
    /// With --all: only tasks of this agent.
    #[arg(long, requires = "all")]
    agent: Option<String>,
    /// With --all: failed (the default) or cancelled tasks.
    #[arg(long, requires = "all", value_enum)]
    status: Option<RetryStatusArg>,
    /// With --all: only tasks that finished after this time (RFC 3339).
    #[arg(long, requires = "all", value_name = "TIME")]
    finished_after: Option<DateTime<Utc>>,
    /// With --all: most tasks to retry (1-100000; the API's default is 10000).
    #[arg(long, requires = "all", value_parser = clap::value_parser!(i64).range(1..=100_000))]
    limit: Option<i64>,
}

#[derive(clap::Args)]
struct WatchArgs {
    /// Watch this task until it finishes (exit 8 if it failed or was cancelled); without it,
    /// watch the most recent tasks.
    id: Option<Uuid>,
    #[command(flatten)]
    filters: Filters,
    /// Tasks shown when watching the list.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    limit: u32,
    /// Seconds between refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = parse_interval)]
    interval: f64,
}

fn parse_status(raw: &str) -> Result<TaskStatus, String> {
    raw.parse::<TaskStatus>().map_err(|e| e.to_string())
}

fn parse_interval(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(secs) if (0.1..=3600.0).contains(&secs) => Ok(secs),
        _ => Err("must be a number of seconds from 0.1 to 3600".into()),
    }
}

/// Run the command.
pub async fn run(args: TasksArgs, opts: &ClientOptions) -> anyhow::Result<()> {
    let client = opts.client()?;
    match args.command {
        TasksCommand::List(list) => {
            let query = TaskQuery {
                status: list.filters.status,
                agent: list.filters.agent,
                limit: list.limit,
                cursor: list.cursor,
                full: list.full,
            };
            let page = client.list_tasks(&query).await?;
            if opts.json {
                return output::print_json(&page);
            }
            if page.tasks.is_empty() {
                println!("no tasks");
            } else {
                print!("{}", output::task_table(&page.tasks, Utc::now()).render());
            }
            if let Some(cursor) = page.next_cursor {
                eprintln!("more: bgagent tasks list --cursor {cursor}");
            }
            Ok(())
        }
        TasksCommand::Get { id } => {
            let task = client.get_task(id).await?;
            if opts.json {
                output::print_json(&task)
            } else {
                print!("{}", output::task_detail(&task, Utc::now()));
                Ok(())
            }
        }
        TasksCommand::Cancel { id } => {
            let cancellation = client.cancel_task(id).await?;
            if opts.json {
                return output::print_json(&cancellation.task);
            }
            if cancellation.pending {
                println!(
                    "cancel requested for running task {id}; its worker stops it (bgagent tasks watch {id})"
                );
            } else {
                println!("cancelled task {id}");
            }
            Ok(())
        }
        TasksCommand::Retry(retry) => run_retry(&client, retry, opts.json).await,
        TasksCommand::Watch(watch) => run_watch(&client, watch, opts.json).await,
    }
}

/// What one refresh shows.
enum Frame {
    One(Box<Task>),
    Many(Vec<Task>),
}

async fn run_watch(client: &Client, args: WatchArgs, json: bool) -> anyhow::Result<()> {
    // On a terminal the screen is redrawn; piped, a frame is printed only when it changed, and
    // with --json each frame is one compact JSON line.
    let redraw = !json && std::io::stdout().is_terminal();
    let interval = Duration::from_secs_f64(args.interval);
    let query = TaskQuery {
        status: args.filters.status,
        agent: args.filters.agent.clone(),
        limit: Some(args.limit),
        cursor: None,
        // The table shows neither meta nor result.
        full: false,
    };
    // Watching one task, each refresh after the first is a long wait of the interval
    // (`wait_secs`, whole seconds up to 20): the frame comes at the interval, or as soon as the
    // task is final, without polling in between. Shorter intervals poll.
    let long_wait = interval.as_secs().min(20);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last = String::new();
    let mut first = true;
    loop {
        let waited = args.id.is_some() && long_wait > 0 && !first;
        let fetch = async {
            anyhow::Ok(match args.id {
                Some(id) if waited => {
                    Frame::One(Box::new(client.get_task_wait(id, long_wait).await?))
                }
                Some(id) => Frame::One(Box::new(client.get_task(id).await?)),
                None => Frame::Many(client.list_tasks(&query).await?.tasks),
            })
        };
        let frame = tokio::select! {
            frame = fetch => frame?,
            _ = &mut ctrl_c => return Ok(()),
        };
        first = false;
        let data = match &frame {
            Frame::One(task) => serde_json::to_string(task)?,
            Frame::Many(tasks) => serde_json::to_string(&serde_json::json!({ "tasks": tasks }))?,
        };
        let now = Utc::now();
        if redraw {
            let body = match &frame {
                Frame::One(task) => output::task_detail(task, now),
                Frame::Many(tasks) if tasks.is_empty() => "no tasks\n".to_owned(),
                Frame::Many(tasks) => output::task_table(tasks, now).render(),
            };
            let title = match args.id {
                Some(id) => format!("bgagent tasks watch {id}"),
                None => "bgagent tasks watch".to_owned(),
            };
            let mut out = std::io::stdout().lock();
            // Home the cursor and clear the screen, then draw.
            write!(
                out,
                "\x1b[H\x1b[2JEvery {}s: {title}  (Ctrl-C stops)  {}\n\n{body}",
                args.interval,
                output::timestamp(now),
            )?;
            out.flush()?;
        } else if data != last {
            if json {
                println!("{data}");
            } else {
                match &frame {
                    Frame::One(task) => println!(
                        "{}  {}  attempts {}/{}",
                        output::timestamp(now),
                        output::status_text(task),
                        task.attempts,
                        task.max_attempts
                    ),
                    Frame::Many(tasks) => {
                        println!("{}", output::timestamp(now));
                        print!("{}", output::task_table(tasks, now).render());
                        println!();
                    }
                }
            }
        }
        last = data;
        if let Frame::One(task) = &frame
            && task.status.is_terminal()
        {
            return if redraw || json {
                // The final frame is already on screen; only the exit code remains.
                finished_code(task)
            } else {
                print_finished(task, false)
            };
        }
        if args.id.is_some() && long_wait > 0 {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

async fn run_retry(client: &Client, args: RetryArgs, json: bool) -> anyhow::Result<()> {
    if let Some(id) = args.id {
        let task = client.retry(id).await?;
        if json {
            return output::print_json(&task);
        }
        println!(
            "retried task {id}: queued, attempt {} of {} next (bgagent tasks watch {id})",
            task.attempts + 1,
            task.max_attempts
        );
        return Ok(());
    }
    let filter = RetryAllRequest {
        status: args.status.map(|s| match s {
            RetryStatusArg::Failed => RetryableStatus::Failed,
            RetryStatusArg::Cancelled => RetryableStatus::Cancelled,
        }),
        agent: args.agent,
        finished_after: args.finished_after,
        limit: args.limit,
    };
    let done = client.retry_all(&filter).await?;
    if json {
        return output::print_json(&done);
    }
    println!("retried {} tasks", done.retried);
    if done.more {
        eprintln!("more may match: run the command again");
    }
    Ok(())
}

/// Exit 8 for a failed or cancelled task, without printing it again.
fn finished_code(task: &Task) -> anyhow::Result<()> {
    match task.status {
        TaskStatus::Failed | TaskStatus::Cancelled => Err(crate::exit::Exit::new(
            crate::exit::TASK_FAILED,
            format!("task {} {}", task.id, task.status),
        )
        .into()),
        _ => Ok(()),
    }
}
