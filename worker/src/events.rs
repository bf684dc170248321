//! What the queue reports besides deliveries: control broadcasts (pause, resume, cancel), task
//! messages it dead-lettered, and new sessions (which may follow a broker that lost its data).

use bgagent_shared::queue::{ControlMessage, QueueEvent, Settle};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::state::{MAX_REFUSALS, Shared};

/// Handle events until the queue's sessions end.
pub(crate) async fn event_loop(shared: Arc<Shared>, mut events: mpsc::Receiver<QueueEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            QueueEvent::Control(message) => control(&shared, message),
            QueueEvent::DeadLettered {
                tasks,
                reason,
                receipt,
            } => {
                match tasks.as_slice() {
                    [task_id] => fail_dead_lettered(&shared, *task_id, &reason).await,
                    _ => split_dead_lettered(&shared, &tasks).await,
                }
                shared.queue.settle(vec![Settle::Ack(receipt)]).await;
            }
            QueueEvent::SessionOpened => shared.broker_check.notify_one(),
        }
    }
}

fn control(shared: &Shared, message: ControlMessage) {
    match message {
        ControlMessage::Stop => {
            shared.set_paused(true);
        }
        ControlMessage::Start => {
            shared.set_paused(false);
        }
        ControlMessage::Cancel { task_id, worker_id } => {
            let for_us = worker_id.as_deref().is_none_or(|w| w == shared.id);
            if for_us && shared.cancel_task(task_id) {
                tracing::info!(task_id = %task_id, "cancelling running task");
            }
        }
    }
}

/// Fail the task of a dead-lettered single-task message.
async fn fail_dead_lettered(shared: &Shared, task_id: Uuid, reason: &str) {
    let failed = until_stored(shared, "fail a dead-lettered task", || {
        shared.store.fail_dead_lettered(task_id, reason)
    })
    .await
    .flatten();
    if let Some(bgagent_shared::domain::TaskEvent {
        agent, attempts, ..
    }) = failed
    {
        tracing::warn!(task_id = %task_id, agent, attempts, reason, "task failed: its message was dead-lettered");
        shared
            .metrics
            .processed
            .with_label_values(&[shared.metrics.agent_label(&agent), "failed"])
            .inc();
        // The broker already holds the dead copy, so this failure is counted here.
        shared
            .metrics
            .failed
            .with_label_values(&[shared.metrics.agent_label(&agent)])
            .inc();
    }
}

/// A dead-lettered message with several tasks does not fail them all for one poison task: each
/// is published again in a message of its own (a finished one is dropped at claim), so only a
/// task that keeps failing its deliveries alone is failed. The relay groups what it publishes,
/// so it only takes the tasks this publish could not (they become unpublished).
async fn split_dead_lettered(shared: &Shared, task_ids: &[Uuid]) {
    let alone = match shared.queue.publish(task_ids, 1).await {
        Ok(confirmed) => confirmed,
        Err(e) => {
            tracing::warn!(error = %e, "cannot publish the tasks of a dead-lettered message alone");
            Vec::new()
        }
    };
    let rest: Vec<Uuid> = task_ids
        .iter()
        .filter(|id| !alone.contains(id))
        .copied()
        .collect();
    if !rest.is_empty() {
        until_stored(
            shared,
            "unpublish the tasks of a dead-lettered message",
            || shared.store.unpublish_queued(&rest),
        )
        .await;
    }
    tracing::warn!(
        tasks = task_ids.len(),
        published_alone = alone.len(),
        left_to_the_relay = rest.len(),
        "a message with several tasks was dead-lettered; its tasks are sent again one by one"
    );
}

/// Run a store write until it succeeds, once a second: the dead-letter event is acked only after
/// its write is stored. An outage is waited out; a write the store refuses [`MAX_REFUSALS`]
/// times is given up (None).
async fn until_stored<T, F>(shared: &Shared, what: &str, mut write: impl FnMut() -> F) -> Option<T>
where
    F: Future<Output = bgagent_shared::Result<T>>,
{
    let mut refusals = 0;
    loop {
        match write().await {
            Ok(value) => return Some(value),
            Err(e) => {
                tracing::warn!(error = %e, "cannot {what}; retrying");
                if !e.is_unavailable() {
                    refusals += 1;
                    if refusals >= MAX_REFUSALS {
                        shared.give_up("dead_letter_event", &e);
                        return None;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
