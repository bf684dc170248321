//! The backlog figure of the embedded engine: capped index scans on a read connection.

use super::SqliteStore;
use super::rows;
use crate::Result;
use crate::store::{BACKLOG_COUNT_CAP, Backlog};

impl SqliteStore {
    /// Tasks due, delayed and running, and the age of the oldest due task, on the partial
    /// indexes of queued (`tasks_queued_run_at_idx`) and running rows; each count stops at
    /// [`BACKLOG_COUNT_CAP`]. The indexes are named: without statistics (no `ANALYZE`) SQLite
    /// prefers `tasks_status_id_idx` and would read every queued row for each figure.
    pub(super) async fn count_backlog(&self) -> Result<Backlog> {
        let now = rows::now();
        let (due, delayed, running, oldest): (i64, i64, i64, Option<i64>) = sqlx::query_as(
            "select
                 (select count(*) from (select 1 from tasks indexed by tasks_queued_run_at_idx
                                        where status = 'queued' and run_at <= ?1 limit ?2)),
                 (select count(*) from (select 1 from tasks indexed by tasks_queued_run_at_idx
                                        where status = 'queued' and run_at > ?1 limit ?2)),
                 (select count(*) from (select 1 from tasks indexed by tasks_running_lease_idx
                                        where status = 'running' limit ?2)),
                 (select min(run_at) from tasks indexed by tasks_queued_run_at_idx
                  where status = 'queued' and run_at <= ?1)",
        )
        .bind(now)
        .bind(BACKLOG_COUNT_CAP)
        .fetch_one(&self.readers)
        .await?;
        // Microseconds to seconds; an age is never negative.
        #[allow(clippy::cast_precision_loss)]
        let age = oldest.map_or(0.0, |at| now.saturating_sub(at).max(0) as f64 / 1e6);
        Ok(Backlog {
            due,
            delayed,
            running,
            oldest_due_age_secs: age,
        })
    }
}
