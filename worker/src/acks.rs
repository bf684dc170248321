//! Acknowledgements of one broker channel, coalesced.
//!
//! Every delivery is registered in arrival (delivery-tag) order. When a batch of outcomes is
//! stored, one `basic.ack` with `multiple` settles every delivery of the batch whose tag lies
//! below the lowest delivery still being worked on; only the others are acked one by one. That
//! is one frame (and one quorum-queue settle command) per batch instead of one per task.
//!
//! A multiple ack settles everything unacked up to its tag, so it must never overtake a delivery
//! that is still running, nor race a nack of a lower tag: all settles of a channel are therefore
//! sent under its lock, in order. A delivery dropped without a settle stays outstanding, which
//! only stops later acks from being coalesced past it; it is never acked by accident.

use bgagent_shared::broker::{Publisher, TaskMessage};
use futures_util::future::join_all;
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::Mutex;

use crate::pipeline::settle;

/// The outstanding deliveries of one channel; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct ChannelAcks {
    /// Delivery tags received and not settled yet.
    outstanding: Arc<Mutex<BTreeSet<u64>>>,
}

impl ChannelAcks {
    /// Register a delivery; call in the order the channel delivers.
    pub(crate) async fn receive(&self, delivery: Delivery) -> Received {
        self.outstanding.lock().await.insert(delivery.delivery_tag);
        let data: Arc<[u8]> = delivery.data.into();
        Received {
            data: data.clone(),
            pending: Pending {
                tag: delivery.delivery_tag,
                acker: delivery.acker,
                channel: self.clone(),
                body: data,
            },
        }
    }

    fn same(&self, other: &ChannelAcks) -> bool {
        Arc::ptr_eq(&self.outstanding, &other.outstanding)
    }
}

/// A registered delivery: its body and what settles it.
pub(crate) struct Received {
    pub(crate) data: Arc<[u8]>,
    pub(crate) pending: Pending,
}

/// A delivery waiting to be settled.
pub(crate) struct Pending {
    tag: u64,
    acker: Acker,
    channel: ChannelAcks,
    /// The message, to publish again on a hand-back.
    body: Arc<[u8]>,
}

/// Acknowledge deliveries (of any channels), coalescing each channel's into as few frames as the
/// deliveries still outstanding allow.
pub(crate) async fn ack(pending: impl IntoIterator<Item = Pending>) {
    for (channel, group) in by_channel(pending) {
        let mut outstanding = channel.outstanding.lock().await;
        let plan = coalesce(&mut outstanding, group, |p| p.tag);
        let multiple = plan
            .multiple_up_to
            .as_ref()
            .map(|p| p.acker.ack(BasicAckOptions { multiple: true }));
        let single = plan
            .singles
            .iter()
            .map(|p| p.acker.ack(BasicAckOptions::default()));
        settle("ack", multiple.into_iter().chain(single)).await;
    }
}

/// Hand deliveries back: publish each message again (with confirms) and ack the original. A
/// quorum queue counts every `nack(requeue)` toward its delivery limit, so handing a message
/// back on every pause or shutdown would dead-letter a task that never ran; a fresh copy starts
/// with no deliveries. A message that cannot be published again (broker trouble, or a body that
/// is not a task message) is nacked back to the queue as before.
pub(crate) async fn hand_back(publisher: &Publisher, pending: impl IntoIterator<Item = Pending>) {
    let pending: Vec<Pending> = pending.into_iter().collect();
    if pending.is_empty() {
        return;
    }
    let republished = join_all(pending.iter().map(|p| republish(publisher, &p.body))).await;
    let (copied, requeue): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .zip(republished)
        .partition(|(_, copied)| *copied);
    ack(copied.into_iter().map(|(p, _)| p)).await;
    nack_requeue(requeue.into_iter().map(|(p, _)| p)).await;
}

/// Publish the tasks of `body` again in one message; true once the broker confirmed it.
async fn republish(publisher: &Publisher, body: &[u8]) -> bool {
    let Ok(message) = serde_json::from_slice::<TaskMessage>(body) else {
        return false;
    };
    let ids = message.task_ids();
    match publisher.publish_tasks(ids, ids.len()).await {
        Ok(confirmed) => confirmed.len() == ids.len(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot publish a handed-back message again; returning it to the queue");
            false
        }
    }
}

