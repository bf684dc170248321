//! `bgagent bench`: measure enqueue throughput and latency, end-to-end throughput, queue wait,
//! run time and memory of a running system, or of one it starts itself (`--spawn`).

use anyhow::{Context, bail};
use bgagent_client::{Client, RetryPolicy, TaskQuery};
use bgagent_shared::domain::{EnqueueRequest, Task, TaskStatus};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::bench_spawn::SpawnedSystem;

/// Which built-in executor the benchmark tasks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchAgent {
    /// Returns its input at once: measures the system's own overhead.
    Echo,
    /// Sleeps `--sleep-ms`: measures I/O-bound concurrency.
    Sleep,
}

/// Arguments of `bgagent bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Tasks to enqueue.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Executor of the tasks.
    #[arg(long, value_enum, default_value_t = BenchAgent::Echo)]
    pub agent: BenchAgent,
    /// Milliseconds each `sleep` task sleeps.
    #[arg(long, default_value_t = 10)]
    pub sleep_ms: u64,
    /// Start the API and workers as separate processes on a fresh database and broker prefix,
    /// run, then stop them and remove what they created (uses DATABASE_URL / AMQP_URL, default
    /// the local servers).
    #[arg(long)]
    pub spawn: bool,
    /// With `--spawn`: one `bgagent dev` process on the embedded engine (a SQLite file in a fresh
    /// data dir, the in-process queue) instead of PostgreSQL and RabbitMQ.
    #[arg(long, requires = "spawn")]
    pub embedded: bool,
    /// Worker processes to start with `--spawn` (worker loops in the one process with
    /// `--embedded`).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// With `--spawn` on PostgreSQL: first fill the fresh database with this many finished tasks
    /// (and their attempts), then time the first page of every `GET /tasks` filter and of
    /// `GET /processed` (median of 7) before the throughput run. `--tasks 0` times only the
    /// lists.
    #[arg(
        long,
        requires = "spawn",
        conflicts_with = "embedded",
        value_name = "ROWS"
    )]
    pub prefill: Option<i64>,
    /// Give up waiting for the tasks to finish after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub wait_timeout_secs: u64,
}

/// Figures of one run.
#[derive(Debug, Serialize)]
pub struct Report {
    tasks: usize,
    concurrency: usize,
    agent: String,
    engine: Option<&'static str>,
    workers: Option<usize>,
    enqueue_seconds: f64,
    enqueue_per_sec: f64,
    enqueue_p50_ms: f64,
    enqueue_p95_ms: f64,
    enqueue_p99_ms: f64,
    end_to_end_seconds: f64,
    end_to_end_per_sec: f64,
    queue_wait_p50_ms: f64,
    queue_wait_p99_ms: f64,
    run_time_p50_ms: f64,
    run_time_p99_ms: f64,
    succeeded: usize,
    failures: usize,
    enqueue_errors: usize,
    api_peak_rss_mib: Option<f64>,
    worker_peak_rss_mib: Option<f64>,
}

/// Run the benchmark against the API `options` name, or against a spawned system.
pub async fn run(
    args: BenchArgs,
    options: &crate::connection::ClientOptions,
) -> anyhow::Result<()> {
    let json = options.json;
    let url = options.url.clone();
    let api_key = bgagent_shared::config::secret_from(
        options.api_key.as_ref(),
        options.api_key_file.as_ref(),
        "BACKGROUND_AGENT_API_KEY",
    )?
    .map(|k| secrecy::ExposeSecret::expose_secret(&k).to_owned());
    if (args.tasks == 0 && args.prefill.is_none()) || args.concurrency == 0 {
        bail!("--tasks and --concurrency must be at least 1");
    }
    let spawned = if args.spawn && args.embedded {
        Some(SpawnedSystem::start_embedded(args.workers).await?)
    } else if args.spawn {
        Some(SpawnedSystem::start(args.workers).await?)
    } else {
        None
    };
    let (url, api_key) = match &spawned {
        Some(system) => (system.url.clone(), system.api_key.clone()),
        None => (
            url,
            api_key.context("BACKGROUND_AGENT_API_KEY (or --api-key) is required")?,
        ),
    };
    let lists = match (&spawned, args.prefill) {
        (Some(system), Some(rows)) => Some(prefilled_lists(system, rows, json, &api_key).await),
        _ => None,
    };
    let result = match &lists {
        Some(Err(_)) => None,
        _ if args.tasks == 0 => None,
        _ => Some(measure(&args, json, &url, &api_key, spawned.as_ref()).await),
    };
    if let Some(system) = spawned {
        system.stop().await?;
    }
    let lists = lists.transpose()?;
    let report = result.transpose()?;
    if json {
        // One JSON object per run: the report's figures and, with --prefill, the lists'.
        let mut doc = match &report {
            Some(report) => serde_json::to_value(report)?,
            None => serde_json::json!({}),
        };
        if let (Some((fill_seconds, figures)), Some(object)) = (&lists, doc.as_object_mut()) {
            object.insert("prefilled".into(), serde_json::json!(args.prefill));
            object.insert("prefill_seconds".into(), serde_json::json!(fill_seconds));
            object.insert("lists".into(), serde_json::to_value(figures)?);
        }
        println!("{doc}");
    } else {
        if let Some((fill_seconds, figures)) = &lists {
            let rows = args.prefill.unwrap_or(0);
            println!("filled {rows} finished tasks in {fill_seconds:.0} s");
            super::bench_lists::print(figures);
        }
        if let Some(report) = &report {
            print_table(report);
        }
    }
    let Some(report) = report else {
        return Ok(());
    };
    if report.failures > 0 || report.enqueue_errors > 0 {
        bail!(
            "{} tasks failed and {} enqueues were refused",
            report.failures,
            report.enqueue_errors
        );
    }
    Ok(())
}

