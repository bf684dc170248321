//! Recording outcomes: batched and fenced on the claimed attempt. A store outage is ridden out
//! (the lease, renewed meanwhile, keeps the task this worker's); an outcome the store refuses
//! fails only its own task.

use bgagent_shared::domain::{TaskStatus, storable_json, storable_text};
use bgagent_shared::gather::Gather;
use bgagent_shared::store::{AttemptOutcome, AttemptRecord, Recorded};
use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::dead_letters::dead_letter;
use crate::execute::Outcome;
use crate::executor::TaskError;
use crate::state::Shared;

/// Most outcomes recorded in one statement.
const MAX_RECORD_BATCH: usize = 512;

/// An attempt waiting to be recorded and acknowledged.
pub(crate) struct RecordJob {
    pub task_id: Uuid,
    pub attempt: i32,
    pub max_attempts: i32,
    pub started_at: chrono::DateTime<Utc>,
    pub outcome: Outcome,
}

/// Turn an outcome into the row update that records it (None: handed back, not recorded).
fn to_record(job: &RecordJob, shared: &Shared) -> Option<AttemptRecord> {
    let base = AttemptRecord {
        task_id: job.task_id,
        attempt: job.attempt,
        status: TaskStatus::Failed,
        outcome: AttemptOutcome::Failed,
        result: None,
        error: None,
        retry_delay: Duration::ZERO,
        started_at: job.started_at,
    };
    let retry = |outcome: AttemptOutcome, message: String, retry_after: Option<Duration>| {
        let message = storable_text(message);
        if job.attempt < job.max_attempts {
            // Attempt n (from 1) is followed by retry n - 1 (from 0).
            let retry = u32::try_from(job.attempt.saturating_sub(1)).unwrap_or(0);
            let delay = retry_after.unwrap_or_else(|| shared.backoff.delay(retry));
            AttemptRecord {
                status: TaskStatus::Queued,
                outcome,
                error: Some(message),
                retry_delay: delay,
                ..base.clone()
            }
        } else {
            AttemptRecord {
                // The last attempt's record says how it ended, not that a retry follows.
                outcome: if outcome == AttemptOutcome::Retry {
                    AttemptOutcome::Failed
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
            status: TaskStatus::Succeeded,
            outcome: AttemptOutcome::Succeeded,
            result: Some(storable_json(result.clone())),
            ..base
        },
        Outcome::Finished(Err(TaskError::Retryable {
            message,
            retry_after,
            ..
        })) => retry(AttemptOutcome::Retry, message.clone(), *retry_after),
        Outcome::Finished(Err(TaskError::Terminal { message, .. })) => AttemptRecord {
            error: Some(storable_text(message.clone())),
            ..base
        },
        Outcome::TimedOut(secs) => retry(
            AttemptOutcome::Timeout,
            format!("timed out after {secs} s"),
            None,
        ),
        Outcome::Cancelled => AttemptRecord {
            status: TaskStatus::Cancelled,
            outcome: AttemptOutcome::Cancelled,
            error: Some("cancelled by request".into()),
            ..base
        },
        Outcome::Interrupted => return None,
    })
}

/// Record outcomes in batches. Past `abandon`, unrecorded jobs are left to their leases.
pub(crate) async fn record_loop(
    shared: Arc<Shared>,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<RecordJob>>>,
    abandon: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_RECORD_BATCH);
    let mut gather = Gather::default();
    loop {
        {
            // Several loops may share the queue: while one waits for its statement to commit,
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
        }
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
        match shared.store.record(&shared.id, &records).await {
            Ok(recorded) => break recorded,
            Err(e) if e.is_unavailable() => {
                if !outage.wait("record outcomes", &e).await {
                    return false;
                }
            }
            // The store refused the statement itself: find the record it refused, so one task's
            // outcome cannot stop every other task's from being stored.
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
        match shared.store.release(&shared.id, &released).await {
            Ok(_) => break,
            Err(e) if e.is_unavailable() => {
                if !outage.wait("hand back interrupted tasks", &e).await {
                    return false;
                }
            }
            Err(e) => {
                shared.give_up("release", &e);
                break;
            }
        }
    }
    after_record(shared, recorded);
    true
}

/// Record outcomes one statement each. An outcome the store refuses is replaced by a failure
/// that says so (without the agent's result); if that is refused too, the worker gives up on the
/// task and leaves it to its lease.
async fn record_one_by_one(
    shared: &Shared,
    records: &[AttemptRecord],
    outage: &mut Outage<'_>,
) -> Option<Vec<Recorded>> {
    let mut recorded = Vec::with_capacity(records.len());
    for original in records {
        let mut record = original.clone();
        let mut replaced = false;
        loop {
            match shared
                .store
                .record(&shared.id, std::slice::from_ref(&record))
                .await
            {
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
                    tracing::error!(task_id = %record.task_id, error = %e, "the store refused this outcome; recording the task as failed instead");
                    record = unstorable(original);
                    replaced = true;
                }
                Err(e) => {
                    shared.give_up("record", &e);
                    tracing::error!(task_id = %record.task_id, "outcome not recorded; the lease will recover the task");
                    break;
                }
            }
        }
    }
    Some(recorded)
}

/// The terminal failure recorded in place of an outcome the store refused.
fn unstorable(refused: &AttemptRecord) -> AttemptRecord {
    AttemptRecord {
        status: TaskStatus::Failed,
        outcome: AttemptOutcome::Failed,
        result: None,
        error: Some(
            "the attempt ended but its outcome could not be stored (the database refused it; \
             see the worker log)"
                .into(),
        ),
        retry_delay: Duration::ZERO,
        ..refused.clone()
    }
}

/// Riding out a store outage: waits with a growing delay, until `abandon` fires.
pub(crate) struct Outage<'a> {
    delay: Duration,
    abandon: &'a CancellationToken,
}

impl<'a> Outage<'a> {
    pub(crate) fn new(abandon: &'a CancellationToken) -> Self {
        Self {
            delay: Duration::from_millis(100),
            abandon,
        }
    }

    /// Wait before the next try; false when abandoned.
    pub(crate) async fn wait(&mut self, what: &str, error: &bgagent_shared::Error) -> bool {
        tracing::warn!(error = %error, "cannot {what}; retrying");
        tokio::select! {
            () = tokio::time::sleep(self.delay) => {}
            () = self.abandon.cancelled() => return false,
        }
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
        true
    }
}

fn after_record(shared: &Shared, recorded: Vec<Recorded>) {
    shared
        .processed
        .fetch_add(recorded.len() as i64, Ordering::Relaxed);
    for row in recorded {
        shared
            .metrics
            .processed
            .with_label_values(&[shared.metrics.agent_label(&row.agent), row.outcome.as_str()])
            .inc();
        tracing::debug!(task_id = %row.task_id, agent = %row.agent, status = row.status.as_str(), outcome = row.outcome.as_str(), "attempt recorded");
        if row.status == TaskStatus::Failed {
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
