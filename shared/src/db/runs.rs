//! What workers do to task rows: claim, record outcomes (fenced on the claimed attempt), renew
//! leases, and the relay and reaper that keep "nothing lost, nothing stuck" true.

use serde_json::Value;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::rows::{self, TaskRow};
use crate::Result;
use crate::domain::{Task, TaskEvent, TaskStatus};

/// Claim queued, due tasks for `worker_id` in one statement. Ids that are not claimable (finished,
/// cancelled, held by another worker, not yet due) are simply absent from the result: a duplicate
/// or stale message becomes a no-op.
pub async fn claim(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    worker_id: &str,
    lease_secs: u64,
) -> Result<Vec<Task>> {
    let rows: Vec<TaskRow> = sqlx::query_as(concat!(
        "update tasks set status = 'running', attempts = attempts + 1, worker_id = $2,
                lease_until = now() + make_interval(secs => $3), started_at = now(),
                updated_at = now()
         where id = any($1) and (status = 'queued' and run_at <= now()) is true
         returning ",
        crate::task_columns!()
    ))
    .bind(ids)
    .bind(worker_id)
    .bind(lease_secs as f64)
    .fetch_all(db)
    .await?;
    Ok(rows::all(rows))
}

/// What recording did to one task.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Recorded {
    /// The task.
    pub task_id: Uuid,
    /// Its agent.
    pub agent: String,
    /// Final status after the record (a cancel request turns any outcome into `cancelled`).
    pub status: String,
    /// Attempt outcome written.
    pub outcome: String,
    /// Attempt number.
    pub attempt: i32,
    /// Error written.
    pub error: Option<String>,
    /// When the row changed.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Record many attempt outcomes in one statement. Each update is fenced on the claimed attempt
/// and worker: if the task was re-run since (a newer attempt was claimed), or cancelled, or
/// finished otherwise, the stale outcome is dropped. A late outcome is still taken when no
/// newer attempt began: a holder that froze past its lease, whose task the reaper returned to
/// the queue (or failed on its last attempt), reports what its agent really did, and the
/// attempt's record says so instead of "worker lost". A task whose cancel was requested while
/// it ran ends `cancelled` whatever the outcome.
pub async fn record(
    db: &PgPool,
    worker_id: &str,
    records: &[crate::store::AttemptRecord],
) -> Result<Vec<Recorded>> {
    let ids: Vec<Uuid> = records.iter().map(|r| r.task_id).collect();
    let attempts: Vec<i32> = records.iter().map(|r| r.attempt).collect();
    let statuses: Vec<&str> = records.iter().map(|r| r.status.as_str()).collect();
    let outcomes: Vec<&str> = records.iter().map(|r| r.outcome.as_str()).collect();
    let results: Vec<Option<&Value>> = records.iter().map(|r| r.result.as_ref()).collect();
    let errors: Vec<Option<&str>> = records.iter().map(|r| r.error.as_deref()).collect();
    let delays: Vec<f64> = records
        .iter()
        .map(|r| r.retry_delay.as_secs_f64())
        .collect();
    let started: Vec<chrono::DateTime<chrono::Utc>> =
        records.iter().map(|r| r.started_at).collect();
    Ok(sqlx::query_as(
        "with input as (
             select * from unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::jsonb[],
                                  $6::text[], $7::float8[], $8::timestamptz[])
                 as i(id, attempt, status, outcome, result, error, delay, started)
         ),
         updated as (
             update tasks t set
                 status = case when t.cancel_requested then 'cancelled' else i.status end,
                 result = case when t.cancel_requested then null else i.result end,
                 last_error = case when t.cancel_requested then 'cancelled by request'
                                   else i.error end,
                 run_at = case when i.status = 'queued' and not t.cancel_requested
                               then now() + make_interval(secs => i.delay) else t.run_at end,
                 published_at = case when i.status = 'queued' and not t.cancel_requested
                                     then null else t.published_at end,
                 finished_at = case when i.status = 'queued' and not t.cancel_requested
                                    then null else now() end,
                 lease_until = null,
                 updated_at = now()
             from input i
             where t.id = any($1) and t.id = i.id
               and (t.attempts = i.attempt and t.worker_id = $9
                    and t.status in ('running', 'queued', 'failed')) is true
             returning t.id, t.agent, t.status, t.attempts,
                       case when t.cancel_requested then 'cancelled' else i.outcome end as outcome,
                       case when t.cancel_requested then 'cancelled by request' else i.error end
                           as error,
                       i.started, t.updated_at
         ),
         attempts as (
             insert into task_attempts (task_id, attempt, agent, worker_id, outcome, error, started_at)
             select id, attempts, agent, $9, outcome, error, started from updated
             on conflict (task_id, attempt) do update set
                 outcome = excluded.outcome, error = excluded.error, finished_at = now()
         )
         select id as task_id, agent, status, outcome, attempts as attempt, error, updated_at
         from updated",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&statuses)
    .bind(&outcomes)
    .bind(&results)
    .bind(&errors)
    .bind(&delays)
    .bind(&started)
    .bind(worker_id)
    .fetch_all(db)
    .await?)
}

