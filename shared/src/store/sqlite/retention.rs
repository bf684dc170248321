//! Retention (`crate::db::retention` is the specification). Each batch is one short write
//! transaction on the writer connection, which is given back between batches, so enqueues,
//! claims and records waiting for it go first.

use std::time::Duration;
use uuid::Uuid;

use super::SqliteStore;
use super::rows;
use crate::Result;
use crate::db::retention::require_finished;
use crate::domain::TaskStatus;
use crate::store::Pruned;

/// Up to `?3` tasks of the finished status `?1` that finished before `?2`, oldest first. The
/// repeated status list lets SQLite use the partial `tasks_finished_idx` (it matches an index's
/// predicate only word for word).
pub(super) const PRUNE_TASKS: &str = "delete from tasks where id in (
         select id from tasks
         where status = ?1 and status in ('succeeded', 'failed', 'cancelled')
           and finished_at < ?2
         order by finished_at
         limit ?3)
     returning id";

impl SqliteStore {
    /// Delete up to `limit` tasks of the finished `status` that finished more than `age` ago,
    /// oldest first, and their attempt records.
    pub(super) async fn prune_task_rows(
        &self,
        status: TaskStatus,
        age: Duration,
        limit: i64,
    ) -> Result<Pruned> {
        require_finished(status)?;
        let mut tx = self.write().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(PRUNE_TASKS)
            .bind(status.as_str())
            .bind(rows::before(rows::now(), age))
            .bind(limit.max(0))
            .fetch_all(&mut *tx)
            .await?;
        let attempts = if ids.is_empty() {
            0
        } else {
            sqlx::query(
                "delete from task_attempts where task_id in (select unhex(value) from json_each(?1))",
            )
            .bind(rows::id_batch(&ids))
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        tx.commit().await?;
        Ok(Pruned {
            tasks: ids.len() as u64,
            attempts,
        })
    }

    /// Delete up to `limit` rows of workers not seen for `age`.
    pub(super) async fn prune_worker_rows(&self, age: Duration, limit: i64) -> Result<u64> {
        let mut conn = self.writer().await?;
        let deleted = sqlx::query(
            "delete from workers where id in (
                 select id from workers where last_seen < ?1 limit ?2)",
        )
        .bind(rows::before(rows::now(), age))
        .bind(limit.max(0))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(deleted)
    }
}