/// Fill the spawned system's database, then time its list pages.
async fn prefilled_lists(
    system: &SpawnedSystem,
    rows: i64,
    json: bool,
    api_key: &str,
) -> anyhow::Result<(f64, Vec<super::bench_lists::ListFigure>)> {
    let database_url = system
        .database_url()
        .context("--prefill needs PostgreSQL")?;
    let fill_seconds = super::bench_lists::prefill(database_url, rows, json).await?;
    let client = Client::builder()
        .base_url(&system.url)
        .api_key(api_key)
        .retry(RetryPolicy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut figures = super::bench_lists::measure(&client).await?;
    figures.extend(super::bench_pages::measure(&system.url, api_key).await?);
    Ok((fill_seconds, figures))
}

async fn measure(
    args: &BenchArgs,
    json: bool,
    url: &str,
    api_key: &str,
    spawned: Option<&SpawnedSystem>,
) -> anyhow::Result<Report> {
    // Retries would hide refused requests inside the latency figures; the bench counts them.
    let client = Client::builder()
        .base_url(url)
        .api_key(api_key)
        .retry(RetryPolicy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    client
        .health()
        .await
        .with_context(|| format!("the API at {url} does not answer"))?;
    let agent = match args.agent {
        BenchAgent::Echo => "echo",
        BenchAgent::Sleep => "sleep",
    };
    let meta = match args.agent {
        BenchAgent::Echo => serde_json::json!({"bench": true}),
        BenchAgent::Sleep => serde_json::json!({"ms": args.sleep_ms}),
    };
    let progress = bar(args.tasks as u64, "enqueue", json);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, next, progress, meta) =
            (client.clone(), next.clone(), progress.clone(), meta.clone());
        let total = args.tasks;
        clients.spawn(async move {
            let mut latencies = Vec::new();
            let mut ids = Vec::new();
            let mut errors = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let request = EnqueueRequest {
                    agent: agent.to_owned(),
                    command: "bench".to_owned(),
                    meta: Some(meta.clone()),
                    ..Default::default()
                };
                let sent = Instant::now();
                match client.enqueue(request).await {
                    Ok(done) => {
                        latencies.push(sent.elapsed());
                        ids.push(done.task.id);
                    }
                    Err(_) => errors += 1,
                }
                progress.inc(1);
            }
            (latencies, ids, errors)
        });
    }
    let mut latencies = Vec::with_capacity(args.tasks);
    let mut ids = HashSet::with_capacity(args.tasks);
    let mut enqueue_errors = 0;
    while let Some(joined) = clients.join_next().await {
        let (l, i, e) = joined.context("a benchmark client crashed")?;
        latencies.extend(l);
        ids.extend(i);
        enqueue_errors += e;
    }
    let enqueue_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    let tasks = wait_for(&client, agent, &ids, args, json).await?;
    let end = tasks
        .iter()
        .filter_map(|t| t.finished_at)
        .max()
        .context("no task finished")?;
    let first = tasks
        .iter()
        .map(|t| t.created_at)
        .min()
        .context("no task")?;
    // The first request left the client slightly before the first row was created; the
    // difference is one round trip, negligible over thousands of tasks.
    let end_to_end_seconds = (end - first).as_seconds_f64().max(f64::EPSILON);
    let mut waits: Vec<f64> = tasks
        .iter()
        .filter_map(|t| Some((t.started_at? - t.run_at).as_seconds_f64() * 1000.0))
        .collect();
    let mut runs: Vec<f64> = tasks
        .iter()
        .filter_map(|t| Some((t.finished_at? - t.started_at?).as_seconds_f64() * 1000.0))
        .collect();
    let mut lat_ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let succeeded = tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Succeeded)
        .count();
    let (api_peak_rss_mib, worker_peak_rss_mib) = match spawned {
        Some(system) => (system.api_peak_rss_mib(), system.worker_peak_rss_mib()),
        None => (
            super::bench_spawn::peak_rss_of(&["bgagent-api", "bgagent api", "bgagent dev"]),
            super::bench_spawn::peak_rss_of(&["bgagent-worker", "bgagent worker"]),
        ),
    };
    Ok(Report {
        tasks: args.tasks,
        concurrency: args.concurrency,
        agent: agent.to_owned(),
        engine: spawned.map(|_| {
            if args.embedded {
                "embedded"
            } else {
                "postgresql+rabbitmq"
            }
        }),
        workers: spawned.map(|_| args.workers),
        enqueue_seconds,
        enqueue_per_sec: ids.len() as f64 / enqueue_seconds,
        enqueue_p50_ms: percentile(&mut lat_ms, 0.50),
        enqueue_p95_ms: percentile(&mut lat_ms, 0.95),
        enqueue_p99_ms: percentile(&mut lat_ms, 0.99),
        end_to_end_seconds,
        end_to_end_per_sec: tasks.len() as f64 / end_to_end_seconds,
        queue_wait_p50_ms: percentile(&mut waits, 0.50),
        queue_wait_p99_ms: percentile(&mut waits, 0.99),
        run_time_p50_ms: percentile(&mut runs, 0.50),
        run_time_p99_ms: percentile(&mut runs, 0.99),
        succeeded,
        failures: tasks.len() - succeeded,
        enqueue_errors,
        api_peak_rss_mib,
        worker_peak_rss_mib,
    })
}

