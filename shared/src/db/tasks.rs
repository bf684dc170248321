//! Tasks and their attempt records.

use sqlx::PgExecutor;
use uuid::Uuid;

use super::rows::{self, AttemptRow, TaskRow};
use crate::Result;
use crate::domain::{Attempt, NewTask, Task, TaskStatus};
use crate::store::{CancelOutcome, Inserted, TaskFilter};

/// Columns of [`Task`], in one place so every query returns the same shape.
#[macro_export]
#[doc(hidden)]
macro_rules! task_columns {
    () => {
        "id, agent, command, meta, status, attempts, max_attempts, timeout_secs, idempotency_key, \
         run_at, published_at, worker_id, lease_until, result, last_error, cancel_requested, \
         created_at, started_at, finished_at, updated_at"
    };
}

/// Insert many tasks in one statement (one commit for the whole batch: group commit).
/// A task whose idempotency key exists already is not inserted; its existing row is returned.
/// Results are in input order.
pub async fn insert_batch(db: &sqlx::PgPool, tasks: &[NewTask]) -> Result<Vec<Inserted>> {
    let ids: Vec<Uuid> = tasks.iter().map(|t| t.id).collect();
    let agents: Vec<&str> = tasks.iter().map(|t| t.agent.as_str()).collect();
    let commands: Vec<&str> = tasks.iter().map(|t| t.command.as_str()).collect();
    let metas: Vec<&serde_json::Value> = tasks.iter().map(|t| &t.meta).collect();
    let keys: Vec<Option<&str>> = tasks.iter().map(|t| t.idempotency_key.as_deref()).collect();
    let max_attempts: Vec<i32> = tasks.iter().map(|t| t.max_attempts).collect();
    let timeouts: Vec<i32> = tasks.iter().map(|t| t.timeout_secs).collect();
    let delays: Vec<f64> = tasks.iter().map(|t| t.delay_secs as f64).collect();

    // `on conflict do nothing` also settles duplicate keys inside one batch: the first row wins.
    let created: Vec<TaskRow> = sqlx::query_as(concat!(
        "insert into tasks (id, agent, command, meta, idempotency_key, max_attempts, timeout_secs, run_at)
         select id, agent, command, meta, key, max_attempts, timeout_secs,
                now() + make_interval(secs => delay)
         from unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::int[],
                     $7::int[], $8::float8[])
              as t(id, agent, command, meta, key, max_attempts, timeout_secs, delay)
         order by id
         on conflict (idempotency_key) do nothing
         returning ",
        task_columns!()
    ))
    .bind(&ids)
    .bind(&agents)
    .bind(&commands)
    .bind(&metas)
    .bind(&keys)
    .bind(&max_attempts)
    .bind(&timeouts)
    .bind(&delays)
    .fetch_all(db)
    .await?;

    let mut by_id: std::collections::HashMap<Uuid, Task> = created
        .into_iter()
        .map(Task::from)
        .map(|t| (t.id, t))
        .collect();
    let missing_keys: Vec<&str> = tasks
        .iter()
        .filter(|t| !by_id.contains_key(&t.id))
        .filter_map(|t| t.idempotency_key.as_deref())
        .collect();
    let mut by_key: std::collections::HashMap<String, Task> = if missing_keys.is_empty() {
        Default::default()
    } else {
        let existing: Vec<TaskRow> = sqlx::query_as(concat!(
            "select ",
            task_columns!(),
            " from tasks where idempotency_key = any($1)"
        ))
        .bind(&missing_keys)
        .fetch_all(db)
        .await?;
        existing
            .into_iter()
            .map(Task::from)
            .filter_map(|t| t.idempotency_key.clone().map(|k| (k, t)))
            .collect()
    };

    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Some(task) = by_id.remove(&t.id) {
            out.push(Inserted {
                task,
                created: true,
            });
            continue;
        }
        let key = t.idempotency_key.as_deref().unwrap_or_default();
        let task = match by_key.get(key) {
            Some(task) => task.clone(),
            // The conflicting row vanished between the statements (deleted by an operator).
            None => {
                return Err(crate::Error::Database(Box::new(sqlx::Error::RowNotFound)));
            }
        };
        by_key.insert(key.to_owned(), task.clone());
        out.push(Inserted {
            task,
            created: false,
        });
    }
    Ok(out)
}

