//! What workers do to task rows, and the relay and reaper (`crate::db::runs` is the
//! specification: the same fences and rules, each call one statement or one transaction).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{Row, SqlitePool};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

use super::SqliteStore;
use super::rows::{self, task_columns};
use crate::Result;
use crate::domain::{Task, TaskEvent, TaskStatus};
use crate::store::{AttemptOutcome, AttemptRecord, DueBatch, Reaped, Recorded};

const CANCELLED_BY_REQUEST: &str = "cancelled by request";

/// Claim the batch's ids that are queued and due.
pub(super) const CLAIM: &str = concat!(
    "\
    update tasks set status = 'running', attempts = attempts + 1, worker_id = ?2,
           lease_until = ?3, started_at = ?4, updated_at = ?4
    where id in (select unhex(value) from json_each(?1))
      and status = 'queued' and run_at <= ?4
    returning ",
    task_columns!()
);

/// Record outcomes, fenced on attempt and worker. RETURNING may not name the input (`i`).
/// `+tasks.status`: without statistics the planner would walk every row of a status and scan
/// the input for each; the unary `+` leaves it the primary key (input rows drive the join).
pub(super) const RECORD: &str = "\
    update tasks set
        status = case when tasks.cancel_requested then 'cancelled' else i.in_status end,
        result = case when tasks.cancel_requested then null else i.in_result end,
        last_error = case when tasks.cancel_requested then 'cancelled by request'
                          else i.in_error end,
        run_at = case when i.in_status = 'queued' and not tasks.cancel_requested
                      then i.in_run_at else tasks.run_at end,
        published_at = case when i.in_status = 'queued' and not tasks.cancel_requested
                            then null else tasks.published_at end,
        finished_at = case when i.in_status = 'queued' and not tasks.cancel_requested
                           then null else ?3 end,
        lease_until = null,
        updated_at = ?3
    from (select unhex(value ->> 0) as in_id, value ->> 1 as in_attempt,
                 value ->> 2 as in_status, value ->> 3 as in_result,
                 value ->> 4 as in_error, value ->> 5 as in_run_at
          from json_each(?1)) as i
    where tasks.id = i.in_id and tasks.attempts = i.in_attempt
      and tasks.worker_id = ?2 and +tasks.status in ('running', 'queued', 'failed')
    returning id, agent, status, attempts, cancel_requested, updated_at";

/// The attempt records of a [`RECORD`]; a record of the same attempt (the reaper's) is replaced.
pub(super) const RECORD_ATTEMPTS: &str = "\
    insert into task_attempts (task_id, attempt, agent, worker_id, outcome, error,
                               started_at, finished_at)
    select unhex(value ->> 0), value ->> 1, value ->> 2, ?2, value ->> 3,
           value ->> 4, value ->> 5, ?3
    from json_each(?1) where true
    on conflict (task_id, attempt) do update set
        outcome = excluded.outcome, error = excluded.error,
        finished_at = excluded.finished_at";

/// Hand back tasks, fenced like [`RECORD`] (`+tasks.status`: see there).
pub(super) const RELEASE: &str = "\
    update tasks set status = 'queued', attempts = tasks.attempts - 1, run_at = ?3,
           published_at = null, lease_until = null, updated_at = ?3,
           last_error = 'interrupted by worker shutdown'
    from (select unhex(value ->> 0) as in_id, value ->> 1 as in_attempt
          from json_each(?1)) as i
    where tasks.id = i.in_id and tasks.attempts = i.in_attempt
      and +tasks.status = 'running' and tasks.worker_id = ?2
    returning id, agent, attempts, updated_at";

/// Extend the leases of the batch's ids this worker runs.
pub(super) const RENEW: &str = "\
    update tasks set lease_until = ?3
    where id in (select unhex(value) from json_each(?1))
      and worker_id = ?2 and status = 'running'
    returning id, cancel_requested";

/// Return or fail the running tasks of lost holders (`?1` now, `?2` the grace).
pub(super) const REAP: &str = "\
    update tasks set
        status = case when cancel_requested then 'cancelled'
                      when attempts >= max_attempts then 'failed'
                      else 'queued' end,
        last_error = case when cancel_requested then 'cancelled by request'
                          else 'worker lost while running the task (attempt '
                               || attempts || ')' end,
        finished_at = case when cancel_requested or attempts >= max_attempts
                           then ?1 end,
        run_at = ?1, published_at = null, lease_until = null, updated_at = ?1
    where id in (
        select t.id from tasks t left join workers w on w.id = t.worker_id
        where t.status = 'running'
          and (t.lease_until < ?1 or w.stopped_at is not null)
          and (t.attempts < t.max_attempts or t.cancel_requested
               or w.id is null or w.stopped_at is not null
               or w.started_at > t.started_at
               or t.started_at + t.timeout_secs * 1000000 + ?2 < ?1))
    returning id, agent, status, attempts, worker_id, started_at, last_error, updated_at";

