//! Recovery from a broker that no longer holds the task messages it confirmed: its data
//! directory was lost, or the tasks queue was purged or deleted. PostgreSQL says which queued
//! tasks were published; when the broker clearly lost them, they are marked unpublished and the
//! relay publishes them again. Duplicates are harmless: the claim drops a message for a task
//! that is no longer queued.
//!
//! Two checks, one worker at a time (the store's fleet-wide lock, an advisory lock on
//! PostgreSQL). Only for a queue that can lose messages behind the store's back: the in-process
//! queue is rebuilt from the rows and has nothing to check.
//!
//! - **Epoch marker.** The `<prefix>.epoch` queue holds one persistent marker message a worker
//!   wrote, its id also stored in PostgreSQL (`control.broker_epoch`). Missing while the
//!   database knows one (checked at once whenever a broker session opens, and periodically):
//!   the broker lost its data or the queue was deleted, so every queued, published task is
//!   published again, then a new marker is written. Written last, so a worker that dies midway
//!   leaves the marker missing and the next one redoes the work. The first start against a
//!   database only writes the marker.
//! - **Empty tasks queue.** While the marker survives (a purge or a deleted tasks queue), a task
//!   published more than two periods ago, due and still queued, while the tasks queue holds no
//!   ready message, is either in a worker's prefetch window (unacknowledged messages are not
//!   visible over AMQP) or lost. Seen on two checks in a row, those tasks are published again.
//!   A fleet that is saturated and holds such tasks in its prefetch windows gets them re-sent
//!   (at most once per two periods, and only while the queue has nothing ready); the copies
//!   are dropped at claim. Only "nothing ready" is used, never a count compared with the
//!   database: a message may carry several tasks (`BGAGENT_TASKS_PER_MESSAGE`), so message and
//!   task counts do not match.

use bgagent_shared::queue::LossDetection;
use bgagent_shared::store::Exclusive;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::state::Shared;

/// Rows made unpublished per statement.
const UNPUBLISH_BATCH: i64 = 5000;
/// Wait after a failed check that followed a new session (the broker may still be starting).
const RETRY_SOON: Duration = Duration::from_secs(2);
/// Longest check: a broker that accepts a command and never answers must not hold the lock
/// (and a database connection) forever; dropping the transaction releases both.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Run the checks every `BGAGENT_BROKER_CHECK_SECS` and whenever a broker session opens.
pub(crate) async fn check_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let period = Duration::from_secs(shared.options.broker_check_secs.max(1));
    let mut streak = 0u32;
    let mut wait = period;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.broker_check.notified() => {}
            () = stop.cancelled() => return,
        }
        let checked = tokio::time::timeout(CHECK_TIMEOUT, check_once(&shared, &mut streak))
            .await
            .unwrap_or_else(|_| Err(bgagent_shared::Error::Broker("check timed out".into())));
        wait = match checked {
            Ok(_) => period,
            Err(e) => {
                tracing::warn!(error = %e, "broker-loss check failed; retrying");
                RETRY_SOON.min(period)
            }
        };
    }
}

/// One check; returns how many tasks it made unpublished.
async fn check_once(shared: &Shared, streak: &mut u32) -> bgagent_shared::Result<u64> {
    let Some(markers) = shared.queue.loss_detection() else {
        return Ok(0);
    };
    let Some(lock) = shared.store.try_lock(Exclusive::BrokerCheck).await? else {
        return Ok(0);
    };
    let republished = check_locked(shared, markers, streak).await?;
    lock.release().await?;
    shared.metrics.republished.inc_by(republished);
    Ok(republished)
}

async fn check_locked(
    shared: &Shared,
    markers: &dyn LossDetection,
    streak: &mut u32,
) -> bgagent_shared::Result<u64> {
    let stale = 2 * Duration::from_secs(shared.options.broker_check_secs.max(1));
    if markers.epoch_markers().await? == 0 {
        *streak = 0;
        // No epoch recorded: the first start against this database, nothing was lost.
        let lost = shared.store.broker_epoch().await?.is_some();
        let count = if lost {
            unpublish(shared, None).await?
        } else {
            0
        };
        // Written after the tasks are unpublished, so a worker dying midway leaves the marker
        // missing and the next check redoes it.
        let epoch = Uuid::now_v7();
        markers.write_epoch_marker(&epoch.to_string()).await?;
        shared.store.set_broker_epoch(epoch).await?;
        if lost {
            tracing::warn!(
                republished = count,
                "the broker lost its epoch marker (its data was lost, or the queue deleted): \
                 every queued task is published again"
            );
        } else {
            tracing::info!(%epoch, "first epoch marker stored on the broker");
        }
        return Ok(count);
    }
    let ready = shared.queue.depths().await?.ready;
    let suspect = ready == 0 && shared.store.stale_published_exists(stale).await?;
    *streak = if suspect { *streak + 1 } else { 0 };
    if *streak < 2 {
        return Ok(0);
    }
    *streak = 0;
    let count = unpublish(shared, Some(stale)).await?;
    tracing::warn!(
        republished = count,
        stale_secs = stale.as_secs(),
        "the tasks queue is empty while tasks published long ago are still queued (purged or \
         deleted queue?): publishing them again"
    );
    Ok(count)
}

/// Make unpublished, in batches, the queued tasks published more than `stale` ago (all of them
/// when None).
async fn unpublish(shared: &Shared, stale: Option<Duration>) -> bgagent_shared::Result<u64> {
    let mut total = 0;
    loop {
        let count = shared
            .store
            .unpublish_published(stale, UNPUBLISH_BATCH)
            .await?;
        total += count;
        if count < UNPUBLISH_BATCH as u64 {
            return Ok(total);
        }
    }
}
