//! Retention: deleting finished tasks (with their attempt records) and the rows of workers gone
//! for long, in bounded batches that skip whatever the hot path holds.

use sqlx::PgExecutor;

use crate::domain::TaskStatus;
use crate::store::Pruned;
use crate::{Error, Result};

/// Key of the advisory lock that lets one worker at a time prune.
const PRUNE_LOCK: i64 = 0x6267_6167_656e_7432;

/// Only finished tasks are ever pruned; anything else is a caller's mistake.
pub(crate) fn require_finished(status: TaskStatus) -> Result<()> {
    if status.is_terminal() {
        Ok(())
    } else {
        Err(Error::invalid(
            "status",
            format!("only finished tasks are pruned, not {status} ones"),
        ))
    }
}

/// Take the prune lock for the rest of the caller's transaction; false when another worker
/// holds it.
pub async fn try_lock_prune(tx: &mut sqlx::PgConnection) -> Result<bool> {
    Ok(sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
        .bind(PRUNE_LOCK)
        .fetch_one(tx)
        .await?)
}

/// The statement of [`prune_tasks`] (public for the tests that check its plan).
pub const PRUNE_TASKS: &str = "with gone as (
         delete from tasks where id = any(array(
             select id from tasks
             where status = $1 and status in ('succeeded', 'failed', 'cancelled')
               and finished_at < now() - make_interval(secs => $2)
             order by finished_at
             limit $3
             for update skip locked))
         returning id
     ),
     attempts as (
         delete from task_attempts where task_id = any(array(select id from gone))
         returning 1
     )
     select (select count(*) from gone), (select count(*) from attempts)";

/// Delete up to `limit` tasks of the finished `status` that finished more than `age_secs` ago,
/// oldest first, and their attempt records, in one statement. Rows another transaction holds
/// are skipped (a late record or a cancel is on them: the next pass takes them). Call again
/// until fewer than `limit` tasks come back.
///
/// The repeated status list lets the planner use the partial `tasks_finished_idx` whatever
/// status is bound, so a batch reads only the rows it deletes. Attempts are found by the
/// `(task_id, attempt)` key through an array, so a batch never scans the attempts table (no
/// foreign key deletes them: see migration 20261125160000). Tasks are deleted through an array
/// too: with `id in (…)` the planner may hash the batch and scan the whole table.
pub async fn prune_tasks(
    db: impl PgExecutor<'_>,
    status: TaskStatus,
    age_secs: f64,
    limit: i64,
) -> Result<Pruned> {
    require_finished(status)?;
    let (tasks, attempts): (i64, i64) = sqlx::query_as(PRUNE_TASKS)
        .bind(status.as_str())
        .bind(age_secs)
        .bind(limit)
        .fetch_one(db)
        .await?;
    Ok(Pruned {
        tasks: u64::try_from(tasks).unwrap_or_default(),
        attempts: u64::try_from(attempts).unwrap_or_default(),
    })
}

/// Delete up to `limit` rows of workers not seen for `age_secs` (stopped, or gone without
/// stopping: a stop also sets `last_seen`). Returns how many.
pub async fn prune_workers(db: impl PgExecutor<'_>, age_secs: f64, limit: i64) -> Result<u64> {
    let done = sqlx::query(
        "delete from workers where id in (
             select id from workers
             where last_seen < now() - make_interval(secs => $1)
             limit $2
             for update skip locked)",
    )
    .bind(age_secs)
    .bind(limit)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
