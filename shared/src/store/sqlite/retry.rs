//! Retry and redrive (`crate::db::retry` is the specification).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::SqliteStore;
use super::rows::{self, task_columns};
use super::tasks::select_task;
use crate::Result;
use crate::db::retry::require_retryable;
use crate::domain::{TaskEvent, TaskStatus};
use crate::store::{RetryFilter, RetryOutcome};

/// The `set` list of a retry; `?1` is the store's time now.
macro_rules! retry_set {
    () => {
        "status = 'queued',
         attempt_budget = coalesce(attempt_budget, max_attempts),
         max_attempts = attempts + coalesce(attempt_budget, max_attempts),
         run_at = ?1, published_at = null, worker_id = null, lease_until = null,
         result = null, last_error = null, cancel_requested = 0,
         started_at = null, finished_at = null, updated_at = ?1"
    };
}

impl SqliteStore {
    /// Queue one failed or cancelled task again.
    pub(super) async fn retry_task(&self, id: Uuid) -> Result<RetryOutcome> {
        let mut conn = self.writer().await?;
        let changed = sqlx::query(concat!(
            "update tasks set ",
            retry_set!(),
            " where id = ?2 and status in ('failed', 'cancelled') returning ",
            task_columns!()
        ))
        .bind(rows::now())
        .bind(id)
        .try_map(rows::task)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(match changed {
            Some(task) => RetryOutcome::Retried(task),
            None => match select_task(&mut conn, id).await? {
                Some(task) => RetryOutcome::NotRetryable(task),
                None => RetryOutcome::NotFound,
            },
        })
    }

    /// Queue again up to `limit` tasks matching `filter`, oldest finished first (one writer, so
    /// no row is in use elsewhere).
    pub(super) async fn retry_task_rows(
        &self,
        filter: &RetryFilter,
        limit: i64,
    ) -> Result<Vec<TaskEvent>> {
        require_retryable(filter.status)?;
        let mut conn = self.writer().await?;
        let done = sqlx::query(concat!(
            "update tasks set ",
            retry_set!(),
            " where id in (
                 select id from tasks
                 where status = ?2 and status in ('failed', 'cancelled')
                   and (?3 is null or agent = ?3)
                   and (?4 is null or finished_at > ?4)
                 order by finished_at
                 limit ?5)
             returning id, agent, attempts, updated_at"
        ))
        .bind(rows::now())
        .bind(filter.status.as_str())
        .bind(filter.agent.as_deref())
        .bind(
            filter
                .finished_after
                .map(|t: DateTime<Utc>| t.timestamp_micros()),
        )
        .bind(limit)
        .try_map(|row| rows::event(&row, TaskStatus::Queued))
        .fetch_all(&mut *conn)
        .await?;
        Ok(done)
    }
}
