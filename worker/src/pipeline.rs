//! The path of a delivery: claim (batched) → execute (bounded concurrency) → record (batched,
//! fenced) → ack. PostgreSQL decides who runs a task; the broker only says "look at this id".

use bgagent_shared::broker::TaskMessage;
use bgagent_shared::db;
use bgagent_shared::db::runs::AttemptRecord;
use bgagent_shared::domain::{Task, storable_json, storable_text};
use bgagent_shared::gather::Gather;
use chrono::Utc;
use futures_util::FutureExt;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::acks::{self, Received};
use crate::delivery::{self, TaskDelivery};
use crate::executor::{ExecResult, TaskError};
use crate::state::Shared;

/// Most deliveries claimed in one statement.
const MAX_CLAIM_BATCH: usize = 256;
/// Most outcomes recorded in one statement.
const MAX_RECORD_BATCH: usize = 512;
/// Times a loop retries an item the database refuses (not an outage) before giving up on it.
pub(crate) const MAX_REFUSALS: u32 = 3;
/// Longest wait for the broker to take an ack, nack or reject. Settling comes after the outcome is
/// stored (or drops a duplicate), so one that never completes only means a redelivery, which the
/// claim turns into a no-op. Unbounded, an ack caught in a connection the broker is closing can
/// wait forever (seen in the fault suite when RabbitMQ stops) and stall the loop that sent it,
/// leaving every task claimed after it `running` and unrecorded.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How an attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Finished(ExecResult),
    TimedOut(u64),
    /// A client cancelled it.
    Cancelled,
    /// The worker is shutting down and the grace period ran out.
    Interrupted,
}

/// An attempt waiting to be recorded and acknowledged.
pub(crate) struct RecordJob {
    task_id: Uuid,
    attempt: i32,
    max_attempts: i32,
    started_at: chrono::DateTime<Utc>,
    outcome: Outcome,
    /// None when the task's share of its delivery was settled at claim (long tasks).
    delivery: Option<TaskDelivery>,
}

