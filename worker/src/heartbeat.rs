//! Heartbeats: the worker's row, the leases of the tasks it holds (and cancels missed while it
//! held them), and the fleet's paused state re-read, so a worker that missed a control message
//! still ends up right.

use bgagent_shared::store::Heartbeat;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

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
        let beat = Heartbeat {
            worker_id: &shared.id,
            paused: shared.is_paused(),
            in_flight,
            processed,
        };
        if let Err(e) = shared.store.heartbeat(&beat).await {
            tracing::warn!(error = %e, "heartbeat failed");
            continue;
        }
        let held = shared.held();
        let lease = Duration::from_secs(shared.options.lease_secs.max(1));
        match shared.store.renew_leases(&shared.id, lease, &held).await {
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
    match shared.store.paused().await {
        Ok(paused) => {
            shared.set_paused(paused);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the paused state"),
    }
}