/// Hand back tasks a stopping worker could not finish: queued again, due now, unpublished, and the
/// interrupted attempt not counted. Fenced like [`record`]. Returns the tasks handed back.
pub async fn release(
    db: impl PgExecutor<'_>,
    worker_id: &str,
    tasks: &[(Uuid, i32)],
) -> Result<Vec<TaskEvent>> {
    let ids: Vec<Uuid> = tasks.iter().map(|t| t.0).collect();
    let attempts: Vec<i32> = tasks.iter().map(|t| t.1).collect();
    let done: Vec<(Uuid, String, i32, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "update tasks t set status = 'queued', attempts = t.attempts - 1, run_at = now(),
                published_at = null, lease_until = null, updated_at = now(),
                last_error = 'interrupted by worker shutdown'
         from unnest($1::uuid[], $2::int[]) as i(id, attempt)
         where t.id = any($1) and t.id = i.id
           and (t.attempts = i.attempt and t.status = 'running' and t.worker_id = $3) is true
         returning t.id, t.agent, t.attempts, t.updated_at",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(worker_id)
    .fetch_all(db)
    .await?;
    Ok(events(done, TaskStatus::Queued))
}

/// Extend the leases of `held`, the tasks this worker process claimed and has not recorded yet;
/// returns the ids whose cancel was requested, so a worker that missed a cancel message still
/// honours it.
///
/// Only the tasks the process really holds are renewed, not every `running` row that carries its
/// worker id: a worker restarted with the same `BGAGENT_WORKER_ID` after a crash (or one whose
/// claim committed but whose answer was lost) must let those orphaned leases expire so the
/// reaper recovers the tasks, instead of keeping them `running` forever.
pub async fn renew_leases(
    db: impl PgExecutor<'_>,
    worker_id: &str,
    lease_secs: u64,
    held: &[Uuid],
) -> Result<Vec<Uuid>> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(
        "with renewed as (
             update tasks set lease_until = now() + make_interval(secs => $2)
             where id = any($3) and (worker_id = $1 and status = 'running') is true
             returning id, cancel_requested
         )
         select id from renewed where cancel_requested",
    )
    .bind(worker_id)
    .bind(lease_secs as f64)
    .bind(held)
    .fetch_all(db)
    .await?)
}

/// Due, unpublished tasks for the relay, locked (`FOR UPDATE SKIP LOCKED`) inside the caller's
/// transaction so any number of relays share the work without publishing a row twice. Fresh
/// enqueues get a grace period: the API publishes those itself.
pub async fn lock_unpublished(
    tx: &mut sqlx::PgConnection,
    limit: i64,
    fresh_grace_secs: f64,
) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "select id from tasks
         where status = 'queued' and published_at is null and run_at <= now()
           and (attempts > 0 or created_at < now() - make_interval(secs => $2))
         order by run_at
         limit $1
         for update skip locked",
    )
    .bind(limit)
    .bind(fresh_grace_secs)
    .fetch_all(tx)
    .await?)
}

