//! Collecting a batch from a queue: whatever is waiting and, under load, what arrives in the next
//! moment.
//!
//! An insert, claim or record statement costs about as much per call as for dozens of rows, so a
//! busy loop gains by letting a batch fill for a millisecond or two (with four workers sharing the
//! load, their batches were ~7 rows and statements dominated the database's time). An idle loop
//! does not wait: a lone task goes out at once.

use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a batch may keep filling while the worker is under load.
pub const LINGER: Duration = Duration::from_millis(2);

/// Batch collection for one loop; remembers whether the loop is under load.
#[derive(Debug, Default)]
pub struct Gather {
    /// The previous batch held more than one item: work arrives faster than it is written.
    busy: bool,
}

impl Gather {
    /// Wait for at least one item, then take up to `max` into `batch`; under load, keep taking
    /// for up to [`LINGER`]. Returns the batch size; 0 when the queue is closed and drained.
    pub async fn next<T>(
        &mut self,
        queue: &mut mpsc::Receiver<T>,
        batch: &mut Vec<T>,
        max: usize,
    ) -> usize {
        if queue.recv_many(batch, max).await == 0 {
            return 0;
        }
        if self.busy {
            let deadline = Instant::now() + LINGER;
            while batch.len() < max {
                let room = max - batch.len();
                match tokio::time::timeout_at(deadline, queue.recv_many(batch, room)).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
        self.busy = batch.len() > 1;
        batch.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_loop_takes_what_is_waiting_without_lingering() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut gather = Gather::default();
        let mut batch = Vec::new();
        tx.send(1).await.ok();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(2).await.ok();
        });
        assert_eq!(gather.next(&mut rx, &mut batch, 8).await, 1);
        assert_eq!(batch, [1]);
        sender.await.ok();
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_loop_lets_the_batch_fill_for_a_moment() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut gather = Gather::default();
        let mut batch = Vec::new();
        tx.send(1).await.ok();
        tx.send(2).await.ok();
        assert_eq!(gather.next(&mut rx, &mut batch, 8).await, 2);
        batch.clear();
        tx.send(3).await.ok();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER / 2).await;
            late.send(4).await.ok();
        });
        assert_eq!(gather.next(&mut rx, &mut batch, 8).await, 2);
        assert_eq!(batch, [3, 4]);
        // Nothing else arrived: the next batch is a single item and the loop is idle again.
        batch.clear();
        tx.send(5).await.ok();
        assert_eq!(gather.next(&mut rx, &mut batch, 8).await, 1);
        batch.clear();
        tx.send(6).await.ok();
        assert_eq!(gather.next(&mut rx, &mut batch, 8).await, 1);
        assert_eq!(batch, [6]);
    }

    #[tokio::test]
    async fn a_full_batch_does_not_wait() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut gather = Gather { busy: true };
        let mut batch = Vec::new();
        for i in 0..4 {
            tx.send(i).await.ok();
        }
        assert_eq!(gather.next(&mut rx, &mut batch, 4).await, 4);
    }

    #[tokio::test]
    async fn a_closed_queue_ends_the_loop() {
        let (tx, mut rx) = mpsc::channel::<u8>(1);
        drop(tx);
        assert_eq!(Gather::default().next(&mut rx, &mut Vec::new(), 4).await, 0);
    }
}
