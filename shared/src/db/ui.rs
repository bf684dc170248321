//! What the dashboard (`/ui`) reads and its sessions. Every count is a capped index scan, so a
//! page costs the same with three thousand or three million tasks.

use sqlx::{PgExecutor, PgPool};
use std::time::Duration;
use uuid::Uuid;

use super::rows::{self, AttemptRow, TaskRow};
use crate::Result;
use crate::domain::{Attempt, Task};
use crate::store::{AgentOutcomes, Overview, UiSession, uuid_floor};

/// One task's attempts on the `(task_id, attempt)` unique index, oldest first.
pub async fn task_attempts(db: impl PgExecutor<'_>, id: Uuid, limit: i64) -> Result<Vec<Attempt>> {
    let rows: Vec<AttemptRow> = sqlx::query_as(
        "select a.id, a.task_id, a.attempt, a.agent, t.command, a.worker_id, a.outcome, a.error,
                a.started_at, a.finished_at
         from task_attempts a join tasks t on t.id = a.task_id
         where a.task_id = $1
         order by a.attempt limit $2",
    )
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows::all(rows))
}

/// The task holding an idempotency key (its unique index).
pub async fn by_key(db: impl PgExecutor<'_>, key: &str) -> Result<Option<Task>> {
    let row: Option<TaskRow> = sqlx::query_as(concat!(
        "select ",
        crate::task_columns!(),
        " from tasks where idempotency_key = $1"
    ))
    .bind(key)
    .fetch_optional(db)
    .await?;
    Ok(row.map(Task::from))
}

/// Tasks per status (in `TaskStatus::ALL` order) on `tasks_status_id_idx` and finished in the
/// last hour on `tasks_finished_idx`, each count stopped at `$1` rows. Each subquery walks its
/// index in order (`order by`): with most of the table in one status, a seq scan that stops
/// after `$1` matching rows would otherwise look as cheap to the planner, and it is not once
/// those rows are spread through a large table.
pub async fn overview(db: impl PgExecutor<'_>, cap: i64) -> Result<Overview> {
    let counts: (i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "select
             (select count(*) from (select 1 from tasks where status = 'queued'
                                    order by id desc limit $1) q),
             (select count(*) from (select 1 from tasks where status = 'running'
                                    order by id desc limit $1) r),
             (select count(*) from (select 1 from tasks where status = 'succeeded'
                                    order by id desc limit $1) s),
             (select count(*) from (select 1 from tasks where status = 'failed'
                                    order by id desc limit $1) f),
             (select count(*) from (select 1 from tasks where status = 'cancelled'
                                    order by id desc limit $1) c),
             (select count(*) from (select 1 from tasks where status = 'succeeded'
                                    and finished_at > now() - interval '1 hour'
                                    order by finished_at desc limit $1) sh),
             (select count(*) from (select 1 from tasks where status = 'failed'
                                    and finished_at > now() - interval '1 hour'
                                    order by finished_at desc limit $1) fh)",
    )
    .bind(cap)
    .fetch_one(db)
    .await?;
    Ok(Overview {
        by_status: [counts.0, counts.1, counts.2, counts.3, counts.4],
        succeeded_last_hour: counts.5,
        failed_last_hour: counts.6,
    })
}

/// Succeeded and failed tasks per registered agent created since `window` ago, on
/// `tasks_agent_status_id_idx` (ids are UUID v7, so "created since" is an id range); each
/// count stops at `cap`.
pub async fn agent_outcomes(
    db: &PgPool,
    window: Duration,
    cap: i64,
    limit: i64,
) -> Result<Vec<AgentOutcomes>> {
    let now = super::now(db).await?;
    let since = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::zero());
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "select a.name,
                (select count(*) from (select 1 from tasks t
                                       where t.agent = a.name and t.status = 'succeeded'
                                         and t.id >= $1 order by t.id desc limit $2) s),
                (select count(*) from (select 1 from tasks t
                                       where t.agent = a.name and t.status = 'failed'
                                         and t.id >= $1 order by t.id desc limit $2) f)
         from (select name from agents order by name limit $3) a
         order by a.name",
    )
    .bind(uuid_floor(since))
    .bind(cap)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(agent, succeeded, failed)| AgentOutcomes {
            agent,
            succeeded,
            failed,
        })
        .collect())
}

/// Store a session expiring `ttl` from now.
pub async fn insert_session(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
    csrf: &str,
    ttl: Duration,
) -> Result<()> {
    sqlx::query(
        "insert into ui_sessions (token_hash, csrf_token, expires_at)
         values ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(token_hash)
    .bind(csrf)
    .bind(ttl.as_secs_f64())
    .execute(db)
    .await?;
    Ok(())
}

/// The unexpired session of a token hash (primary key).
pub async fn session(db: impl PgExecutor<'_>, token_hash: &[u8]) -> Result<Option<UiSession>> {
    let row: Option<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select csrf_token, expires_at from ui_sessions
         where token_hash = $1 and expires_at > now()",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(csrf, expires_at)| UiSession { csrf, expires_at }))
}

/// End a session.
pub async fn delete_session(db: impl PgExecutor<'_>, token_hash: &[u8]) -> Result<bool> {
    let done = sqlx::query("delete from ui_sessions where token_hash = $1")
        .bind(token_hash)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Delete up to `limit` expired sessions, oldest expiry first (`ui_sessions_expires_idx`).
pub async fn prune_sessions(db: impl PgExecutor<'_>, limit: i64) -> Result<u64> {
    let done = sqlx::query(
        "delete from ui_sessions where token_hash in (
             select token_hash from ui_sessions where expires_at <= now()
             order by expires_at limit $1 for update skip locked)",
    )
    .bind(limit)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
