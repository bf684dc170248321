//! Taking deliveries and claiming their tasks in batches: the store decides who runs a task; the
//! queue only says "look at this id".

use bgagent_shared::domain::Task;
use bgagent_shared::gather::Gather;
use bgagent_shared::queue::{Delivery, Settle};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::delivery::{self, TaskDelivery};
use crate::execute::execute;
use crate::record::RecordJob;
use crate::state::{MAX_REFUSALS, Shared};

/// Most deliveries claimed in one statement.
const MAX_CLAIM_BATCH: usize = 256;

/// Take deliveries, claim their tasks in batches, and start the claimed tasks.
pub(crate) async fn claim_loop(
    shared: Arc<Shared>,
    mut deliveries: mpsc::Receiver<Delivery>,
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
        // Wait for room before taking deliveries: unclaimed tasks stay `queued` in the store
        // (and unsettled in the queue) instead of piling up here. A stop does not wait for room:
        // with every permit held by long tasks, none may free before the grace period is over.
        let first = tokio::select! {
            biased;
            permit = shared.permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = stopping.cancelled() => {
                hand_back_all(&shared, &mut backlog, &mut deliveries).await;
                return;
            }
        };
        let halted = || stopping.is_cancelled() || shared.is_paused();
        if backlog.is_empty() {
            let room = 1 + shared.permits.available_permits().min(MAX_CLAIM_BATCH - 1);
            if gather.next(&mut deliveries, &mut received, room).await == 0 {
                return;
            }
            if halted() {
                // Nothing new starts while stopping or paused: hand the messages back.
                let back = received
                    .drain(..)
                    .map(|d: Delivery| Settle::HandBack(d.receipt));
                shared.queue.settle(back.collect()).await;
                continue;
            }
            backlog.extend(unpack(&shared, received.drain(..)).await);
        } else if halted() {
            delivery::settle(
                &*shared.queue,
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

/// Stopping: hand back the tasks not claimed yet and every delivery still buffered, until the
/// ended session closes the channel.
async fn hand_back_all(
    shared: &Shared,
    backlog: &mut VecDeque<(Uuid, TaskDelivery)>,
    deliveries: &mut mpsc::Receiver<Delivery>,
) {
    delivery::settle(
        &*shared.queue,
        backlog.drain(..).map(|(_, d)| d.hand_back()),
    )
    .await;
    let mut received = Vec::new();
    while deliveries.recv_many(&mut received, MAX_CLAIM_BATCH).await > 0 {
        let back = received
            .drain(..)
            .map(|d: Delivery| Settle::HandBack(d.receipt));
        shared.queue.settle(back.collect()).await;
    }
}

/// The task ids of each delivery, each with its share of the delivery. An unreadable message is
/// rejected (to the dead letters); one without ids is acked.
async fn unpack(
    shared: &Shared,
    received: impl Iterator<Item = Delivery>,
) -> Vec<(Uuid, TaskDelivery)> {
    let mut tasks = Vec::new();
    let mut settles = Vec::new();
    for delivery in received {
        match delivery.tasks {
            Ok(ids) if ids.is_empty() => settles.push(Settle::Ack(delivery.receipt)),
            Ok(ids) => {
                let shares = TaskDelivery::split(delivery.receipt, ids.len());
                tasks.extend(ids.into_iter().zip(shares));
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable message sent to the dead letters");
                shared
                    .metrics
                    .executor_errors
                    .with_label_values(&["unparseable"])
                    .inc();
                settles.push(Settle::Reject(delivery.receipt));
            }
        }
    }
    if !settles.is_empty() {
        shared.queue.settle(settles).await;
    }
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
    let lease = Duration::from_secs(shared.options.lease_secs.max(1));
    let mut refusals = 0;
    let claimed = loop {
        match shared.store.claim(&ids, &shared.id, lease).await {
            Ok(tasks) => break tasks,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim tasks; retrying");
                // An outage is waited out; a statement the store keeps refusing is not retried
                // forever: the messages go back to the queue, whose delivery limit dead-letters a
                // message that can never be claimed.
                if !e.is_unavailable() {
                    refusals += 1;
                }
                if stopping.is_cancelled() || refusals >= MAX_REFUSALS {
                    if refusals >= MAX_REFUSALS {
                        shared.give_up("claim", &e);
                    }
                    delivery::settle(
                        &*shared.queue,
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
    // The claim is committed: from here the store's lease guards each task (a worker that dies
    // leaves it to the reaper), so the message is done with, whatever the task's run takes. No
    // message then outlives the broker's consumer timeout, and the queue's prefetch bounds only
    // tasks waiting for a slot, not tasks running.
    let mut settled = Vec::with_capacity(batch.len());
    // There is a permit for every task of the batch.
    for ((id, delivery), permit) in batch.into_iter().zip(permits.drain(..)) {
        match claimed.remove(&id) {
            Some(task) => {
                let span = tracing::info_span!("task", task_id = %task.id, agent = %task.agent, attempt = task.attempts);
                executions
                    .spawn(execute(shared.clone(), task, permit, records.clone()).instrument(span));
            }
            // Finished, cancelled, running elsewhere or not yet due: a duplicate or stale message.
            None => tracing::debug!(task_id = %id, "message for an unclaimable task dropped"),
        }
        settled.push(delivery.done());
    }
    delivery::settle(&*shared.queue, settled).await;
}
