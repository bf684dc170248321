//! The RabbitMQ engine of the task queue: a durable quorum queue of task ids (publisher
//! confirms, manual acks, a delivery limit against poison loops), a dead-letter queue for
//! operators, and a fanout exchange for control messages. Every name starts with a prefix, so
//! several deployments (or tests) share one broker.

mod acks;
mod events;
mod publisher;
mod session;
mod topology;

pub use events::EVENT_QUEUE_MAX_LENGTH;
pub use publisher::{Publisher, connect};
pub use topology::{Topology, declare};

use async_trait::async_trait;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

use super::{
    ConsumerSpec, ControlMessage, DeadCopy, EventFeed, LossDetection, MAX_TASKS_PER_MESSAGE,
    OpenSession, QueueDepths, Settle, TaskQueue,
};
use crate::Result;
use crate::config::BrokerConfig;
use crate::domain::TaskEvent;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Routing key of task messages on the tasks exchange.
pub const TASK_ROUTING_KEY: &str = "task";
/// Header carrying the task id, so logs and the management UI correlate without parsing bodies.
pub const TASK_ID_HEADER: &str = "task_id";
/// Header carrying the number of task ids of a message with several.
pub const TASK_COUNT_HEADER: &str = "task_count";

/// Body of a task message. It carries ids only: the worker loads the tasks from PostgreSQL,
/// which stays the source of truth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskMessage {
    /// One task, `{"task_id": …}`: the format every version reads.
    One {
        /// The task to run.
        task_id: Uuid,
    },
    /// Several tasks, `{"task_ids": […]}`, sent when the API's `BGAGENT_TASKS_PER_MESSAGE` is
    /// above 1. Workers built before this format existed cannot read it: upgrade the workers
    /// before turning it on.
    Many {
        /// The tasks to run.
        task_ids: Vec<Uuid>,
    },
}

impl TaskMessage {
    /// The message for `ids`: the single-task format for one id.
    pub fn for_tasks(ids: &[Uuid]) -> Self {
        match ids {
            [task_id] => Self::One { task_id: *task_id },
            _ => Self::Many {
                task_ids: ids.to_vec(),
            },
        }
    }

    /// The task ids the message carries.
    pub fn task_ids(&self) -> &[Uuid] {
        match self {
            Self::One { task_id } => std::slice::from_ref(task_id),
            Self::Many { task_ids } => task_ids,
        }
    }
}

/// Task queue on RabbitMQ; cheap to clone.
#[derive(Clone)]
pub struct RabbitQueue {
    publisher: Publisher,
    /// For consumer sessions: the URL with the AMQP heartbeat set.
    consumer_url: String,
    /// Names this process's connections (`bgagent-api@host`).
    name: String,
}

impl RabbitQueue {
    /// A queue on `config`'s broker; connects on first use, so it can be built while the broker
    /// is down. `connection_name` shows in the management UI; consumer sessions ask the broker
    /// for a heartbeat every `heartbeat_secs` (0: the broker's default).
    pub fn new(config: &BrokerConfig, connection_name: &str, heartbeat_secs: u16) -> Result<Self> {
        Ok(Self {
            publisher: Publisher::new(config, connection_name)?,
            consumer_url: with_heartbeat(config.url()?, heartbeat_secs),
            name: connection_name.trim_end_matches("/publish").to_owned(),
        })
    }

    /// The names this queue declares and uses.
    pub fn topology(&self) -> &Topology {
        self.publisher.topology()
    }
}

/// Delete every exchange and queue of `config`'s prefix (ephemeral runs, benchmarks).
pub async fn delete_objects(config: &BrokerConfig) -> Result<()> {
    let topology = Topology::new(&config.broker_prefix, config.delivery_limit);
    let conn = connect(config.url()?, "bgagent-teardown").await?;
    let channel = conn.create_channel().await?;
    for queue in topology.queues() {
        channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await?;
    }
    for exchange in topology.exchanges() {
        channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await?;
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

#[async_trait]
impl TaskQueue for RabbitQueue {
    fn engine(&self) -> &'static str {
        "rabbitmq"
    }

    async fn publish(&self, ids: &[Uuid], per_message: usize) -> Result<Vec<Uuid>> {
        self.publisher.publish_tasks(ids, per_message).await
    }

    async fn broadcast(&self, message: &ControlMessage) -> Result<()> {
        self.publisher.publish_control(message).await
    }

    async fn publish_dead(&self, copy: &DeadCopy) -> Result<()> {
        let body = serde_json::json!({
            "task_id": copy.task_id,
            "agent": copy.agent,
            "attempts": copy.attempts,
            "error": copy.error,
        });
        let mut headers = FieldTable::default();
        headers.insert(
            TASK_ID_HEADER.into(),
            AMQPValue::LongString(copy.task_id.to_string().as_str().into()),
        );
        headers.insert(
            "x-error".into(),
            AMQPValue::LongString(copy.error.as_str().into()),
        );
        headers.insert("x-attempts".into(), AMQPValue::LongInt(copy.attempts));
        self.publisher
            .publish_dead(body.to_string().as_bytes(), headers)
            .await
    }

    async fn ping(&self, timeout: Duration) -> bool {
        self.publisher.ping(timeout).await
    }

    async fn depths(&self) -> Result<QueueDepths> {
        let (ready, dead) = self.publisher.queue_depths().await?;
        Ok(QueueDepths { ready, dead })
    }

    async fn consume(&self, spec: ConsumerSpec) -> Option<Box<dyn OpenSession>> {
        session::run(self, spec).await
    }

    async fn settle(&self, settles: Vec<Settle>) {
        acks::settle(&self.publisher, settles).await;
    }

    async fn publish_events(&self, events: &[TaskEvent]) -> Result<()> {
        let body = serde_json::to_vec(events).map_err(|e| crate::Error::Broker(e.to_string()))?;
        self.publisher.publish_events(&body).await
    }

    async fn subscribe_events(&self, feed: mpsc::Sender<EventFeed>, stopping: CancellationToken) {
        events::subscribe(self, feed, stopping).await;
    }

    fn loss_detection(&self) -> Option<&dyn LossDetection> {
        Some(self)
    }
}

#[async_trait]
impl LossDetection for RabbitQueue {
    async fn epoch_markers(&self) -> Result<u32> {
        self.publisher.epoch_markers().await
    }

    async fn write_epoch_marker(&self, epoch: &str) -> Result<()> {
        self.publisher.write_epoch_marker(epoch).await
    }
}

/// `url` with the AMQP heartbeat `secs` (none when 0 or when the URL already sets one).
fn with_heartbeat(url: &str, secs: u16) -> String {
    if secs == 0 || url.contains("heartbeat=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}heartbeat={secs}")
}

#[cfg(test)]
mod tests {
    use super::with_heartbeat;

    #[test]
    fn heartbeat_is_added_to_the_url_unless_it_has_one() {
        assert_eq!(
            with_heartbeat("amqp://h:5672/%2f", 10),
            "amqp://h:5672/%2f?heartbeat=10"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?frame_max=8192", 3),
            "amqp://h/%2f?frame_max=8192&heartbeat=3"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?heartbeat=30", 3),
            "amqp://h/%2f?heartbeat=30"
        );
        assert_eq!(with_heartbeat("amqp://h/%2f", 0), "amqp://h/%2f");
    }
}