/// Return deliveries to the queue, each channel's together.
async fn nack_requeue(pending: impl IntoIterator<Item = Pending>) {
    for (channel, group) in by_channel(pending) {
        let mut outstanding = channel.outstanding.lock().await;
        for p in &group {
            outstanding.remove(&p.tag);
        }
        let nacks = group.iter().map(|p| {
            p.acker.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
        });
        settle("requeue", nacks).await;
    }
}

/// Reject a delivery without requeue: the queue dead-letters it.
pub(crate) async fn reject(p: Pending) {
    let mut outstanding = p.channel.outstanding.lock().await;
    outstanding.remove(&p.tag);
    settle(
        "reject",
        [p.acker.reject(BasicRejectOptions { requeue: false })],
    )
    .await;
}

/// Deliveries grouped by their channel (a batch can span a reconnect).
fn by_channel(pending: impl IntoIterator<Item = Pending>) -> Vec<(ChannelAcks, Vec<Pending>)> {
    let mut groups: Vec<(ChannelAcks, Vec<Pending>)> = Vec::new();
    for p in pending {
        match groups.iter_mut().find(|(c, _)| c.same(&p.channel)) {
            Some((_, group)) => group.push(p),
            None => groups.push((p.channel.clone(), vec![p])),
        }
    }
    groups
}

/// How to ack a set of deliveries.
#[derive(Debug, PartialEq)]
struct Plan<T> {
    /// One ack with `multiple` at this delivery settles every acked one up to it.
    multiple_up_to: Option<T>,
    /// Deliveries above one still outstanding, in tag order: acked one by one.
    singles: Vec<T>,
}

/// Remove `items` from `outstanding` and plan their acks.
fn coalesce<T>(outstanding: &mut BTreeSet<u64>, items: Vec<T>, tag: impl Fn(&T) -> u64) -> Plan<T> {
    for item in &items {
        outstanding.remove(&tag(item));
    }
    let lowest_open = outstanding.first().copied().unwrap_or(u64::MAX);
    let (covered, mut singles): (Vec<T>, Vec<T>) =
        items.into_iter().partition(|item| tag(item) < lowest_open);
    singles.sort_unstable_by_key(&tag);
    Plan {
        multiple_up_to: covered.into_iter().max_by_key(&tag),
        singles,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(tags: &[u64]) -> BTreeSet<u64> {
        tags.iter().copied().collect()
    }

    #[test]
    fn a_batch_below_every_open_delivery_is_one_multiple_ack() {
        let mut open = set(&[1, 2, 3, 4, 5]);
        let plan = coalesce(&mut open, vec![3, 1, 2], |t| *t);
        assert_eq!(
            plan,
            Plan {
                multiple_up_to: Some(3),
                singles: vec![]
            }
        );
        assert_eq!(open, set(&[4, 5]));
    }

    #[test]
    fn tags_above_a_running_delivery_are_acked_alone() {
        // 2 is still running: a multiple ack at 4 would settle it too.
        let mut open = set(&[1, 2, 3, 4]);
        let plan = coalesce(&mut open, vec![1, 3, 4], |t| *t);
        assert_eq!(
            plan,
            Plan {
                multiple_up_to: Some(1),
                singles: vec![3, 4]
            }
        );
        assert_eq!(open, set(&[2]));
    }

    #[test]
    fn once_the_straggler_is_acked_the_rest_coalesce_again() {
        let mut open = set(&[2, 5, 6]);
        let plan = coalesce(&mut open, vec![2, 6], |t| *t);
        assert_eq!(
            plan,
            Plan {
                multiple_up_to: Some(2),
                singles: vec![6]
            }
        );
        let plan = coalesce(&mut open, vec![5], |t| *t);
        assert_eq!(
            plan,
            Plan {
                multiple_up_to: Some(5),
                singles: vec![]
            }
        );
        assert!(open.is_empty());
    }

    #[test]
    fn nothing_outstanding_below_means_everything_coalesces() {
        let mut open = set(&[7, 8, 9]);
        let plan = coalesce(&mut open, vec![9, 8, 7], |t| *t);
        assert_eq!(plan.multiple_up_to, Some(9));
        assert!(plan.singles.is_empty());
    }
}