/// Wait until none of `ids` is queued or running, then fetch them all.
async fn wait_for(
    client: &Client,
    agent: &str,
    ids: &HashSet<Uuid>,
    args: &BenchArgs,
    json: bool,
) -> anyhow::Result<Vec<Task>> {
    let progress = bar(ids.len() as u64, "finish", json);
    let deadline = Instant::now() + Duration::from_secs(args.wait_timeout_secs);
    loop {
        let open = count_open(client, agent).await?;
        progress.set_position(ids.len().saturating_sub(open) as u64);
        if open == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{open} tasks still open after {} s", args.wait_timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish_and_clear();
    // Walk the agent's tasks newest first until every one of ours is seen.
    let mut found = Vec::with_capacity(ids.len());
    let mut cursor = None;
    loop {
        let page = client
            .list_tasks(&TaskQuery {
                agent: Some(agent.to_owned()),
                limit: Some(500),
                cursor,
                ..Default::default()
            })
            .await?;
        found.extend(page.tasks.into_iter().filter(|t| ids.contains(&t.id)));
        match page.next_cursor {
            Some(next) if found.len() < ids.len() => cursor = Some(next),
            _ => break,
        }
    }
    Ok(found)
}

/// Tasks of `agent` still queued or running (counted up to a page, which is all the progress
/// bar needs; zero is exact).
async fn count_open(client: &Client, agent: &str) -> anyhow::Result<usize> {
    let mut open = 0;
    for status in [TaskStatus::Queued, TaskStatus::Running] {
        let page = client
            .list_tasks(&TaskQuery {
                status: Some(status),
                agent: Some(agent.to_owned()),
                limit: Some(500),
                cursor: None,
                full: false,
            })
            .await?;
        open += page.tasks.len();
    }
    Ok(open)
}

fn bar(len: u64, label: &'static str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label);
    bar
}

/// Nearest-rank percentile; sorts `values`.
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn print_table(r: &Report) {
    let rss = |v: Option<f64>| v.map_or("n/a".to_owned(), |m| format!("{m:.1} MiB"));
    let rows = [
        ("tasks", format!("{} ({} agent)", r.tasks, r.agent)),
        ("clients", r.concurrency.to_string()),
        ("engine", r.engine.unwrap_or("running system").to_owned()),
        (
            "workers",
            r.workers.map_or("existing".to_owned(), |w| w.to_string()),
        ),
        (
            "enqueue",
            format!(
                "{:.0} tasks/s ({:.2} s)",
                r.enqueue_per_sec, r.enqueue_seconds
            ),
        ),
        (
            "enqueue latency",
            format!(
                "p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms",
                r.enqueue_p50_ms, r.enqueue_p95_ms, r.enqueue_p99_ms
            ),
        ),
        (
            "end to end",
            format!(
                "{:.0} tasks/s ({:.2} s)",
                r.end_to_end_per_sec, r.end_to_end_seconds
            ),
        ),
        (
            "queue wait",
            format!(
                "p50 {:.2} ms  p99 {:.2} ms",
                r.queue_wait_p50_ms, r.queue_wait_p99_ms
            ),
        ),
        (
            "run time",
            format!(
                "p50 {:.2} ms  p99 {:.2} ms",
                r.run_time_p50_ms, r.run_time_p99_ms
            ),
        ),
        ("succeeded", r.succeeded.to_string()),
        (
            "failures",
            format!("{} (+{} refused enqueues)", r.failures, r.enqueue_errors),
        ),
        ("API peak RSS", rss(r.api_peak_rss_mib)),
        ("worker peak RSS", rss(r.worker_peak_rss_mib)),
    ];
    for (k, v) in rows {
        println!("{k:>16}  {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }
}