/// Make queued tasks unpublished again, so the relay publishes each of them in a message of its
/// own (the tasks of a dead-lettered multi-task message). Returns how many changed.
pub async fn unpublish_queued(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<u64> {
    let done = sqlx::query(
        "update tasks set published_at = null
         where id = any($1) and (status = 'queued' and published_at is not null) is true",
    )
    .bind(ids)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Mark relayed tasks published.
pub async fn mark_relayed(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<u64> {
    let done = sqlx::query("update tasks set published_at = now() where id = any($1)")
        .bind(ids)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

/// A running task whose worker is gone, as the reaper handled it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Reaped {
    /// The task.
    pub task_id: Uuid,
    /// Its agent.
    pub agent: String,
    /// `queued` (will run again), `failed` (that was its last attempt) or `cancelled`.
    pub status: String,
    /// Attempts used.
    pub attempts: i32,
    /// When the row changed.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Return to the queue the running tasks whose holder broke its promise: the lease it took and
/// kept renewing expired, or it shut down with the task still running. Each task is judged by
/// its own lease, never by the reaper's settings. A task on its last attempt fails instead, so a
/// task that kills its worker every time cannot loop forever. That happens at once when its
/// holder is known to be gone (shut down, or restarted since the attempt began under the same
/// worker id); otherwise not before the attempt could have ended on its own
/// (`started_at + timeout_secs + last_attempt_grace_secs`), because a holder that only froze
/// looks the same as a dead one and still gets to report it.
///
/// `run_before` is the database time by which the statement must run: a statement that waited
/// in a stalled connection or server finds every lease expired, because nobody could renew one
/// meanwhile, and must not act on that stale view. Such a late statement reaps nothing.
pub async fn reap(
    db: impl PgExecutor<'_>,
    last_attempt_grace_secs: f64,
    run_before: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Reaped>> {
    Ok(sqlx::query_as(
        "with lost as (
             select t.id from tasks t
             left join workers w on w.id = t.worker_id
             where t.status = 'running'
               and (t.lease_until < now() or w.stopped_at is not null)
               and (t.attempts < t.max_attempts or t.cancel_requested
                    or w.id is null or w.stopped_at is not null or w.started_at > t.started_at
                    or t.started_at + make_interval(secs => t.timeout_secs + $1) < now())
               and clock_timestamp() < $2
             for update of t skip locked
         ),
         updated as (
             update tasks t set
                 status = case when t.cancel_requested then 'cancelled'
                               when t.attempts >= t.max_attempts then 'failed'
                               else 'queued' end,
                 last_error = case when t.cancel_requested then 'cancelled by request'
                                   else 'worker lost while running the task (attempt '
                                        || t.attempts || ')' end,
                 finished_at = case when t.cancel_requested or t.attempts >= t.max_attempts
                                    then now() end,
                 run_at = now(), published_at = null, lease_until = null, updated_at = now()
             from lost where t.id = lost.id
             returning t.id, t.agent, t.status, t.attempts, t.worker_id, t.started_at, t.last_error,
                       t.updated_at
         ),
         attempts as (
             insert into task_attempts (task_id, attempt, agent, worker_id, outcome, error, started_at)
             select id, attempts, agent, worker_id,
                    case status when 'queued' then 'retry' else status end,
                    last_error, coalesce(started_at, now())
             from updated
             on conflict (task_id, attempt) do nothing
         )
         select id as task_id, agent, status, attempts, updated_at from updated",
    )
    .bind(last_attempt_grace_secs)
    .bind(run_before)
    .fetch_all(db)
    .await?)
}

/// Fail a task whose message the broker dead-lettered (delivered too often without completing).
/// Returns the task as it is now when it changed.
pub async fn fail_dead_lettered(
    db: impl PgExecutor<'_>,
    id: Uuid,
    reason: &str,
) -> Result<Option<TaskEvent>> {
    let failed: Option<(Uuid, String, i32, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "update tasks set status = 'failed', finished_at = now(), lease_until = null,
                updated_at = now(),
                last_error = 'message dead-lettered by the broker (' || $2 || '): it was \
                              delivered too many times without completing'
         where id = $1 and status in ('queued', 'running')
         returning id, agent, attempts, updated_at",
    )
    .bind(id)
    .bind(reason)
    .fetch_optional(db)
    .await?;
    Ok(failed.into_iter().map(event(TaskStatus::Failed)).next())
}

/// The events of rows `(id, agent, attempts, updated_at)` now in `status`.
pub(crate) fn events(
    rows: Vec<(Uuid, String, i32, chrono::DateTime<chrono::Utc>)>,
    status: TaskStatus,
) -> Vec<TaskEvent> {
    rows.into_iter().map(event(status)).collect()
}

fn event(
    status: TaskStatus,
) -> impl Fn((Uuid, String, i32, chrono::DateTime<chrono::Utc>)) -> TaskEvent {
    move |(id, agent, attempts, updated_at)| TaskEvent {
        id,
        agent,
        status,
        attempts,
        updated_at,
    }
}

/// Key of the advisory lock that lets one worker at a time check whether the broker lost tasks.
const BROKER_CHECK_LOCK: i64 = 0x6267_6167_656e_7431;

/// Take the broker-check lock for the rest of the caller's transaction; false when another
/// worker holds it.
pub async fn try_lock_broker_check(tx: &mut sqlx::PgConnection) -> Result<bool> {
    Ok(sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
        .bind(BROKER_CHECK_LOCK)
        .fetch_one(tx)
        .await?)
}

/// Whether a due, queued task was published more than `published_secs` ago and is still not
/// claimed: on a tasks queue with no ready message, such a task is either in a worker's prefetch
/// window or lost.
pub async fn stale_published_exists(db: impl PgExecutor<'_>, published_secs: f64) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "select exists (select 1 from tasks
                        where status = 'queued' and run_at <= now()
                          and published_at < now() - make_interval(secs => $1))",
    )
    .bind(published_secs)
    .fetch_one(db)
    .await?)
}

/// Make up to `limit` queued, published tasks unpublished again, so the relay publishes them
/// again: those published more than `published_secs` ago, or every one when None (the broker
/// lost its data). Rows another transaction holds are skipped (a claim or a relay pass is on
/// them). Returns how many changed; call again until 0. The ids go through an array: with
/// `id in (…)` the planner may hash the batch and scan the whole table.
pub async fn unpublish_published(
    db: impl PgExecutor<'_>,
    published_secs: Option<f64>,
    limit: i64,
) -> Result<u64> {
    let done = sqlx::query(
        "update tasks set published_at = null
         where id = any(array(
             select id from tasks
             where status = 'queued' and published_at is not null
               and ($1::float8 is null
                    or (run_at <= now()
                        and published_at < now() - make_interval(secs => $1::float8)))
             limit $2
             for update skip locked))",
    )
    .bind(published_secs)
    .bind(limit)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// The epoch marker last stored on the broker, if any.
pub async fn broker_epoch(db: impl PgExecutor<'_>) -> Result<Option<Uuid>> {
    Ok(
        sqlx::query_scalar("select broker_epoch from control where id")
            .fetch_one(db)
            .await?,
    )
}

/// Remember the epoch marker just stored on the broker.
pub async fn set_broker_epoch(db: impl PgExecutor<'_>, epoch: Uuid) -> Result<()> {
    sqlx::query("update control set broker_epoch = $1 where id")
        .bind(epoch)
        .execute(db)
        .await?;
    Ok(())
}
