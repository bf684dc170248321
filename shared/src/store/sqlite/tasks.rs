//! Tasks and their attempt records (`crate::db::tasks` is the specification).

use serde_json::json;
use sqlx::SqliteConnection;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

use super::SqliteStore;
use super::rows::{self, task_columns};
use crate::domain::{Attempt, NewTask, Task, TaskStatus};
use crate::store::{CancelOutcome, Inserted, TaskFilter};
use crate::{Error, Result};

/// Sorts after every 16-byte id: the keyset bound of a first page.
const AFTER_EVERY_ID: [u8; 17] = [0xff; 17];

/// Columns of a task summary: `meta` and `result` left unread (they can be 256 KiB and 1 MiB).
macro_rules! summary_columns {
    () => {
        "id, agent, command, null as meta, status, attempts, max_attempts, timeout_secs, \
         idempotency_key, run_at, published_at, worker_id, lease_until, null as result, \
         last_error, cancel_requested, created_at, started_at, finished_at, updated_at"
    };
}

/// The statements of `list_tasks`: no filter, status, agent, agent and status.
macro_rules! list_statements {
    ($columns:expr) => {
        [
            concat!(
                "select ",
                $columns,
                " from tasks where id < ? order by id desc limit ?"
            ),
            concat!(
                "select ",
                $columns,
                " from tasks where status = ? and id < ? order by id desc limit ?"
            ),
            concat!(
                "select ",
                $columns,
                " from tasks where agent = ? and id < ? order by id desc limit ?"
            ),
            concat!(
                "select ",
                $columns,
                " from tasks where agent = ? and status = ? and id < ? order by id desc limit ?"
            ),
        ]
    };
}

pub(super) const LIST_SUMMARY: [&str; 4] = list_statements!(summary_columns!());
pub(super) const LIST_FULL: [&str; 4] = list_statements!(task_columns!());

/// Insert a batch of tasks; those whose idempotency key is taken are skipped. `where true`
/// keeps SQLite from reading `on` as a join constraint; `order by key` inserts in input order,
/// so the first of two tasks with one key wins.
pub(super) const INSERT: &str = concat!(
    "\
    insert into tasks (id, agent, command, meta, idempotency_key, max_attempts,
                       timeout_secs, run_at, created_at, updated_at)
    select unhex(value ->> 0), value ->> 1, value ->> 2, value ->> 3, value ->> 4,
           value ->> 5, value ->> 6, value ->> 7, ?2, ?2
    from json_each(?1) where true order by key
    on conflict (idempotency_key) do nothing
    returning ",
    task_columns!()
);

/// The tasks holding the batch's idempotency keys.
pub(super) const BY_KEYS: &str = concat!(
    "select ",
    task_columns!(),
    " from tasks where idempotency_key in (select value from json_each(?1))"
);

/// Mark the batch's never-claimed queued ids published.
pub(super) const MARK_PUBLISHED: &str = "\
    update tasks set published_at = ?2
    where id in (select unhex(value) from json_each(?1))
      and published_at is null and status = 'queued' and started_at is null";

impl SqliteStore {
    /// Insert tasks in one transaction (one commit for the batch). When it fails for any reason
    /// but the store being unavailable, each task is tried again alone, so only the task that
    /// caused the failure fails: one client's input never fails another client's request.
    pub(super) async fn insert_each(&self, tasks: &[NewTask]) -> Vec<Result<Inserted>> {
        if tasks.is_empty() {
            return Vec::new();
        }
        match self.insert_batch(tasks).await {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(Error::DatabaseUnavailable(reason)) => tasks
                .iter()
                .map(|_| Err(Error::DatabaseUnavailable(reason.clone())))
                .collect(),
            Err(e) if tasks.len() == 1 => {
                tracing::warn!(task_id = %tasks[0].id, error = %e, "the store refused a task");
                vec![Err(e)]
            }
            Err(e) => {
                tracing::warn!(
                    tasks = tasks.len(),
                    error = %e,
                    "a shared insert failed; inserting one by one"
                );
                let mut results = Vec::with_capacity(tasks.len());
                for task in tasks {
                    let one = self.insert_batch(std::slice::from_ref(task)).await;
                    results.push(one.and_then(|rows| {
                        rows.into_iter()
                            .next()
                            .ok_or(Error::Database(Box::new(sqlx::Error::RowNotFound)))
                    }));
                }
                results
            }
        }
    }

