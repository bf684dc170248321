//! The tasks of one delivery. A message may carry several task ids; it is settled once, when the
//! last of its tasks is done with: acked once every task was claimed (or found unclaimable), or
//! handed back to the queue if any of its tasks was not claimed. A task dropped without being
//! done with keeps the delivery unsettled, so the broker redelivers it when the channel closes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bgagent_shared::queue::{self, Receipt, TaskQueue};

/// One task's share of a delivery.
pub(crate) struct TaskDelivery<P = Receipt> {
    shared: Arc<Shared<P>>,
}

struct Shared<P> {
    delivery: Mutex<Option<P>>,
    open: AtomicUsize,
    hand_back: AtomicBool,
}

/// What to do with a delivery whose tasks are all done with.
#[derive(Debug, PartialEq)]
pub(crate) enum Settle<P = Receipt> {
    Ack(P),
    Requeue(P),
}

impl<P> TaskDelivery<P> {
    /// One share per task of `delivery` (`tasks` ≥ 1).
    pub(crate) fn split(delivery: P, tasks: usize) -> Vec<Self> {
        let shared = Arc::new(Shared {
            delivery: Mutex::new(Some(delivery)),
            open: AtomicUsize::new(tasks),
            hand_back: AtomicBool::new(false),
        });
        (0..tasks)
            .map(|_| Self {
                shared: shared.clone(),
            })
            .collect()
    }

    /// This task is done with (claimed, or dropped as a duplicate).
    /// Returns the delivery's settle when it was the last one open.
    pub(crate) fn done(self) -> Option<Settle<P>> {
        self.close()
    }

    /// This task was not started: the delivery goes back to the queue once all are done with.
    pub(crate) fn hand_back(self) -> Option<Settle<P>> {
        self.shared.hand_back.store(true, Ordering::SeqCst);
        self.close()
    }

    fn close(self) -> Option<Settle<P>> {
        if self.shared.open.fetch_sub(1, Ordering::SeqCst) != 1 {
            return None;
        }
        let delivery = self
            .shared
            .delivery
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        Some(if self.shared.hand_back.load(Ordering::SeqCst) {
            Settle::Requeue(delivery)
        } else {
            Settle::Ack(delivery)
        })
    }
}

/// Send the settles to the queue, all together.
pub(crate) async fn settle(
    queue: &dyn TaskQueue,
    settles: impl IntoIterator<Item = Option<Settle>>,
) {
    let settles: Vec<queue::Settle> = settles
        .into_iter()
        .flatten()
        .map(|settle| match settle {
            Settle::Ack(receipt) => queue::Settle::Ack(receipt),
            Settle::Requeue(receipt) => queue::Settle::HandBack(receipt),
        })
        .collect();
    if !settles.is_empty() {
        queue.settle(settles).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_single_task_delivery_is_acked_when_done() {
        let mut tasks = TaskDelivery::split(7, 1);
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks.pop().unwrap().done(), Some(Settle::Ack(7)));
    }

    #[test]
    fn a_shared_delivery_is_settled_once_by_its_last_task() {
        let mut tasks = TaskDelivery::split(7, 3);
        assert_eq!(tasks.pop().unwrap().done(), None);
        assert_eq!(tasks.pop().unwrap().done(), None);
        assert_eq!(tasks.pop().unwrap().done(), Some(Settle::Ack(7)));
    }

    #[test]
    fn one_task_handed_back_requeues_the_whole_delivery() {
        let mut tasks = TaskDelivery::split(7, 3);
        assert_eq!(tasks.pop().unwrap().hand_back(), None);
        assert_eq!(tasks.pop().unwrap().done(), None);
        assert_eq!(tasks.pop().unwrap().done(), Some(Settle::Requeue(7)));
    }

    #[test]
    fn a_task_dropped_unsettled_keeps_the_delivery_open() {
        let mut tasks = TaskDelivery::split(7, 2);
        drop(tasks.pop());
        assert_eq!(tasks.pop().unwrap().done(), None);
    }
}