/// Take deliveries, claim their tasks in batches, and start the claimed tasks.
pub(crate) async fn claim_loop(
    shared: Arc<Shared>,
    mut deliveries: mpsc::Receiver<Received>,
    records: mpsc::Sender<RecordJob>,
    stopping: CancellationToken,
    executions: TaskTracker,
) {
    let mut received = Vec::with_capacity(MAX_CLAIM_BATCH);
    // Tasks taken from deliveries and not claimed yet: a message with several tasks can bring
    // more than there is room for.
    let mut backlog: VecDeque<(Uuid, TaskDelivery)> = VecDeque::new();
    let mut gather = Gather::default();
    loop {
        // Wait for room before taking deliveries: unclaimed tasks stay `queued` in PostgreSQL
        // (and unacked at the broker) instead of piling up here.
        let Ok(first) = shared.permits.clone().acquire_owned().await else {
            return;
        };
        let halted = || stopping.is_cancelled() || shared.is_paused();
        if backlog.is_empty() {
            let room = 1 + shared.permits.available_permits().min(MAX_CLAIM_BATCH - 1);
            if gather.next(&mut deliveries, &mut received, room).await == 0 {
                return;
            }
            if halted() {
                // Nothing new starts while stopping or paused: hand the messages back.
                acks::hand_back(&shared.publisher, received.drain(..).map(|d| d.pending)).await;
                continue;
            }
            backlog.extend(unpack(&shared, received.drain(..)).await);
        } else if halted() {
            delivery::settle(
                &shared.publisher,
                backlog.drain(..).map(|(_, d)| d.hand_back()),
            )
            .await;
            continue;
        }
        let mut permits = vec![first];
        while permits.len() < backlog.len().min(MAX_CLAIM_BATCH) {
            match shared.permits.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let batch: Vec<_> = backlog.drain(..permits.len().min(backlog.len())).collect();
        claim_batch(&shared, batch, permits, &records, &stopping, &executions).await;
    }
}

/// The task ids of each delivery, each with its share of the delivery. An unparseable message is
/// rejected (the queue dead-letters it); one without ids is acked.
async fn unpack(
    shared: &Shared,
    received: impl Iterator<Item = Received>,
) -> Vec<(Uuid, TaskDelivery)> {
    let mut tasks = Vec::new();
    let mut empty = Vec::new();
    for delivery in received {
        match serde_json::from_slice::<TaskMessage>(&delivery.data) {
            Ok(message) if message.task_ids().is_empty() => empty.push(delivery.pending),
            Ok(message) => {
                let ids = message.task_ids();
                let shares = TaskDelivery::split(delivery.pending, ids.len());
                tasks.extend(ids.iter().copied().zip(shares));
            }
            Err(e) => {
                tracing::warn!(error = %e, "unparseable message sent to the dead queue");
                shared
                    .metrics
                    .executor_errors
                    .with_label_values(&["unparseable"])
                    .inc();
                acks::reject(delivery.pending).await;
            }
        }
    }
    acks::ack(empty).await;
    tasks
}

async fn claim_batch(
    shared: &Arc<Shared>,
    batch: Vec<(Uuid, TaskDelivery)>,
    mut permits: Vec<OwnedSemaphorePermit>,
    records: &mpsc::Sender<RecordJob>,
    stopping: &CancellationToken,
    executions: &TaskTracker,
) {
    if batch.is_empty() {
        return;
    }
    let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
    let mut refusals = 0;
    let claimed = loop {
        match db::runs::claim(&shared.db, &ids, &shared.id, shared.options.lease_secs).await {
            Ok(tasks) => break tasks,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim tasks; retrying");
                // An outage is waited out; a statement the database keeps refusing is not
                // retried forever: the messages go back to the broker, whose delivery limit
                // dead-letters a message that can never be claimed.
                if !e.is_unavailable() {
                    refusals += 1;
                }
                if stopping.is_cancelled() || refusals >= MAX_REFUSALS {
                    if refusals >= MAX_REFUSALS {
                        give_up(shared, "claim", &e);
                    }
                    delivery::settle(
                        &shared.publisher,
                        batch.into_iter().map(|(_, d)| d.hand_back()),
                    )
                    .await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    shared.hold(claimed.iter().map(|t| (t.id, t.attempts)));
    let mut claimed: HashMap<Uuid, Task> = claimed.into_iter().map(|t| (t.id, t)).collect();
    let mut dropped = Vec::new();
    // There is a permit for every task of the batch.
    for ((id, delivery), permit) in batch.into_iter().zip(permits.drain(..)) {
        match claimed.remove(&id) {
            Some(task) => {
                let span = tracing::info_span!("task", task_id = %task.id, agent = %task.agent, attempt = task.attempts);
                executions.spawn(
                    execute(shared.clone(), task, delivery, permit, records.clone())
                        .instrument(span),
                );
            }
            // Finished, cancelled, running elsewhere or not yet due: a duplicate or stale message.
            None => {
                tracing::debug!(task_id = %id, "message for an unclaimable task dropped");
                dropped.push(delivery.done());
            }
        }
    }
    delivery::settle(&shared.publisher, dropped).await;
}

/// Run acks, nacks or rejects concurrently, all within [`SETTLE_TIMEOUT`].
pub(crate) async fn settle<F>(what: &'static str, settles: impl IntoIterator<Item = F>)
where
    F: Future<Output = lapin::Result<bool>>,
{
    settle_within(SETTLE_TIMEOUT, what, settles).await;
}

/// Run settles concurrently; stop waiting after `limit`. The commands are already queued on the
/// connection by then, so one the broker still takes goes out anyway. True when all completed.
async fn settle_within<F>(
    limit: Duration,
    what: &'static str,
    settles: impl IntoIterator<Item = F>,
) -> bool
where
    F: Future<Output = lapin::Result<bool>>,
{
    let settles: Vec<F> = settles.into_iter().collect();
    if settles.is_empty() {
        return true;
    }
    let n = settles.len();
    if tokio::time::timeout(limit, futures_util::future::join_all(settles))
        .await
        .is_err()
    {
        tracing::warn!(
            deliveries = n,
            "broker did not take the {what} in time; unsettled messages are redelivered and \
             their claims dropped"
        );
        return false;
    }
    true
}

async fn execute(
    shared: Arc<Shared>,
    task: Task,
    delivery: TaskDelivery,
    permit: OwnedSemaphorePermit,
    records: mpsc::Sender<RecordJob>,
) {
    let timeout_secs = u64::try_from(task.timeout_secs).unwrap_or(1).max(1);
    // Long tasks would outlive the broker's consumer timeout; ack now and let the lease guard them.
    let delivery = if timeout_secs > shared.options.early_ack_secs {
        delivery::settle(&shared.publisher, [delivery.done()]).await;
        None
    } else {
        Some(delivery)
    };
    let token = shared.interrupt.child_token();
    if let Ok(mut running) = shared.running.lock() {
        running.insert(task.id, token.clone());
    }
    shared.metrics.in_flight.inc();
    let started_at = Utc::now();
    let wait = (started_at - task.run_at).to_std().unwrap_or_default();
    shared
        .metrics
        .queue_wait_seconds
        .with_label_values(&[shared.metrics.agent_label(&task.agent)])
        .observe(wait.as_secs_f64());
    let clock = Instant::now();
    // A panicking executor must not leave its task `running` under a lease renewed forever:
    // it counts as a retryable failure.
    let run =
        std::panic::AssertUnwindSafe(shared.executors.run(&task, task.attempts)).catch_unwind();
    let outcome = tokio::select! {
        result = tokio::time::timeout(Duration::from_secs(timeout_secs), run) => match result {
            Ok(Ok(result)) => Outcome::Finished(result),
            Ok(Err(_)) => Outcome::Finished(Err(TaskError::retryable("panic", "executor panicked"))),
            Err(_) => Outcome::TimedOut(timeout_secs),
        },
        () = token.cancelled() => if shared.interrupt.is_cancelled() {
            Outcome::Interrupted
        } else {
            Outcome::Cancelled
        },
    };
    if let Ok(mut running) = shared.running.lock() {
        running.remove(&task.id);
    }
    shared.metrics.in_flight.dec();
    shared
        .metrics
        .run_seconds
        .with_label_values(&[shared.metrics.agent_label(&task.agent)])
        .observe(clock.elapsed().as_secs_f64());
    if let Outcome::Finished(Err(e)) = &outcome {
        shared
            .metrics
            .executor_errors
            .with_label_values(&[e.kind()])
            .inc();
        tracing::info!(error = e.message(), "attempt failed");
    }
    drop(permit);
    let job = RecordJob {
        task_id: task.id,
        attempt: task.attempts,
        max_attempts: task.max_attempts,
        started_at,
        outcome,
        delivery,
    };
    if records.send(job).await.is_err() {
        shared.unhold([(task.id, task.attempts)]);
        tracing::error!(task_id = %task.id, "record loop gone; the lease will recover the task");
    }
}

/// Turn an outcome into the row update that records it.
fn to_record(job: &RecordJob, shared: &Shared) -> Option<AttemptRecord> {
    let base = AttemptRecord {
        task_id: job.task_id,
        attempt: job.attempt,
        status: "failed",
        outcome: "failed",
        result: None,
        error: None,
        retry_delay_secs: 0.0,
        started_at: job.started_at,
    };
    let retry = |outcome: &'static str, message: String, retry_after: Option<Duration>| {
        let message = storable_text(message);
        if job.attempt < job.max_attempts {
            // Attempt n (from 1) is followed by retry n - 1 (from 0).
            let retry = u32::try_from(job.attempt.saturating_sub(1)).unwrap_or(0);
            let delay = retry_after.unwrap_or_else(|| shared.backoff.delay(retry));
            AttemptRecord {
                status: "queued",
                outcome,
                error: Some(message),
                retry_delay_secs: delay.as_secs_f64(),
                ..base.clone()
            }
        } else {
            AttemptRecord {
                // The last attempt's record says how it ended, not that a retry follows.
                outcome: if outcome == "retry" {
                    "failed"
                } else {
                    outcome
                },
                error: Some(format!(
                    "{message} (attempt {} of {}, no attempts left)",
                    job.attempt, job.max_attempts
                )),
                ..base.clone()
            }
        }
    };
    Some(match &job.outcome {
        Outcome::Finished(Ok(result)) => AttemptRecord {
            status: "succeeded",
            outcome: "succeeded",
            result: Some(storable_json(result.clone())),
            ..base
        },
        Outcome::Finished(Err(TaskError::Retryable {
            message,
            retry_after,
            ..
        })) => retry("retry", message.clone(), *retry_after),
        Outcome::Finished(Err(TaskError::Terminal { message, .. })) => AttemptRecord {
            error: Some(storable_text(message.clone())),
            ..base
        },
        Outcome::TimedOut(secs) => retry("timeout", format!("timed out after {secs} s"), None),
        Outcome::Cancelled => AttemptRecord {
            status: "cancelled",
            outcome: "cancelled",
            error: Some("cancelled by request".into()),
            ..base
        },
        Outcome::Interrupted => return None,
    })
}

/// Record outcomes in batches, then acknowledge their deliveries. A database outage is ridden
/// out: nothing is acked before its outcome is stored. Past `abandon`, unrecorded jobs are left
/// unacked for the broker and the lease to recover.
pub(crate) async fn record_loop(
    shared: Arc<Shared>,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<RecordJob>>>,
    abandon: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_RECORD_BATCH);
    let mut gather = Gather::default();
    loop {
        {
            // Several loops share the queue: while one waits for its statement to commit,
            // another collects and writes the next batch.
            let mut jobs = jobs.lock().await;
            if gather.next(&mut jobs, &mut batch, MAX_RECORD_BATCH).await == 0 {
                return;
            }
        }
        let taken = std::mem::take(&mut batch);
        let stored = store(&shared, &taken, &abandon).await;
        // Recorded, or left to the lease: either way this process stops renewing them.
        shared.unhold(taken.iter().map(|j| (j.task_id, j.attempt)));
        if !stored {
            tracing::error!(
                tasks = taken.len(),
                "outcomes not recorded before shutdown; leases will recover them"
            );
            continue;
        }
        delivery::settle(
            &shared.publisher,
            taken
                .into_iter()
                .filter_map(|j| j.delivery)
                .map(TaskDelivery::done),
        )
        .await;
    }
}

async fn store(shared: &Shared, jobs: &[RecordJob], abandon: &CancellationToken) -> bool {
    let records: Vec<AttemptRecord> = jobs.iter().filter_map(|j| to_record(j, shared)).collect();
    let released: Vec<(Uuid, i32)> = jobs
        .iter()
        .filter(|j| matches!(j.outcome, Outcome::Interrupted))
        .map(|j| (j.task_id, j.attempt))
        .collect();
    let mut outage = Outage::new(abandon);
    let recorded = loop {
        if records.is_empty() {
            break Vec::new();
        }
        match db::runs::record(&shared.db, &shared.id, &records).await {
            Ok(recorded) => break recorded,
            Err(e) if e.is_unavailable() => {
                if !outage.wait("record outcomes", &e).await {
                    return false;
                }
            }
            // The database refused the statement itself: find the record it refused, so one
            // task's outcome cannot stop every other task's from being stored.
            Err(e) => {
                tracing::warn!(error = %e, tasks = records.len(), "recording a batch failed; recording its outcomes one by one");
                match record_one_by_one(shared, &records, &mut outage).await {
                    Some(recorded) => break recorded,
                    None => return false,
                }
            }
        }
    };
    while !released.is_empty() {
        match db::runs::release(&shared.db, &shared.id, &released).await {
            Ok(_) => break,
            Err(e) if e.is_unavailable() => {
                if !outage.wait("hand back interrupted tasks", &e).await {
                    return false;
                }
            }
            Err(e) => {
                give_up(shared, "release", &e);
                break;
            }
        }
    }
    after_record(shared, recorded).await;
    true
}

/// Record outcomes one statement each. An outcome the database refuses is replaced by a
/// failure that says so (without the agent's result); if that is refused too, the worker gives
/// up on the task and leaves it to its lease.
async fn record_one_by_one(
    shared: &Shared,
    records: &[AttemptRecord],
    outage: &mut Outage<'_>,
) -> Option<Vec<db::runs::Recorded>> {
    let mut recorded = Vec::with_capacity(records.len());
    for original in records {
        let mut record = original.clone();
        let mut replaced = false;
        loop {
            match db::runs::record(&shared.db, &shared.id, std::slice::from_ref(&record)).await {
                Ok(rows) => {
                    recorded.extend(rows);
                    break;
                }
                Err(e) if e.is_unavailable() => {
                    if !outage.wait("record an outcome", &e).await {
                        return None;
                    }
                }
                Err(e) if !replaced => {
                    tracing::error!(task_id = %record.task_id, error = %e, "the database refused this outcome; recording the task as failed instead");
                    record = unstorable(original);
                    replaced = true;
                }
                Err(e) => {
                    give_up(shared, "record", &e);
                    tracing::error!(task_id = %record.task_id, "outcome not recorded; the lease will recover the task");
                    break;
                }
            }
        }
    }
    Some(recorded)
}

/// The terminal failure recorded in place of an outcome the database refused.
fn unstorable(refused: &AttemptRecord) -> AttemptRecord {
    AttemptRecord {
        status: "failed",
        outcome: "failed",
        result: None,
        error: Some(
            "the attempt ended but its outcome could not be stored (the database refused it; \
             see the worker log)"
                .into(),
        ),
        retry_delay_secs: 0.0,
        ..refused.clone()
    }
}

/// Log and count an item a loop stops retrying.
pub(crate) fn give_up(shared: &Shared, what: &'static str, error: &bgagent_shared::Error) {
    shared.metrics.gave_up.with_label_values(&[what]).inc();
    tracing::error!(what, error = %error, "giving up on an item the database keeps refusing");
}

/// Riding out a database outage: waits with a growing delay, until `abandon` fires.
struct Outage<'a> {
    delay: Duration,
    abandon: &'a CancellationToken,
}

impl<'a> Outage<'a> {
    fn new(abandon: &'a CancellationToken) -> Self {
        Self {
            delay: Duration::from_millis(100),
            abandon,
        }
    }

    /// Wait before the next try; false when abandoned.
    async fn wait(&mut self, what: &str, error: &bgagent_shared::Error) -> bool {
        tracing::warn!(error = %error, "cannot {what}; retrying");
        tokio::select! {
            () = tokio::time::sleep(self.delay) => {}
            () = self.abandon.cancelled() => return false,
        }
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
        true
    }
}

async fn after_record(shared: &Shared, recorded: Vec<db::runs::Recorded>) {
    shared
        .processed
        .fetch_add(recorded.len() as i64, Ordering::Relaxed);
    for row in recorded {
        shared
            .metrics
            .processed
            .with_label_values(&[shared.metrics.agent_label(&row.agent), row.outcome.as_str()])
            .inc();
        tracing::debug!(task_id = %row.task_id, agent = %row.agent, status = %row.status, outcome = %row.outcome, "attempt recorded");
        if row.status == "failed" {
            dead_letter(
                shared,
                row.task_id,
                &row.agent,
                row.attempt,
                row.error.as_deref(),
            );
        }
    }
}

/// A copy of a terminally failed task for the dead queue.
pub(crate) struct DeadCopy {
    task_id: Uuid,
    agent: String,
    attempts: i32,
    error: String,
}

/// Queue a copy of a terminally failed task for the dead queue, for operators. The copy is
/// published by [`dead_copy_loop`], off the record loop, so a slow broker never holds up the
/// recording and acknowledging of other tasks. The row already says `failed`; when the copies
/// back up, this one is dropped (logged and counted).
pub(crate) fn dead_letter(
    shared: &Shared,
    task_id: Uuid,
    agent: &str,
    attempts: i32,
    error: Option<&str>,
) {
    let copy = DeadCopy {
        task_id,
        agent: agent.to_owned(),
        attempts,
        error: error.unwrap_or("failed").to_owned(),
    };
    if shared.dead_copies.try_send(copy).is_err() {
        shared
            .metrics
            .gave_up
            .with_label_values(&["dead_copy"])
            .inc();
        tracing::warn!(task_id = %task_id, "dead-queue copies are backed up; this one is dropped (the task row says failed)");
    }
}

/// Publish dead-queue copies until `stop`, then those still waiting (bounded by the publisher's
/// confirm timeout each).
pub(crate) async fn dead_copy_loop(
    shared: Arc<Shared>,
    mut copies: mpsc::Receiver<DeadCopy>,
    stop: CancellationToken,
) {
    loop {
        let copy = tokio::select! {
            copy = copies.recv() => copy,
            () = stop.cancelled() => break,
        };
        match copy {
            Some(copy) => publish_dead_copy(&shared, copy).await,
            None => return,
        }
    }
    while let Ok(copy) = copies.try_recv() {
        publish_dead_copy(&shared, copy).await;
    }
}

async fn publish_dead_copy(shared: &Shared, copy: DeadCopy) {
    let DeadCopy {
        task_id,
        agent,
        attempts,
        error,
    } = copy;
    let body = json!({"task_id": task_id, "agent": agent, "attempts": attempts, "error": error});
    let mut headers = FieldTable::default();
    headers.insert(
        "task_id".into(),
        AMQPValue::LongString(task_id.to_string().as_str().into()),
    );
    headers.insert(
        "x-error".into(),
        AMQPValue::LongString(error.as_str().into()),
    );
    headers.insert("x-attempts".into(), AMQPValue::LongInt(attempts));
    if let Err(e) = shared
        .publisher
        .publish_dead(body.to_string().as_bytes(), headers)
        .await
    {
        tracing::warn!(task_id = %task_id, error = %e, "cannot copy the failed task to the dead queue");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered() -> futures_util::future::Ready<lapin::Result<bool>> {
        futures_util::future::ready(Ok(true))
    }

    #[tokio::test]
    async fn settling_waits_for_every_answer() {
        let all = [answered(), answered(), answered()];
        assert!(settle_within(Duration::from_secs(5), "ack", all).await);
        let none: [futures_util::future::Ready<lapin::Result<bool>>; 0] = [];
        assert!(settle_within(Duration::from_secs(5), "ack", none).await);
    }

    /// An ack the connection never completes (a connection the broker is closing) must not hold
    /// up the loop that sent it: every task claimed after it would stay `running`, unrecorded.
    #[tokio::test]
    async fn settling_gives_up_on_an_ack_that_never_completes() {
        let started = Instant::now();
        let settles = [
            futures_util::future::Either::Left(answered()),
            futures_util::future::Either::Right(async {
                std::future::pending::<()>().await;
                Ok(true)
            }),
        ];
        assert!(!settle_within(Duration::from_millis(100), "ack", settles).await);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
