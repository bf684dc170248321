//! The pruner: keeps the database bounded. Every `BGAGENT_PRUNE_INTERVAL` it deletes the
//! finished tasks past their retention (`BGAGENT_RETAIN_SUCCEEDED`, `_CANCELLED`, `_FAILED`)
//! with their attempt records, and the rows of workers gone for a day. A pruned task answers
//! 404 and its idempotency key is free again.
//!
//! One worker of the fleet prunes at a time (the store's fleet-wide lock, an advisory lock on
//! PostgreSQL); the others find it taken and sleep. Each batch is one statement of at most
//! [`BATCH`] rows that skips rows the hot path holds; a pass goes on batch after batch until one
//! comes back short, so a backlog (retention just turned on, or shortened) drains at once
//! without any statement growing with it.

use bgagent_shared::domain::TaskStatus;
use bgagent_shared::store::Exclusive;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionOptions;
use crate::state::Shared;

/// Rows deleted per statement: large enough that statement overhead is small, small enough
/// that a batch is short (a few milliseconds) and its locks and WAL stay modest.
const BATCH: i64 = 1000;
/// A worker not seen for this long (stopped, or gone without stopping) loses its row.
const WORKERS_GONE: Duration = Duration::from_secs(86_400);

/// What one pass deleted.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    succeeded: u64,
    cancelled: u64,
    failed: u64,
    attempts: u64,
    workers: u64,
}

impl Totals {
    fn any(&self) -> bool {
        self.succeeded + self.cancelled + self.failed + self.attempts + self.workers > 0
    }
}

/// Prune every `BGAGENT_PRUNE_INTERVAL` (never when it is `off`) until `stop`.
pub(crate) async fn prune_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let retention = shared.options.retention.clone();
    let Some(period) = retention.prune_interval else {
        return;
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.cancelled() => return,
        }
        let mut totals = Totals::default();
        // A stop drops a pass midway: the batch in flight rolls back and the lock goes with it.
        let passed = tokio::select! {
            passed = prune_once(&shared, &retention, &mut totals) => passed,
            () = stop.cancelled() => return,
        };
        if totals.any() {
            tracing::info!(
                succeeded = totals.succeeded,
                cancelled = totals.cancelled,
                failed = totals.failed,
                attempts = totals.attempts,
                workers = totals.workers,
                "pruned rows past their retention"
            );
        }
        if let Err(e) = passed {
            // Retried at the next period: a database that is down gets no tight loop.
            tracing::warn!(error = %e, "prune pass failed; retrying next period");
        }
    }
}

/// One pass, if no other worker is pruning; `totals` counts what it deleted, also when it fails
/// midway.
async fn prune_once(
    shared: &Shared,
    retention: &RetentionOptions,
    totals: &mut Totals,
) -> bgagent_shared::Result<()> {
    let Some(lock) = shared.store.try_lock(Exclusive::Prune).await? else {
        return Ok(());
    };
    let metrics = &shared.metrics.pruned;
    for (status, keep) in [
        (TaskStatus::Succeeded, retention.retain_succeeded),
        (TaskStatus::Cancelled, retention.retain_cancelled),
        (TaskStatus::Failed, retention.retain_failed),
    ] {
        let Some(age) = keep else { continue };
        loop {
            let batch = shared.store.prune_tasks(status, age, BATCH).await?;
            metrics.with_label_values(&["tasks"]).inc_by(batch.tasks);
            metrics
                .with_label_values(&["attempts"])
                .inc_by(batch.attempts);
            totals.attempts += batch.attempts;
            match status {
                TaskStatus::Succeeded => totals.succeeded += batch.tasks,
                TaskStatus::Cancelled => totals.cancelled += batch.tasks,
                _ => totals.failed += batch.tasks,
            }
            if batch.tasks < BATCH as u64 {
                break;
            }
        }
    }
    loop {
        let count = shared.store.prune_workers(WORKERS_GONE, BATCH).await?;
        metrics.with_label_values(&["workers"]).inc_by(count);
        totals.workers += count;
        if count < BATCH as u64 {
            break;
        }
    }
    lock.release().await
}