/// Insert many tasks as [`insert_batch`] does, with one result per task. When the shared
/// statement fails for any reason but the database being unreachable, the batch is split in
/// halves and each half tried again, so only the task that caused the failure fails: one
/// client's input never fails another client's request.
pub async fn insert_each(db: &sqlx::PgPool, tasks: &[NewTask]) -> Vec<Result<Inserted>> {
    match insert_batch(db, tasks).await {
        Ok(rows) => rows.into_iter().map(Ok).collect(),
        Err(crate::Error::DatabaseUnavailable(reason)) => tasks
            .iter()
            .map(|_| Err(crate::Error::DatabaseUnavailable(reason.clone())))
            .collect(),
        Err(e) if tasks.len() == 1 => {
            tracing::warn!(task_id = %tasks[0].id, error = %e, "the database refused a task");
            vec![Err(e)]
        }
        Err(e) => {
            tracing::warn!(tasks = tasks.len(), error = %e, "a shared insert failed; splitting it");
            let (left, right) = tasks.split_at(tasks.len() / 2);
            let mut results = Box::pin(insert_each(db, left)).await;
            results.extend(Box::pin(insert_each(db, right)).await);
            results
        }
    }
}

/// Record that the broker confirmed these new tasks' first messages. Only rows no worker ever
/// claimed are marked: a task a worker claimed and then sent back (a retry, or a hand-back on
/// shutdown, which also returns `attempts` to 0) has had its first message consumed and must stay
/// unpublished, or the relay would never publish it again.
pub async fn mark_published(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<u64> {
    let done = sqlx::query(
        "update tasks set published_at = now()
         where id = any($1)
           and (published_at is null and status = 'queued' and started_at is null) is true",
    )
    .bind(ids)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// One task.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Task>> {
    let row: Option<TaskRow> = sqlx::query_as(concat!(
        "select ",
        task_columns!(),
        " from tasks where id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(Task::from))
}

/// Which of `ids` are final now; the primary key serves `id = any($1)`.
pub async fn final_among(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "select id from tasks
         where id = any($1) and status in ('succeeded', 'failed', 'cancelled')",
    )
    .bind(ids)
    .fetch_all(db)
    .await?)
}

/// Columns of a task summary: [`task_columns!`] with `meta` and `result` left unread.
macro_rules! summary_columns {
    () => {
        "id, agent, command, null::jsonb as meta, status, attempts, max_attempts, timeout_secs, \
         idempotency_key, run_at, published_at, worker_id, lease_until, null::jsonb as result, \
         last_error, cancel_requested, created_at, started_at, finished_at, updated_at"
    };
}

/// The statements of [`list`], one per filter combination and column set, each served by its
/// index whatever the statistics say, because a prepared statement keeps one generic plan for
/// every value of its parameters:
/// - a catch-all `($1 is null or status = $1)` can use no index for its filter;
/// - `status = $1` makes the status a constant the planner drops from the ordering, so the
///   primary key can serve `order by id desc` too, and with a parameter's average selectivity
///   (a third, for three statuses in the table) the generic plan walked the primary key: through
///   every finished task to find a page of queued ones (measured in `tests/integration/plans.rs`).
///
/// So the filtered column is compared with `= any(array[$1])`, which an index serves as it
/// serves `= $1` but which leaves the column in the ordering, and the page is ordered on it: only
/// the index that starts with it returns the page in order, and the primary key would have to
/// sort every matching row. `id < $n` is always there (the cursor, or past every id), so one
/// statement serves the first page and the next.
macro_rules! list_statements {
    ($columns:expr) => {
        [
            // The primary key.
            concat!(
                "select ",
                $columns,
                " from tasks where id < $1 order by id desc limit $2"
            ),
            // tasks_status_id_idx (status, id desc).
            concat!(
                "select ",
                $columns,
                " from tasks where status = any(array[$1]) and id < $2
                  order by status, id desc limit $3"
            ),
            // tasks_agent_id_idx (agent, id desc).
            concat!(
                "select ",
                $columns,
                " from tasks where agent = any(array[$1]) and id < $2
                  order by agent, id desc limit $3"
            ),
            // tasks_agent_status_id_idx (agent, status, id desc); the status may be a plain
            // equality: the agent already keeps the primary key out.
            concat!(
                "select ",
                $columns,
                " from tasks where agent = any(array[$1]) and status = $2 and id < $3
                  order by agent, id desc limit $4"
            ),
        ]
    };
}

const LIST_SUMMARY: [&str; 4] = list_statements!(summary_columns!());
const LIST_FULL: [&str; 4] = list_statements!(task_columns!());

/// Past every UUID: the cursor of a first page.
const AFTER_EVERY_ID: Uuid = Uuid::max();

/// The statement [`list`] runs for this filter (public for the plan tests).
#[doc(hidden)]
pub fn list_statement(filter: &TaskFilter) -> &'static str {
    let statements = if filter.full {
        &LIST_FULL
    } else {
        &LIST_SUMMARY
    };
    match (filter.status.is_some(), filter.agent.is_some()) {
        (false, false) => statements[0],
        (true, false) => statements[1],
        (false, true) => statements[2],
        (true, true) => statements[3],
    }
}

