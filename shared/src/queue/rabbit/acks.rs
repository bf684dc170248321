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

use futures_util::future::join_all;
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

use super::{Publisher, TaskMessage};
use crate::queue::Settle;

/// Longest wait for the broker to take an ack, nack or reject. Settling comes after the outcome is
/// stored (or drops a duplicate), so one that never completes only means a redelivery, which the
/// claim turns into a no-op. Unbounded, an ack caught in a connection the broker is closing can
/// wait forever (seen in the fault suite when RabbitMQ stops) and stall the loop that sent it,
/// leaving every task claimed after it `running` and unrecorded.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The receipt of a dead-letter event (its own channel; acked alone).
pub(super) struct DeadEvent(pub(super) Acker);

/// Settle deliveries of this engine: acks coalesced per channel, hand-backs republished.
pub(super) async fn settle(publisher: &Publisher, settles: Vec<Settle>) {
    let (mut acks, mut hand_backs, mut rejects, mut events) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for settle in settles {
        let (receipt, kind) = match settle {
            Settle::Ack(r) => (r, 0),
            Settle::HandBack(r) => (r, 1),
            Settle::Reject(r) => (r, 2),
        };
        match receipt.downcast::<Pending>() {
            Ok(p) => match kind {
                0 => acks.push(p),
                1 => hand_backs.push(p),
                _ => rejects.push(p),
            },
            Err(receipt) => match receipt.downcast::<DeadEvent>() {
                Ok(event) => events.push(event.0),
                Err(_) => tracing::error!("a receipt of another queue was settled here; ignored"),
            },
        }
    }
    if !hand_backs.is_empty() {
        hand_back(publisher, hand_backs).await;
    }
    if !acks.is_empty() {
        ack(acks).await;
    }
    for p in rejects {
        reject(p).await;
    }
    settle_within_timeout(
        "ack",
        events
            .iter()
            .map(|acker| acker.ack(BasicAckOptions::default())),
    )
    .await;
}

/// Run acks, nacks or rejects concurrently, all within [`SETTLE_TIMEOUT`].
pub(super) async fn settle_within_timeout<F>(
    what: &'static str,
    settles: impl IntoIterator<Item = F>,
) where
    F: Future<Output = lapin::Result<bool>>,
{
    settle_within(SETTLE_TIMEOUT, what, settles).await;
}

/// Run settles concurrently; stop waiting after `limit`. The commands are already queued on the
/// connection by then, so one the broker still takes goes out anyway. True when all completed.
async fn settle_within<F>(
    limit: Duration,
    what: &'static str,
    settles: impl IntoIterator<Item = F>,
) -> bool
where
    F: Future<Output = lapin::Result<bool>>,
{
    let settles: Vec<F> = settles.into_iter().collect();
    if settles.is_empty() {
        return true;
    }
    let n = settles.len();
    if tokio::time::timeout(limit, futures_util::future::join_all(settles))
        .await
        .is_err()
    {
        tracing::warn!(
            deliveries = n,
            "broker did not take the {what} in time; unsettled messages are redelivered and \
             their claims dropped"
        );
        return false;
    }
    true
}

/// The outstanding deliveries of one channel; cheap to clone.
#[derive(Clone, Default)]
pub(super) struct ChannelAcks {
    /// Delivery tags received and not settled yet.
    outstanding: Arc<Mutex<BTreeSet<u64>>>,
}

impl ChannelAcks {
    /// Register a delivery; call in the order the channel delivers.
    pub(super) async fn receive(&self, delivery: Delivery) -> Pending {
        self.outstanding.lock().await.insert(delivery.delivery_tag);
        Pending {
            tag: delivery.delivery_tag,
            acker: delivery.acker,
            channel: self.clone(),
            body: delivery.data,
        }
    }

    fn same(&self, other: &ChannelAcks) -> bool {
        Arc::ptr_eq(&self.outstanding, &other.outstanding)
    }
}

/// A delivery waiting to be settled.
pub(super) struct Pending {
    tag: u64,
    acker: Acker,
    channel: ChannelAcks,
    /// The message, to publish again on a hand-back.
    body: Vec<u8>,
}

/// Acknowledge deliveries (of any channels), coalescing each channel's into as few frames as the
/// deliveries still outstanding allow.
async fn ack(pending: impl IntoIterator<Item = Pending>) {
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
        settle_within_timeout("ack", multiple.into_iter().chain(single)).await;
    }
}

/// Hand deliveries back: publish each message again (with confirms) and ack the original. A
/// quorum queue counts every `nack(requeue)` toward its delivery limit, so handing a message
/// back on every pause or shutdown would dead-letter a task that never ran; a fresh copy starts
/// with no deliveries. A message that cannot be published again (broker trouble, or a body that
/// is not a task message) is nacked back to the queue as before.
pub(super) async fn hand_back(publisher: &Publisher, pending: impl IntoIterator<Item = Pending>) {
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
        settle_within_timeout("requeue", nacks).await;
    }
}

/// Reject a delivery without requeue: the queue dead-letters it.
async fn reject(p: Pending) {
    let mut outstanding = p.channel.outstanding.lock().await;
    outstanding.remove(&p.tag);
    settle_within_timeout(
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

    fn answered() -> futures_util::future::Ready<lapin::Result<bool>> {
        futures_util::future::ready(Ok(true))
    }

    #[tokio::test]
    async fn settling_waits_for_every_answer() {
        let all = [answered(), answered(), answered()];
        assert!(settle_within(Duration::from_secs(5), "ack", all).await);
        let none: [futures_util::future::Ready<lapin::Result<bool>>; 0] = [];
        assert!(settle_within(Duration::from_secs(5), "ack", none).await);
    }

    /// An ack the connection never completes (a connection the broker is closing) must not hold
    /// up the loop that sent it: every task claimed after it would stay `running`, unrecorded.
    #[tokio::test]
    async fn settling_gives_up_on_an_ack_that_never_completes() {
        let started = std::time::Instant::now();
        let settles = [
            futures_util::future::Either::Left(answered()),
            futures_util::future::Either::Right(async {
                std::future::pending::<()>().await;
                Ok(true)
            }),
        ];
        assert!(!settle_within(Duration::from_millis(100), "ack", settles).await);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
