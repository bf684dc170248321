//! Retry and redrive: failed or cancelled tasks queued again under their ids.

use sqlx::PgExecutor;
use uuid::Uuid;

use super::rows::TaskRow;
use crate::domain::{Task, TaskEvent, TaskStatus};
use crate::store::{RetryFilter, RetryOutcome};
use crate::{Error, Result, task_columns};

/// The `set` list of a retry. Attempt numbers keep counting (the earlier `task_attempts` rows
/// stay, keyed on `(task_id, attempt)`), so the fresh budget is `attempts + attempt_budget`.
/// `attempt_budget` is null until the first retry, while `max_attempts` still holds it.
/// `started_at` is cleared so that `mark_published` treats the row as a new one.
macro_rules! retry_set {
    () => {
        "status = 'queued',
         attempt_budget = coalesce(attempt_budget, max_attempts),
         max_attempts = attempts + coalesce(attempt_budget, max_attempts),
         run_at = now(), published_at = null, worker_id = null, lease_until = null,
         result = null, last_error = null, cancel_requested = false,
         started_at = null, finished_at = null, updated_at = now()"
    };
}

/// Only a failed or cancelled task is retried.
pub(crate) fn require_retryable(status: TaskStatus) -> Result<()> {
    match status {
        TaskStatus::Failed | TaskStatus::Cancelled => Ok(()),
        other => Err(Error::invalid(
            "status",
            format!("only failed or cancelled tasks are retried, not {other} ones"),
        )),
    }
}

/// Queue one failed or cancelled task again. The `where` decides under the row lock, so a task
/// another request retried meanwhile is reported as queued, not retried twice.
pub async fn retry(db: &sqlx::PgPool, id: Uuid) -> Result<RetryOutcome> {
    let changed: Option<TaskRow> = sqlx::query_as(concat!(
        "update tasks set ",
        retry_set!(),
        " where id = $1 and status in ('failed', 'cancelled') returning ",
        task_columns!()
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(match changed {
        Some(row) => RetryOutcome::Retried(Task::from(row)),
        None => match super::tasks::get(db, id).await? {
            Some(task) => RetryOutcome::NotRetryable(task),
            None => RetryOutcome::NotFound,
        },
    })
}

/// The statement of [`retry_batch`]. The batch is chosen as `prune_tasks` chooses its own (the
/// repeated status list lets the partial `tasks_finished_idx` serve it; ids go through an array
/// so the update walks the primary key), and rows another transaction holds are skipped.
pub const RETRY_BATCH: &str = concat!(
    "update tasks set ",
    retry_set!(),
    " where id = any(array(
         select id from tasks
         where status = $1 and status in ('failed', 'cancelled')
           and ($2::text is null or agent = $2)
           and ($3::timestamptz is null or finished_at > $3)
         order by finished_at
         limit $4
         for update skip locked))
       and status in ('failed', 'cancelled')
     returning id, agent, attempts, updated_at"
);

/// Queue again up to `limit` tasks matching `filter`; returns them as they are now.
pub async fn retry_batch(
    db: impl PgExecutor<'_>,
    filter: &RetryFilter,
    limit: i64,
) -> Result<Vec<TaskEvent>> {
    require_retryable(filter.status)?;
    let done = sqlx::query_as(RETRY_BATCH)
        .bind(filter.status.as_str())
        .bind(filter.agent.as_deref())
        .bind(filter.finished_after)
        .bind(limit)
        .fetch_all(db)
        .await?;
    Ok(super::runs::events(done, TaskStatus::Queued))
}