/// The attempt records of a [`REAP`]; a record the holder wrote first is kept.
pub(super) const REAP_ATTEMPTS: &str = "\
    insert into task_attempts (task_id, attempt, agent, worker_id, outcome, error,
                               started_at, finished_at)
    select unhex(value ->> 0), value ->> 1, value ->> 2, value ->> 3, value ->> 4,
           value ->> 5, value ->> 6, ?2
    from json_each(?1) where true
    on conflict (task_id, attempt) do nothing";

/// Make the batch's queued, published ids unpublished.
pub(super) const UNPUBLISH_QUEUED: &str = "\
    update tasks set published_at = null
    where id in (select unhex(value) from json_each(?1))
      and status = 'queued' and published_at is not null";

/// Mark relayed tasks published if unchanged since taken (`+tasks.status`: see [`RECORD`]).
pub(super) const MARK_RELAYED: &str = "\
    update tasks set published_at = ?2
    from (select unhex(value ->> 0) as in_id, value ->> 1 as in_attempts,
                 value ->> 2 as in_started_at
          from json_each(?1)) as i
    where tasks.id = i.in_id and +tasks.status = 'queued'
      and tasks.published_at is null and tasks.attempts = i.in_attempts
      and tasks.started_at is i.in_started_at";

impl SqliteStore {
    /// Claim queued, due tasks for `worker_id`. Ids that are not claimable (finished, cancelled,
    /// held by another worker, not yet due, repeated) are absent from the result.
    pub(super) async fn claim_tasks(
        &self,
        ids: &[Uuid],
        worker_id: &str,
        lease: Duration,
    ) -> Result<Vec<Task>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.writer().await?;
        let now = rows::now();
        Ok(sqlx::query(CLAIM)
            .bind(rows::id_batch(ids))
            .bind(worker_id)
            .bind(rows::after(now, lease))
            .bind(now)
            .try_map(rows::task)
            .fetch_all(&mut *conn)
            .await?)
    }

    /// Record attempt outcomes, each fenced on the claimed attempt and worker: a task re-run
    /// since, cancelled or finished otherwise drops the stale outcome. A late outcome is still
    /// taken when no newer attempt began (the reaper returned the task to the queue, or failed
    /// it), so the attempt's record says what the agent really did. A task whose cancel was
    /// requested ends cancelled whatever the outcome.
    pub(super) async fn record_attempts(
        &self,
        worker_id: &str,
        records: &[AttemptRecord],
    ) -> Result<Vec<Recorded>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let now = rows::now();
        let input = rows::batch(records.iter().map(|r| {
            json!([
                rows::hex(r.task_id),
                r.attempt,
                r.status.as_str(),
                r.result.as_ref().map(rows::json_text),
                r.error,
                rows::after(now, r.retry_delay)
            ])
        }));
        let updated = sqlx::query(RECORD)
            .bind(input)
            .bind(worker_id)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;

        let by_attempt: HashMap<(Uuid, i32), &AttemptRecord> = records
            .iter()
            .map(|r| ((r.task_id, r.attempt), r))
            .collect();
        let mut recorded = Vec::with_capacity(updated.len());
        let mut attempts = Vec::with_capacity(updated.len());
        for row in updated {
            let task_id: Uuid = row.try_get("id")?;
            let attempt: i32 = row.try_get("attempts")?;
            let Some(r) = by_attempt.get(&(task_id, attempt)) else {
                continue;
            };
            let (outcome, error) = if row.try_get("cancel_requested")? {
                (
                    AttemptOutcome::Cancelled,
                    Some(CANCELLED_BY_REQUEST.to_owned()),
                )
            } else {
                (r.outcome, r.error.clone())
            };
            let agent: String = row.try_get("agent")?;
            attempts.push(json!([
                rows::hex(task_id),
                attempt,
                agent,
                outcome.as_str(),
                error,
                r.started_at.timestamp_micros()
            ]));
            recorded.push(Recorded {
                task_id,
                agent,
                status: rows::status(&row, "status")?,
                outcome,
                attempt,
                error,
                updated_at: rows::time(&row, "updated_at")?,
            });
        }
        if !attempts.is_empty() {
            sqlx::query(RECORD_ATTEMPTS)
                .bind(rows::batch(attempts))
                .bind(worker_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Hand back tasks a stopping worker could not finish: queued again, due now, unpublished,
    /// and the interrupted attempt not counted. Fenced like [`Self::record_attempts`].
    pub(super) async fn release_tasks(
        &self,
        worker_id: &str,
        tasks: &[(Uuid, i32)],
    ) -> Result<Vec<TaskEvent>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.writer().await?;
        let done = sqlx::query(RELEASE)
            .bind(rows::batch(
                tasks
                    .iter()
                    .map(|(id, attempt)| json!([rows::hex(*id), attempt])),
            ))
            .bind(worker_id)
            .bind(rows::now())
            .try_map(|row| rows::event(&row, TaskStatus::Queued))
            .fetch_all(&mut *conn)
            .await?;
        Ok(done)
    }

    /// Extend the leases of `held`, the tasks this worker process claimed and has not recorded;
    /// returns those whose cancel was requested. Only those tasks, not every running row with
    /// this worker id: a worker restarted under the same id lets its predecessor's leases expire.
    pub(super) async fn renew(
        &self,
        worker_id: &str,
        lease: Duration,
        held: &[Uuid],
    ) -> Result<Vec<Uuid>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.writer().await?;
        let renewed: Vec<(Uuid, bool)> = sqlx::query_as(RENEW)
            .bind(rows::id_batch(held))
            .bind(worker_id)
            .bind(rows::after(rows::now(), lease))
            .fetch_all(&mut *conn)
            .await?;
        Ok(renewed
            .into_iter()
            .filter_map(|(id, cancel)| cancel.then_some(id))
            .collect())
    }

    /// Return to the queue the running tasks whose holder broke its lease or stopped; a task on
    /// its last attempt fails instead, at once when its holder is known to be gone (stopped,
    /// unknown, or restarted since the attempt began), otherwise only once the attempt could not
    /// still be running (`started_at + timeout_secs + last_attempt_grace`). A call whose write
    /// transaction starts at or after `run_before` reaps nothing: it waited out a stall in which
    /// nobody could renew a lease.
    pub(super) async fn reap_lost(
        &self,
        last_attempt_grace: Duration,
        run_before: DateTime<Utc>,
    ) -> Result<Vec<Reaped>> {
        let mut tx = self.write().await?;
        let now = rows::now();
        if now >= run_before.timestamp_micros() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let lost = sqlx::query(REAP)
            .bind(now)
            .bind(rows::micros(last_attempt_grace))
            .fetch_all(&mut *tx)
            .await?;
        if lost.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut reaped = Vec::with_capacity(lost.len());
        let mut attempts = Vec::with_capacity(lost.len());
        for row in lost {
            let task_id: Uuid = row.try_get("id")?;
            let agent: String = row.try_get("agent")?;
            let status = rows::status(&row, "status")?;
            let count: i32 = row.try_get("attempts")?;
            let outcome = match status {
                TaskStatus::Queued => AttemptOutcome::Retry,
                TaskStatus::Cancelled => AttemptOutcome::Cancelled,
                _ => AttemptOutcome::Failed,
            };
            attempts.push(json!([
                rows::hex(task_id),
                count,
                agent,
                row.try_get::<Option<String>, _>("worker_id")?,
                outcome.as_str(),
                row.try_get::<Option<String>, _>("last_error")?,
                row.try_get::<Option<i64>, _>("started_at")?.unwrap_or(now)
            ]));
            reaped.push(Reaped {
                task_id,
                agent,
                status,
                attempts: count,
                updated_at: rows::time(&row, "updated_at")?,
            });
        }
        sqlx::query(REAP_ATTEMPTS)
            .bind(rows::batch(attempts))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(reaped)
    }

    /// Fail a task whose message the queue dead-lettered; its agent and attempts when it changed.
    pub(super) async fn fail_dead_letter(
        &self,
        id: Uuid,
        reason: &str,
    ) -> Result<Option<TaskEvent>> {
        let error = format!(
            "message dead-lettered by the broker ({reason}): it was delivered too many times \
             without completing"
        );
        let mut conn = self.writer().await?;
        Ok(sqlx::query(
            "update tasks set status = 'failed', finished_at = ?2, lease_until = null,
                    updated_at = ?2, last_error = ?3
             where id = ?1 and status in ('queued', 'running')
             returning id, agent, attempts, updated_at",
        )
        .bind(id)
        .bind(rows::now())
        .bind(error)
        .try_map(|row| rows::event(&row, TaskStatus::Failed))
        .fetch_optional(&mut *conn)
        .await?)
    }

    /// Make queued tasks unpublished again, so the relay publishes each in a message of its own.
    pub(super) async fn unpublish_queued_rows(&self, ids: &[Uuid]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.writer().await?;
        let done = sqlx::query(UNPUBLISH_QUEUED)
            .bind(rows::id_batch(ids))
            .execute(&mut *conn)
            .await?;
        Ok(done.rows_affected())
    }

    /// Due, unpublished tasks for the relay, oldest due first; fresh enqueues are left to the
    /// API that accepted them for `fresh_grace`. One batch at a time in the process.
    pub(super) async fn take_due_rows(
        &self,
        limit: usize,
        fresh_grace: Duration,
    ) -> Result<Box<dyn DueBatch>> {
        let guard = std::sync::Arc::clone(&self.relay).lock_owned().await;
        let now = rows::now();
        // `indexed by`: the partial index holds exactly these rows, in this order; without
        // statistics the planner would rather scan every queued task and sort them.
        let due: Vec<(Uuid, i32, Option<i64>)> = sqlx::query_as(
            "select id, attempts, started_at from tasks indexed by tasks_unpublished_idx
             where status = 'queued' and published_at is null and run_at <= ?1
               and (attempts > 0 or created_at < ?2)
             order by run_at
             limit ?3",
        )
        .bind(now)
        .bind(rows::before(now, fresh_grace))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.readers)
        .await?;
        Ok(Box::new(Due {
            writer: self.writer.clone(),
            ids: due.iter().map(|(id, ..)| *id).collect(),
            taken: due
                .into_iter()
                .map(|(id, attempts, started)| (id, (attempts, started)))
                .collect(),
            _relay: guard,
        }))
    }

    pub(super) async fn get_broker_epoch(&self) -> Result<Option<Uuid>> {
        Ok(
            sqlx::query_scalar("select broker_epoch from control where id = 1")
                .fetch_one(&self.readers)
                .await?,
        )
    }

    pub(super) async fn put_broker_epoch(&self, epoch: Uuid) -> Result<()> {
        let mut conn = self.writer().await?;
        sqlx::query("update control set broker_epoch = ?1 where id = 1")
            .bind(epoch)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Whether a due, queued task was published more than `age` ago and is still not claimed.
    pub(super) async fn stale_published(&self, age: Duration) -> Result<bool> {
        let now = rows::now();
        Ok(sqlx::query_scalar(
            "select exists (select 1 from tasks
                            where status = 'queued' and run_at <= ?1 and published_at < ?2)",
        )
        .bind(now)
        .bind(rows::before(now, age))
        .fetch_one(&self.readers)
        .await?)
    }

    /// Make up to `limit` queued, published tasks unpublished again: those published more than
    /// `age` ago (and due), or all when None.
    pub(super) async fn unpublish_published_rows(
        &self,
        age: Option<Duration>,
        limit: i64,
    ) -> Result<u64> {
        let mut conn = self.writer().await?;
        let now = rows::now();
        let changed = sqlx::query(
            "update tasks set published_at = null
             where id in (
                 select id from tasks
                 where status = 'queued' and published_at is not null
                   and (?1 is null or (run_at <= ?2 and published_at < ?1))
                 limit ?3)",
        )
        .bind(age.map(|age| rows::before(now, age)))
        .bind(now)
        .bind(limit.max(0))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(changed)
    }
}