    /// Insert tasks in one statement (one commit for the batch: group commit). A task whose
    /// idempotency key exists (in the table, or earlier in the batch: the first wins) is not
    /// inserted; its existing row is returned. Results in input order.
    async fn insert_batch(&self, tasks: &[NewTask]) -> Result<Vec<Inserted>> {
        let mut tx = self.write().await?;
        let now = rows::now();
        let input = rows::batch(tasks.iter().map(|t| {
            let delay = Duration::from_secs(u64::try_from(t.delay_secs).unwrap_or(0));
            json!([
                rows::hex(t.id),
                t.agent,
                t.command,
                rows::json_text(&t.meta),
                t.idempotency_key,
                t.max_attempts,
                t.timeout_secs,
                rows::after(now, delay)
            ])
        }));
        let created: Vec<Task> = sqlx::query(INSERT)
            .bind(input)
            .bind(now)
            .try_map(rows::task)
            .fetch_all(&mut *tx)
            .await?;

        let mut by_id: HashMap<Uuid, Task> = created.into_iter().map(|t| (t.id, t)).collect();
        let missing_keys: Vec<&str> = tasks
            .iter()
            .filter(|t| !by_id.contains_key(&t.id))
            .filter_map(|t| t.idempotency_key.as_deref())
            .collect();
        let by_key: HashMap<String, Task> = if missing_keys.is_empty() {
            HashMap::new()
        } else {
            let existing: Vec<Task> = sqlx::query(BY_KEYS)
                .bind(rows::batch(missing_keys.iter().map(|k| json!(k))))
                .try_map(rows::task)
                .fetch_all(&mut *tx)
                .await?;
            existing
                .into_iter()
                .filter_map(|t| t.idempotency_key.clone().map(|k| (k, t)))
                .collect()
        };
        tx.commit().await?;

        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Some(task) = by_id.remove(&t.id) {
                out.push(Inserted {
                    task,
                    created: true,
                });
                continue;
            }
            // Not inserted, so its key was taken: the holder was read in the same transaction.
            let key = t.idempotency_key.as_deref().unwrap_or_default();
            let task = by_key
                .get(key)
                .cloned()
                .ok_or(Error::Database(Box::new(sqlx::Error::RowNotFound)))?;
            out.push(Inserted {
                task,
                created: false,
            });
        }
        Ok(out)
    }

    /// Record that the queue confirmed these new tasks' first messages. Only rows no worker ever
    /// claimed are marked: a task claimed and sent back has had its first message consumed and
    /// must stay unpublished, or the relay would never publish it again.
    pub(super) async fn mark_published_rows(&self, ids: &[Uuid]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.writer().await?;
        let done = sqlx::query(MARK_PUBLISHED)
            .bind(rows::id_batch(ids))
            .bind(rows::now())
            .execute(&mut *conn)
            .await?;
        Ok(done.rows_affected())
    }

    pub(super) async fn get_task(&self, id: Uuid) -> Result<Option<Task>> {
        Ok(sqlx::query(concat!(
            "select ",
            task_columns!(),
            " from tasks where id = ?1"
        ))
        .bind(id)
        .try_map(rows::task)
        .fetch_optional(&self.readers)
        .await?)
    }

    /// Which of `ids` are final now, looked up on the primary key.
    pub(super) async fn final_task_ids(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "select id from tasks
             where id in (select unhex(value) from json_each(?1))
               and status in ('succeeded', 'failed', 'cancelled')",
        )
        .bind(rows::id_batch(ids))
        .fetch_all(&self.readers)
        .await?)
    }

    /// Tasks newest first, one page; summaries unless `filter.full`. One statement per
    /// combination of filters, so each walks the index that serves it: the primary key,
    /// `(status, id)`, `(agent, id)` or `(agent, status, id)`.
    pub(super) async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let statements = if filter.full {
            &LIST_FULL
        } else {
            &LIST_SUMMARY
        };
        let sql = match (filter.status.is_some(), filter.agent.is_some()) {
            (false, false) => statements[0],
            (true, false) => statements[1],
            (false, true) => statements[2],
            (true, true) => statements[3],
        };
        let mut query = sqlx::query(sql);
        if let Some(agent) = &filter.agent {
            query = query.bind(agent.as_str());
        }
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        query = match filter.before {
            Some(before) => query.bind(before),
            None => query.bind(&AFTER_EVERY_ID[..]),
        };
        // SQLite reads a negative limit as "no limit".
        Ok(query
            .bind(filter.limit.max(0))
            .try_map(rows::task)
            .fetch_all(&self.readers)
            .await?)
    }

    /// Cancel a task: at once when queued, by request when running. One statement decides, so
    /// a task claimed, retried or finished meanwhile is never missed; the writer connection is
    /// held until the task is read back, so nothing changes it in between.
    pub(super) async fn cancel_task(&self, id: Uuid) -> Result<CancelOutcome> {
        let mut conn = self.writer().await?;
        let now = rows::now();
        let changed = sqlx::query(concat!(
            "update tasks set
                 status = case when status = 'queued' then 'cancelled' else status end,
                 finished_at = case when status = 'queued' then ?2 else finished_at end,
                 lease_until = case when status = 'queued' then null else lease_until end,
                 last_error = case when status = 'queued' then 'cancelled by request'
                                   else last_error end,
                 cancel_requested = cancel_requested or status = 'running',
                 updated_at = ?2
             where id = ?1 and status in ('queued', 'running') returning ",
            task_columns!()
        ))
        .bind(id)
        .bind(now)
        .try_map(rows::task)
        .fetch_optional(&mut *conn)
        .await?;
        // Terminal statuses never change again, so a task the update did not match is finished.
        let outcome = match changed {
            Some(task) if task.status == TaskStatus::Cancelled => CancelOutcome::Cancelled(task),
            Some(task) => CancelOutcome::Requested(task),
            None => match select_task(&mut conn, id).await? {
                Some(task) => CancelOutcome::AlreadyFinished(task),
                None => CancelOutcome::NotFound,
            },
        };
        Ok(outcome)
    }

    /// Attempt records newest first, one page.
    pub(super) async fn list_attempts(
        &self,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Attempt>> {
        let sql = if before.is_some() {
            "select a.id, a.task_id, a.attempt, a.agent, t.command, a.worker_id, a.outcome,
                    a.error, a.started_at, a.finished_at
             from task_attempts a join tasks t on t.id = a.task_id
             where a.id < ? order by a.id desc limit ?"
        } else {
            "select a.id, a.task_id, a.attempt, a.agent, t.command, a.worker_id, a.outcome,
                    a.error, a.started_at, a.finished_at
             from task_attempts a join tasks t on t.id = a.task_id
             order by a.id desc limit ?"
        };
        let mut query = sqlx::query(sql);
        if let Some(before) = before {
            query = query.bind(before);
        }
        Ok(query
            .bind(limit.max(0))
            .try_map(rows::attempt)
            .fetch_all(&self.readers)
            .await?)
    }
}

/// One task, read on the writer connection.
pub(super) async fn select_task(conn: &mut SqliteConnection, id: Uuid) -> Result<Option<Task>> {
    Ok(sqlx::query(concat!(
        "select ",
        task_columns!(),
        " from tasks where id = ?1"
    ))
    .bind(id)
    .try_map(rows::task)
    .fetch_optional(conn)
    .await?)
}
