//! The backlog figure the API exports as gauges: one statement of capped index scans.

use sqlx::PgExecutor;

use crate::Result;
use crate::store::{BACKLOG_COUNT_CAP, Backlog};

/// Tasks due, delayed and running, and the age of the oldest due task. The queued counts and the
/// oldest due task walk `tasks_queued_run_at_idx`, the running count `tasks_running_lease_idx`;
/// each count stops at [`BACKLOG_COUNT_CAP`] rows (the `limit` inside the subquery), so finished
/// rows are never read and a huge backlog costs a bounded scan.
pub async fn backlog(db: impl PgExecutor<'_>) -> Result<Backlog> {
    let (due, delayed, running, oldest): (i64, i64, i64, Option<f64>) = sqlx::query_as(
        "select
             (select count(*) from (select 1 from tasks
                                    where status = 'queued' and run_at <= now() limit $1) d),
             (select count(*) from (select 1 from tasks
                                    where status = 'queued' and run_at > now() limit $1) l),
             (select count(*) from (select 1 from tasks where status = 'running' limit $1) r),
             (select extract(epoch from now() - min(run_at))::float8 from tasks
              where status = 'queued' and run_at <= now())",
    )
    .bind(BACKLOG_COUNT_CAP)
    .fetch_one(db)
    .await?;
    Ok(Backlog {
        due,
        delayed,
        running,
        oldest_due_age_secs: oldest.unwrap_or(0.0).max(0.0),
    })
}
