//! State shared by a worker's loops.

use bgagent_shared::queue::{DeadCopy, TaskQueue};
use bgagent_shared::store::TaskStore;
use bgagent_types::backoff::Backoff;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::WorkerOptions;
use crate::executor::Executors;
use crate::metrics::WorkerMetrics;

/// Times a loop retries an item the store refuses (not an outage) before giving up on it.
pub(crate) const MAX_REFUSALS: u32 = 3;

/// Everything the loops of one worker share.
pub(crate) struct Shared {
    pub id: String,
    pub options: WorkerOptions,
    pub store: Arc<dyn TaskStore>,
    pub queue: Arc<dyn TaskQueue>,
    pub executors: Executors,
    pub metrics: Arc<WorkerMetrics>,
    pub backoff: Backoff,
    /// Cancellation handle of every running task, for `cancel` control messages.
    pub running: Mutex<HashMap<Uuid, CancellationToken>>,
    /// Tasks this process claimed and has not recorded (or handed back) yet, with the claimed
    /// attempt: the leases the heartbeat renews.
    pub held: Mutex<HashMap<Uuid, i32>>,
    /// Attempts finished since start (heartbeat).
    pub processed: AtomicI64,
    /// The fleet's paused state as this worker knows it.
    pub paused: watch::Sender<bool>,
    /// Fired when the shutdown grace is over: in-flight tasks are aborted and handed back.
    pub interrupt: CancellationToken,
    /// Most task ids in one queue message (`BGAGENT_TASKS_PER_MESSAGE`): the relay groups up to
    /// this many, and the prefetch in messages is derived from it.
    pub tasks_per_message: usize,
    /// Bounds the tasks running at once.
    pub permits: Arc<Semaphore>,
    /// Copies of failed tasks waiting to be published to the dead letters.
    pub dead_copies: mpsc::Sender<DeadCopy>,
    /// True while a queue session is up (`/ready`).
    pub connected: Arc<AtomicBool>,
    /// Wakes the broker-loss check (a new queue session opened).
    pub broker_check: tokio::sync::Notify,
}

impl Shared {
    /// Unsettled messages the queue may deliver ahead. Messages are settled at claim, so this
    /// bounds only the tasks waiting for a free slot: `BGAGENT_PREFETCH` counts tasks, and a
    /// message holds up to [`Shared::tasks_per_message`] of them.
    pub fn prefetch_messages(&self) -> u16 {
        let tasks = usize::from(self.options.prefetch.max(1));
        u16::try_from(tasks.div_ceil(self.tasks_per_message.max(1))).unwrap_or(u16::MAX)
    }

    /// Store a paused state; true when it changed.
    pub fn set_paused(&self, paused: bool) -> bool {
        let changed = self.paused.send_if_modified(|p| {
            let changed = *p != paused;
            *p = paused;
            changed
        });
        if changed {
            tracing::info!(worker_id = %self.id, paused, "paused state changed");
        }
        self.metrics.paused.set(i64::from(paused));
        changed
    }

    /// Remember attempts just claimed, so their leases are renewed until they are recorded.
    pub fn hold(&self, attempts: impl IntoIterator<Item = (Uuid, i32)>) {
        if let Ok(mut held) = self.held.lock() {
            held.extend(attempts);
        }
    }

    /// Forget attempts whose outcome is recorded (or left to the lease). A later attempt of the
    /// same task, claimed again meanwhile, stays held.
    pub fn unhold(&self, attempts: impl IntoIterator<Item = (Uuid, i32)>) {
        if let Ok(mut held) = self.held.lock() {
            for (id, attempt) in attempts {
                if held.get(&id) == Some(&attempt) {
                    held.remove(&id);
                }
            }
        }
    }

    /// The tasks held now.
    pub fn held(&self) -> Vec<Uuid> {
        self.held
            .lock()
            .map(|held| held.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Whether the fleet is paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Cancel a running task held by this worker; false when it does not run here.
    pub fn cancel_task(&self, task_id: Uuid) -> bool {
        let token = self
            .running
            .lock()
            .ok()
            .and_then(|running| running.get(&task_id).cloned());
        match token {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Log and count an item a loop stops retrying.
    pub fn give_up(&self, what: &'static str, error: &bgagent_shared::Error) {
        self.metrics.gave_up.with_label_values(&[what]).inc();
        tracing::error!(what, error = %error, "giving up on an item the store keeps refusing");
    }
}
