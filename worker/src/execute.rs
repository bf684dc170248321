//! Running one claimed attempt: bounded by its timeout, cancellable, panic-proof; the outcome
//! goes to the record loop.

use bgagent_shared::domain::Task;
use chrono::Utc;
use futures_util::FutureExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::executor::{ExecResult, TaskError};
use crate::record::RecordJob;
use crate::state::Shared;

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

pub(crate) async fn execute(
    shared: Arc<Shared>,
    task: Task,
    permit: OwnedSemaphorePermit,
    records: mpsc::Sender<RecordJob>,
) {
    let timeout_secs = u64::try_from(task.timeout_secs).unwrap_or(1).max(1);
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
    };
    if records.send(job).await.is_err() {
        shared.unhold([(task.id, task.attempts)]);
        tracing::error!(task_id = %task.id, "record loop gone; the lease will recover the task");
    }
}
