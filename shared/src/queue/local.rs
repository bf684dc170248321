//! The in-process queue of the embedded engine. Every API and worker of the process shares one
//! [`LocalQueue`]. It holds task ids only, in memory: the rows are the truth, and at start the
//! store makes every queued task unpublished so the relay fills the queue again. A delivery not
//! settled when its consumer session closes goes back to the queue, as a broker redelivers the
//! unacknowledged messages of a closed channel.

use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    ConsumerSpec, ControlMessage, DeadCopy, Delivery, EventFeed, LossDetection,
    MAX_TASKS_PER_MESSAGE, OpenSession, QueueDepths, QueueEvent, Receipt, Settle, TaskQueue,
};
use crate::Result;
use crate::domain::TaskEvent;

/// Dead copies kept for `depths` and operators; older ones are dropped (the rows say `failed`).
const DEAD_KEPT: usize = 1000;
/// Control messages a slow listener may fall behind by before it misses some (the heartbeat
/// reconciles the paused state anyway).
const CONTROL_BACKLOG: usize = 256;
/// Event batches a slow subscriber may fall behind by before it misses some (and is told so).
const EVENT_BACKLOG: usize = 1024;

/// An in-process task queue; cheap to clone.
#[derive(Clone)]
pub struct LocalQueue {
    inner: Arc<Inner>,
}

struct Inner {
    sender: mpsc::UnboundedSender<Vec<Uuid>>,
    /// Consumers take turns on the one receiver.
    receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<Uuid>>>,
    ready: AtomicUsize,
    control: broadcast::Sender<ControlMessage>,
    /// Task status events, to every subscriber of the process.
    events: broadcast::Sender<Arc<Vec<TaskEvent>>>,
    dead: Mutex<VecDeque<DeadCopy>>,
    next_delivery: AtomicU64,
}

impl Default for LocalQueue {
    fn default() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                sender,
                receiver: tokio::sync::Mutex::new(receiver),
                ready: AtomicUsize::new(0),
                control: broadcast::channel(CONTROL_BACKLOG).0,
                events: broadcast::channel(EVENT_BACKLOG).0,
                dead: Mutex::new(VecDeque::new()),
                next_delivery: AtomicU64::new(0),
            }),
        }
    }
}

impl LocalQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, message: Vec<Uuid>) {
        self.inner.ready.fetch_add(1, Ordering::Relaxed);
        // The receiver lives as long as `inner`, so sending cannot fail.
        let _ = self.inner.sender.send(message);
    }

    /// The most recent dead copies, newest last.
    pub fn dead_copies(&self) -> Vec<DeadCopy> {
        let dead = self
            .inner
            .dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        dead.iter().cloned().collect()
    }
}

/// The deliveries one consumer session has not settled yet.
#[derive(Default)]
struct Session {
    outstanding: Mutex<HashMap<u64, Vec<Uuid>>>,
    settled: Notify,
}

impl Session {
    fn len(&self) -> usize {
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn take(&self, delivery: u64) -> Option<Vec<Uuid>> {
        let taken = self
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&delivery);
        self.settled.notify_waiters();
        taken
    }
}

/// What a receipt of this queue holds.
struct LocalReceipt {
    session: Arc<Session>,
    delivery: u64,
}

