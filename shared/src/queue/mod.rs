//! The task queue: publishing task ids with confirmation, consuming them with settle handles,
//! and broadcasting control messages to every worker. Two engines implement it: [`rabbit`]
//! (RabbitMQ, any number of processes) and [`local`] (in process, for the embedded engine).
//!
//! The queue only says "look at these ids": the store decides who runs a task, so a duplicate
//! or stale message is harmless. Nothing above this seam names a broker type.

pub mod local;
pub mod rabbit;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Result;
use crate::domain::TaskEvent;

/// Most task ids one message may carry.
pub const MAX_TASKS_PER_MESSAGE: usize = 256;

/// A broadcast to every worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ControlMessage {
    /// Pause: stop taking tasks (in-flight ones finish).
    Stop,
    /// Resume.
    Start,
    /// Cancel a running task.
    Cancel {
        /// The task.
        task_id: Uuid,
        /// The worker holding it, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker_id: Option<String>,
    },
}

/// What settles a delivery; only the queue that made it can read it.
pub struct Receipt(Box<dyn Any + Send + Sync>);

impl Receipt {
    /// Wrap an engine's own settle handle.
    pub fn new<T: Any + Send + Sync>(inner: T) -> Self {
        Self(Box::new(inner))
    }

    /// The engine's handle when it is of type `T`; the receipt back otherwise.
    pub fn downcast<T: Any>(self) -> std::result::Result<T, Self> {
        self.0.downcast::<T>().map(|inner| *inner).map_err(Self)
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receipt")
    }
}

/// A message taken from the queue.
#[derive(Debug)]
pub struct Delivery {
    /// The task ids it carries, or why it could not be read.
    pub tasks: std::result::Result<Vec<Uuid>, String>,
    /// Settles it.
    pub receipt: Receipt,
}

/// What to do with a delivery.
#[derive(Debug)]
pub enum Settle {
    /// Done with: remove it.
    Ack(Receipt),
    /// Not started: back to the queue, without spending its delivery budget.
    HandBack(Receipt),
    /// Unreadable: to the dead letters.
    Reject(Receipt),
}

/// Something a consumer session reports besides task deliveries.
#[derive(Debug)]
pub enum QueueEvent {
    /// A control broadcast arrived.
    Control(ControlMessage),
    /// The queue dead-lettered a task message (delivered too often without completing). Ack the
    /// receipt once the tasks are dealt with.
    DeadLettered {
        /// The tasks of the message.
        tasks: Vec<Uuid>,
        /// The queue's reason.
        reason: String,
        /// Settles the dead-letter event.
        receipt: Receipt,
    },
    /// A new session opened (after a start or a reconnect): the queue may have lost messages.
    SessionOpened,
}

/// What a worker's consumer session needs.
pub struct ConsumerSpec {
    /// The worker (names its connection, consumer tags and control queue).
    pub worker_id: String,
    /// Most unsettled deliveries at once.
    pub prefetch: u16,
    /// The fleet's paused state: no deliveries while true.
    pub paused: watch::Receiver<bool>,
    /// Where deliveries go.
    pub deliveries: mpsc::Sender<Delivery>,
    /// Where events go.
    pub events: mpsc::Sender<QueueEvent>,
    /// Ends the session.
    pub stopping: CancellationToken,
    /// True while a session is up (`/ready`).
    pub connected: Arc<AtomicBool>,
}

/// Messages waiting in the queue.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueDepths {
    /// Task messages ready for delivery.
    pub ready: u32,
    /// Dead letters kept for operators.
    pub dead: u32,
}

/// A terminally failed task's copy for operators.
#[derive(Clone, Debug)]
pub struct DeadCopy {
    /// The task.
    pub task_id: Uuid,
    /// Its agent.
    pub agent: String,
    /// Attempts used.
    pub attempts: i32,
    /// Its last error.
    pub error: String,
}

/// What an event subscription delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventFeed {
    /// One published batch of status events.
    Events(Vec<TaskEvent>),
    /// Events may have been missed (the subscription reconnected, or fell behind): whoever
    /// keeps state from events must re-read it from the store.
    Gap,
}

/// A consumer session that ended on shutdown but keeps its connection for the last settles.
#[async_trait]
pub trait OpenSession: Send {
    /// Close it.
    async fn close(self: Box<Self>);
}

/// Publishing, consuming and broadcasting.
#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    /// The engine's name for banners and logs (`rabbitmq`, `in-process`).
    fn engine(&self) -> &'static str;
    /// Publish `ids`, up to `per_message` in one message; returns the ids the queue confirmed.
    async fn publish(&self, ids: &[Uuid], per_message: usize) -> Result<Vec<Uuid>>;
    /// Send a control message to every worker.
    async fn broadcast(&self, message: &ControlMessage) -> Result<()>;
    /// Keep a copy of a terminally failed task for operators.
    async fn publish_dead(&self, copy: &DeadCopy) -> Result<()>;
    /// Whether the queue answers within `timeout`.
    async fn ping(&self, timeout: Duration) -> bool;
    /// Messages waiting.
    async fn depths(&self) -> Result<QueueDepths>;
    /// Run a worker's consumer session until `spec.stopping`, reconnecting as needed.
    async fn consume(&self, spec: ConsumerSpec) -> Option<Box<dyn OpenSession>>;
    /// Settle deliveries (acks are coalesced where the engine can).
    async fn settle(&self, settles: Vec<Settle>);
    /// Send one batch of task status events to every subscriber, as one message: fire and
    /// forget (no confirm, not persistent), so it may be lost.
    async fn publish_events(&self, events: &[TaskEvent]) -> Result<()>;
    /// Deliver every process's status events to `feed` until `stopping` (or until `feed` is
    /// closed), reconnecting as needed; a [`EventFeed::Gap`] marks where events may be missing.
    /// The subscription holds a bounded backlog: a subscriber that falls far behind loses the
    /// oldest events rather than growing memory or the broker.
    async fn subscribe_events(&self, feed: mpsc::Sender<EventFeed>, stopping: CancellationToken);
    /// Detection of lost messages, for a queue that can lose them behind the store's back
    /// (None: the queue is rebuilt from the rows and cannot).
    fn loss_detection(&self) -> Option<&dyn LossDetection>;
}

/// An external queue's epoch marker: a message whose disappearance shows that the queue lost
/// its data.
#[async_trait]
pub trait LossDetection: Send + Sync {
    /// How many epoch markers the queue holds.
    async fn epoch_markers(&self) -> Result<u32>;
    /// Store a new marker.
    async fn write_epoch_marker(&self, epoch: &str) -> Result<()>;
}