/// A relay batch: the ids taken, and what each row looked like then.
struct Due {
    writer: SqlitePool,
    ids: Vec<Uuid>,
    /// Each id's `attempts` and `started_at` when taken.
    taken: HashMap<Uuid, (i32, Option<i64>)>,
    /// One relay at a time.
    _relay: tokio::sync::OwnedMutexGuard<()>,
}

#[async_trait]
impl DueBatch for Due {
    fn ids(&self) -> &[Uuid] {
        &self.ids
    }

    /// Mark published the confirmed tasks that are still as they were taken. PostgreSQL keeps
    /// the rows locked until this commit; here a worker may claim a task as soon as the queue
    /// has it, and even send it back (a retry, a release) before the relay commits. Marking such
    /// a row would leave its new run unpublished forever, so the row must still be queued,
    /// unpublished and unclaimed since (same attempts and `started_at`: every claim sets it).
    async fn commit(self: Box<Self>, published: &[Uuid]) -> Result<()> {
        let input: Vec<_> = published
            .iter()
            .filter_map(|id| {
                let (attempts, started_at) = self.taken.get(id)?;
                Some(json!([rows::hex(*id), attempts, started_at]))
            })
            .collect();
        if input.is_empty() {
            return Ok(());
        }
        let mut conn = self.writer.acquire().await?;
        sqlx::query(MARK_RELAYED)
            .bind(rows::batch(input))
            .bind(rows::now())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}
