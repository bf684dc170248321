//! `bgagent bench --spawn --prefill N`: fill the spawned system's database with N finished tasks,
//! then time the first page of every filter combination `GET /tasks` offers (and of
//! `GET /processed`), so a list that an index does not serve shows at once.

use anyhow::Context;
use bgagent_client::{Client, PageQuery, TaskQuery, TaskStatus};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Timed runs of each page; the median is reported.
pub const RUNS: usize = 7;

/// The median time of one list's first page.
#[derive(Debug, Serialize)]
pub struct ListFigure {
    /// The query string.
    pub query: String,
    /// Tasks (or attempts) on the page.
    pub rows: usize,
    /// Median milliseconds over the runs, client to client (HTTP and JSON included).
    pub median_ms: f64,
    /// Slowest run.
    pub max_ms: f64,
}

/// Fill `database_url` with `rows` finished tasks and their attempts.
pub async fn prefill(database_url: &str, rows: i64, quiet: bool) -> anyhow::Result<f64> {
    let config = bgagent_shared::config::DatabaseConfig {
        database_url: Some(database_url.to_owned().into()),
        db_pool_size: 1,
        db_acquire_timeout_secs: 30,
    };
    let pool = bgagent_shared::db::pool(&config, "bgagent-bench-prefill")?;
    if !quiet {
        eprintln!("filling {rows} finished tasks…");
    }
    let started = Instant::now();
    bgagent_shared::db::prefill::finished_tasks(&pool, rows)
        .await
        .context("fill the database")?;
    pool.close().await;
    Ok(started.elapsed().as_secs_f64())
}

/// Time the first page of each list filter: no filter, each status, an agent, an agent with
/// each status, an agent without tasks; pages of 50 (the default) and 500 (the most), summaries; one page of 500 in
/// full; and `GET /processed`.
pub async fn measure(client: &Client) -> anyhow::Result<Vec<ListFigure>> {
    let agent = || Some("echo".to_owned());
    let mut queries: Vec<TaskQuery> = vec![TaskQuery::default()];
    for status in TaskStatus::ALL {
        queries.push(TaskQuery {
            status: Some(status),
            ..Default::default()
        });
    }
    queries.push(TaskQuery {
        agent: agent(),
        ..Default::default()
    });
    for status in TaskStatus::ALL {
        queries.push(TaskQuery {
            status: Some(status),
            agent: agent(),
            ..Default::default()
        });
    }
    // An agent with no task: a plan that walked the primary key would read every row.
    for status in [None, Some(TaskStatus::Succeeded)] {
        queries.push(TaskQuery {
            status,
            agent: Some("nobody".to_owned()),
            ..Default::default()
        });
    }
    let mut figures = Vec::new();
    for limit in [50, 500] {
        for query in &queries {
            let query = TaskQuery {
                limit: Some(limit),
                ..query.clone()
            };
            let label = describe(&query);
            let (rows, times) =
                timed(|| async { Ok(client.list_tasks(&query).await?.tasks.len()) }).await?;
            figures.push(figure(label, rows, times));
        }
    }
    let full = TaskQuery {
        limit: Some(500),
        full: true,
        ..Default::default()
    };
    let (rows, times) = timed(|| async { Ok(client.list_tasks(&full).await?.tasks.len()) }).await?;
    figures.push(figure(describe(&full), rows, times));
    for limit in [50, 500] {
        let page = PageQuery {
            limit: Some(limit),
            cursor: None,
        };
        let (rows, times) =
            timed(|| async { Ok(client.processed(&page).await?.processed.len()) }).await?;
        figures.push(figure(format!("/processed?limit={limit}"), rows, times));
    }
    Ok(figures)
}

fn describe(query: &TaskQuery) -> String {
    let mut parts = Vec::new();
    if let Some(status) = query.status {
        parts.push(format!("status={}", status.as_str()));
    }
    if let Some(agent) = &query.agent {
        parts.push(format!("agent={agent}"));
    }
    if let Some(limit) = query.limit {
        parts.push(format!("limit={limit}"));
    }
    if query.full {
        parts.push("full=true".to_owned());
    }
    format!("/tasks?{}", parts.join("&"))
}

/// One warm-up call, then [`RUNS`] timed calls.
async fn timed<F, Fut>(call: F) -> anyhow::Result<(usize, Vec<Duration>)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let rows = call().await?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        call().await?;
        times.push(started.elapsed());
    }
    Ok((rows, times))
}

pub fn figure(query: String, rows: usize, mut times: Vec<Duration>) -> ListFigure {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    ListFigure {
        query,
        rows,
        median_ms: times.get(times.len() / 2).copied().map_or(0.0, ms),
        max_ms: times.last().copied().map_or(0.0, ms),
    }
}

/// The figures as a table.
pub fn print(figures: &[ListFigure]) {
    println!(
        "{:<44} {:>5} {:>11} {:>9}",
        "first page", "rows", "median ms", "max ms"
    );
    for f in figures {
        println!(
            "{:<44} {:>5} {:>11.2} {:>9.2}",
            f.query, f.rows, f.median_ms, f.max_ms
        );
    }
}
