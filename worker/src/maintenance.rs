//! Periodic work: heartbeats (with lease renewal and paused-state reconciliation), the relay
//! (the outbox publisher and scheduler) and the reaper (recovery of lost workers' tasks).

use bgagent_shared::db;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::WorkerOptions;
use crate::pipeline::dead_letter;
use crate::state::Shared;

/// Rows published per relay transaction.
const RELAY_BATCH: i64 = 500;
/// Fresh enqueues are the API's to publish; the relay steps in after this long.
const FRESH_GRACE_SECS: f64 = 5.0;

/// Heartbeat, renew leases, honour missed cancels, and re-read the fleet's paused state, so a
/// worker that missed a control message still ends up right.
pub(crate) async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.options.heartbeat());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let in_flight = i32::try_from(shared.metrics.in_flight.get()).unwrap_or(i32::MAX);
        let processed = shared.processed.load(Ordering::Relaxed);
        if let Err(e) = db::workers::heartbeat(
            &shared.db,
            &shared.id,
            shared.is_paused(),
            in_flight,
            processed,
        )
        .await
        {
            tracing::warn!(error = %e, "heartbeat failed");
            continue;
        }
        let held = shared.held();
        match db::runs::renew_leases(&shared.db, &shared.id, shared.options.lease_secs, &held).await
        {
            Ok(cancelled) => {
                for task_id in cancelled {
                    if shared.cancel_task(task_id) {
                        tracing::info!(task_id = %task_id, "cancelling running task (flag seen at heartbeat)");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
        }
        reconcile_paused(&shared).await;
    }
}

/// Adopt the stored paused state.
pub(crate) async fn reconcile_paused(shared: &Shared) {
    match db::control::paused(&shared.db).await {
        Ok(paused) => {
            shared.set_paused(paused);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the paused state"),
    }
}

/// Publish due, unpublished tasks: enqueues whose publish failed, delayed tasks, retries.
pub(crate) async fn relay_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let interval = Duration::from_millis(shared.options.relay_interval_ms.max(10));
    loop {
        let published = match relay_once(&shared).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "relay pass failed");
                0
            }
        };
        // A full batch means more are waiting: go again at once.
        if published < RELAY_BATCH as usize {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
        } else if stop.is_cancelled() {
            return;
        }
    }
}

/// One relay pass; returns how many tasks it published.
pub(crate) async fn relay_once(shared: &Shared) -> bgagent_shared::Result<usize> {
    let mut tx = shared.db.begin().await?;
    let due = db::runs::lock_unpublished(&mut tx, RELAY_BATCH, FRESH_GRACE_SECS).await?;
    if due.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    // The rows stay locked until commit, so no other relay publishes them meanwhile; marking
    // happens only for what the broker confirmed. One task per message: relayed tasks (retries,
    // delayed tasks, tasks of a dead-lettered multi-task message) each stand alone.
    let confirmed = shared.publisher.publish_tasks(&due, 1).await?;
    db::runs::mark_relayed(&mut *tx, &confirmed).await?;
    tx.commit().await?;
    shared
        .metrics
        .relay_published
        .inc_by(confirmed.len() as u64);
    tracing::debug!(published = confirmed.len(), due = due.len(), "relay pass");
    Ok(confirmed.len())
}

/// Time a last-attempt task gets past its own timeout before the reaper fails it: the attempt
/// cannot legitimately run longer, so a holder that was frozen still gets to report it.
const LAST_ATTEMPT_GRACE_SECS: f64 = 30.0;

/// Recover the running tasks of workers that died or lost their lease.
pub(crate) async fn reaper_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let period = shared.options.heartbeat() * 2;
    let mut tick = tokio::time::interval(period);
    let mut view = DatabaseView::new(&shared.options);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match reap_once(&shared, &mut view).await {
            Ok(reaped) => {
                for task in reaped {
                    shared.metrics.recovered.inc();
                    tracing::warn!(task_id = %task.task_id, agent = %task.agent, status = %task.status, "recovered task of a lost worker");
                    if task.status == "failed" {
                        dead_letter(
                            &shared,
                            task.task_id,
                            &task.agent,
                            task.attempts,
                            Some("worker lost on the last attempt"),
                        );
                    }
                }
            }
            Err(e) => {
                view.lost();
                tracing::warn!(error = %e, "reaper pass failed");
            }
        }
    }
}

/// What the reaper knows about its own view of the database. A lease expires when its holder
/// stops renewing it; but while the database (or this process) stalls, nobody can renew, and
/// right after the stall every lease looks expired. So the reaper acts only once its view has
/// been current for a whole lease period, in which every live holder has renewed.
struct DatabaseView {
    /// Since when every round trip was prompt; None after a failure or stall.
    current_since: Option<Instant>,
    /// When the previous pass ran (a late pass means this process itself stalled).
    last_pass: Option<Instant>,
    /// A round trip slower than this is a stall.
    stall: Duration,
    /// How long the view must be current before leases are judged.
    settle: Duration,
    /// A pass later than this after the previous one means this process stalled.
    late_pass: Duration,
}

impl DatabaseView {
    fn new(options: &WorkerOptions) -> Self {
        let lease = Duration::from_secs(options.lease_secs.max(1));
        Self {
            current_since: None,
            last_pass: None,
            stall: (lease / 4).max(Duration::from_secs(1)),
            settle: lease + options.heartbeat(),
            late_pass: options.heartbeat() * 4 + lease / 4,
        }
    }

    fn lost(&mut self) {
        self.current_since = None;
    }
}

/// One reaper pass: reap only with a view that is current and has been for a lease period.
async fn reap_once(
    shared: &Shared,
    view: &mut DatabaseView,
) -> bgagent_shared::Result<Vec<db::runs::Reaped>> {
    let sent = Instant::now();
    let late = view
        .last_pass
        .replace(sent)
        .is_some_and(|last| sent - last > view.late_pass);
    let db_now = db::now(&shared.db).await?;
    let answered = Instant::now();
    if late || answered - sent > view.stall {
        tracing::info!(
            round_trip_ms = (answered - sent).as_millis() as u64,
            late,
            "database or worker stalled; leases are judged again once every holder could renew"
        );
        view.current_since = Some(answered);
        return Ok(Vec::new());
    }
    let current_since = *view.current_since.get_or_insert(answered);
    if answered - current_since < view.settle {
        return Ok(Vec::new());
    }
    // The reap must run promptly too: one that waits out a stall in the connection or the server
    // would judge leases nobody could renew.
    let run_before = chrono::Duration::from_std(answered.elapsed() + view.stall)
        .ok()
        .and_then(|slack| db_now.checked_add_signed(slack))
        .unwrap_or(db_now);
    db::runs::reap(&shared.db, LAST_ATTEMPT_GRACE_SECS, run_before).await
}