#[async_trait]
impl TaskQueue for LocalQueue {
    fn engine(&self) -> &'static str {
        "in-process"
    }

    async fn publish(&self, ids: &[Uuid], per_message: usize) -> Result<Vec<Uuid>> {
        for chunk in ids.chunks(per_message.clamp(1, MAX_TASKS_PER_MESSAGE)) {
            self.push(chunk.to_vec());
        }
        Ok(ids.to_vec())
    }

    async fn broadcast(&self, message: &ControlMessage) -> Result<()> {
        // No listener yet (no worker started) is not an error: workers read the stored state.
        let _ = self.inner.control.send(message.clone());
        Ok(())
    }

    async fn publish_dead(&self, copy: &DeadCopy) -> Result<()> {
        let mut dead = self
            .inner
            .dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if dead.len() >= DEAD_KEPT {
            dead.pop_front();
        }
        dead.push_back(copy.clone());
        Ok(())
    }

    async fn ping(&self, _timeout: Duration) -> bool {
        true
    }

    async fn depths(&self) -> Result<QueueDepths> {
        let dead = self
            .inner
            .dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        Ok(QueueDepths {
            ready: u32::try_from(self.inner.ready.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
            dead: u32::try_from(dead).unwrap_or(u32::MAX),
        })
    }

    async fn consume(&self, spec: ConsumerSpec) -> Option<Box<dyn OpenSession>> {
        let session = Arc::new(Session::default());
        spec.connected.store(true, Ordering::Relaxed);
        let control = tokio::spawn(forward_control(
            self.inner.control.subscribe(),
            spec.events.clone(),
        ));
        self.deliver(&spec, &session).await;
        control.abort();
        spec.connected.store(false, Ordering::Relaxed);
        Some(Box::new(ClosingSession {
            queue: self.clone(),
            session,
        }))
    }

    async fn settle(&self, settles: Vec<Settle>) {
        for settle in settles {
            let (receipt, requeue) = match settle {
                Settle::Ack(r) => (r, false),
                Settle::HandBack(r) => (r, true),
                Settle::Reject(r) => (r, false),
            };
            let Ok(receipt) = receipt.downcast::<LocalReceipt>() else {
                tracing::error!("a receipt of another queue was settled here; ignored");
                continue;
            };
            if let Some(message) = receipt.session.take(receipt.delivery)
                && requeue
            {
                self.push(message);
            }
        }
    }

    async fn publish_events(&self, events: &[TaskEvent]) -> Result<()> {
        // No subscriber (no API in the process) is not an error: nobody is watching.
        let _ = self.inner.events.send(Arc::new(events.to_vec()));
        Ok(())
    }

    async fn subscribe_events(&self, feed: mpsc::Sender<EventFeed>, stopping: CancellationToken) {
        let mut events = self.inner.events.subscribe();
        loop {
            let item = tokio::select! {
                () = stopping.cancelled() => return,
                () = feed.closed() => return,
                received = events.recv() => match received {
                    Ok(batch) => EventFeed::Events(batch.as_ref().clone()),
                    Err(broadcast::error::RecvError::Lagged(_)) => EventFeed::Gap,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if feed.send(item).await.is_err() {
                return;
            }
        }
    }

    fn loss_detection(&self) -> Option<&dyn LossDetection> {
        None
    }
}

impl LocalQueue {
    /// Hand out messages while not paused, at most `prefetch` unsettled, until stopping.
    async fn deliver(&self, spec: &ConsumerSpec, session: &Arc<Session>) {
        let mut paused = spec.paused.clone();
        let prefetch = usize::from(spec.prefetch.max(1));
        loop {
            while *paused.borrow_and_update() {
                tokio::select! {
                    changed = paused.changed() => if changed.is_err() { return },
                    () = spec.stopping.cancelled() => return,
                }
            }
            // Room first, so a full window holds nothing back from other consumers.
            while session.len() >= prefetch {
                let settled = session.settled.notified();
                if session.len() < prefetch {
                    break;
                }
                tokio::select! {
                    () = settled => {}
                    () = spec.stopping.cancelled() => return,
                }
            }
            let message = tokio::select! {
                message = async { self.inner.receiver.lock().await.recv().await } => message,
                _ = paused.changed() => continue,
                () = spec.stopping.cancelled() => return,
            };
            let Some(tasks) = message else { return };
            self.inner.ready.fetch_sub(1, Ordering::Relaxed);
            let delivery = self.inner.next_delivery.fetch_add(1, Ordering::Relaxed);
            session
                .outstanding
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(delivery, tasks.clone());
            let receipt = Receipt::new(LocalReceipt {
                session: session.clone(),
                delivery,
            });
            if spec
                .deliveries
                .send(Delivery {
                    tasks: Ok(tasks),
                    receipt,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

async fn forward_control(
    mut control: broadcast::Receiver<ControlMessage>,
    events: mpsc::Sender<QueueEvent>,
) {
    loop {
        match control.recv().await {
            Ok(message) => {
                if events.send(QueueEvent::Control(message)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "control listener fell behind; the heartbeat reconciles"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// A stopped session: what it did not settle goes back to the queue when it closes.
struct ClosingSession {
    queue: LocalQueue,
    session: Arc<Session>,
}

#[async_trait]
impl OpenSession for ClosingSession {
    async fn close(self: Box<Self>) {
        let left: Vec<Vec<Uuid>> = self
            .session
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, tasks)| tasks)
            .collect();
        for tasks in left {
            self.queue.push(tasks);
        }
    }
}