/// Tasks newest first, one page; summaries unless `filter.full`.
pub async fn list(db: impl PgExecutor<'_>, filter: &TaskFilter) -> Result<Vec<Task>> {
    let mut query = sqlx::query_as::<_, TaskRow>(list_statement(filter));
    if let Some(agent) = &filter.agent {
        query = query.bind(agent.as_str());
    }
    if let Some(status) = filter.status {
        query = query.bind(status.as_str());
    }
    let rows = query
        .bind(filter.before.unwrap_or(AFTER_EVERY_ID))
        .bind(filter.limit)
        .fetch_all(db)
        .await?;
    Ok(rows::all(rows))
}

/// Cancel a task: at once when queued, by request when running. One statement decides under
/// the row lock, so a task that is claimed, retried or finished meanwhile is never missed: it is
/// cancelled if it was queued, flagged if it was running, and left alone if it had finished.
pub async fn cancel(db: &sqlx::PgPool, id: Uuid) -> Result<CancelOutcome> {
    let changed: Option<TaskRow> = sqlx::query_as(concat!(
        "update tasks set
                status = case when status = 'queued' then 'cancelled' else status end,
                finished_at = case when status = 'queued' then now() else finished_at end,
                lease_until = case when status = 'queued' then null else lease_until end,
                last_error = case when status = 'queued' then 'cancelled by request'
                                  else last_error end,
                cancel_requested = cancel_requested or status = 'running',
                updated_at = now()
         where id = $1 and status in ('queued', 'running') returning ",
        task_columns!()
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    // Terminal statuses never change again, so a task the update did not match is finished.
    Ok(match changed.map(Task::from) {
        Some(task) if task.status == TaskStatus::Cancelled => CancelOutcome::Cancelled(task),
        Some(task) => CancelOutcome::Requested(task),
        None => match get(db, id).await? {
            Some(task) => CancelOutcome::AlreadyFinished(task),
            None => CancelOutcome::NotFound,
        },
    })
}

/// Attempt records newest first, one page.
pub async fn list_attempts(
    db: impl PgExecutor<'_>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Attempt>> {
    let rows: Vec<AttemptRow> = sqlx::query_as(
        "select a.id, a.task_id, a.attempt, a.agent, t.command, a.worker_id, a.outcome, a.error,
                a.started_at, a.finished_at
         from task_attempts a join tasks t on t.id = a.task_id
         where a.id < $1
         order by a.id desc limit $2",
    )
    // No `$1 is null or …`: the cursor or past every id, so the plan walks the primary key.
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows::all(rows))
}
