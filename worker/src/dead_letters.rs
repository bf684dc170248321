//! Copies of terminally failed tasks for operators, published off the record loop so a slow
//! queue never holds up the recording of other tasks. The row already says `failed`; a copy is
//! only a convenience.

use bgagent_shared::queue::DeadCopy;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::state::Shared;

/// Copies that may wait for the queue before new ones are dropped.
pub(crate) const BACKLOG: usize = 4096;

/// Count a terminally failed task and queue a copy of it; when the copies back up, the copy is
/// dropped (logged and counted).
pub(crate) fn dead_letter(
    shared: &Shared,
    task_id: Uuid,
    agent: &str,
    attempts: i32,
    error: Option<&str>,
) {
    shared
        .metrics
        .failed
        .with_label_values(&[shared.metrics.agent_label(agent)])
        .inc();
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
        tracing::warn!(task_id = %task_id, "dead-letter copies are backed up; this one is dropped (the task row says failed)");
    }
}

/// Publish copies until `stop`, then those still waiting (each bounded by the queue's confirm
/// timeout).
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
            Some(copy) => publish(&shared, &copy).await,
            None => return,
        }
    }
    while let Ok(copy) = copies.try_recv() {
        publish(&shared, &copy).await;
    }
}

async fn publish(shared: &Shared, copy: &DeadCopy) {
    if let Err(e) = shared.queue.publish_dead(copy).await {
        tracing::warn!(task_id = %copy.task_id, error = %e, "cannot copy the failed task to the dead letters");
    }
}
