//! The relay: the outbox publisher and scheduler. It publishes due, unpublished tasks: enqueues
//! whose publish failed, delayed tasks, retries. Any number of workers share it.

use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// Rows published per relay pass.
const RELAY_BATCH: usize = 500;
/// Fresh enqueues are the API's to publish; the relay steps in after this long.
const FRESH_GRACE: Duration = Duration::from_secs(5);

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
        if published < RELAY_BATCH {
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
    let due = shared.store.take_due(RELAY_BATCH, FRESH_GRACE).await?;
    if due.ids().is_empty() {
        due.commit(&[]).await?;
        return Ok(0);
    }
    // No other relay takes these rows until commit; marking happens only for what the queue
    // confirmed. Grouped like the API's enqueues: a burst of due retries or delayed tasks is a
    // few messages, and a worker's prefetch (counted in tasks) stays fed.
    let confirmed = shared
        .queue
        .publish(due.ids(), shared.tasks_per_message)
        .await?;
    let total = due.ids().len();
    due.commit(&confirmed).await?;
    shared
        .metrics
        .relay_published
        .inc_by(confirmed.len() as u64);
    tracing::debug!(published = confirmed.len(), due = total, "relay pass");
    Ok(confirmed.len())
}
