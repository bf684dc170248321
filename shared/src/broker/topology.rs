//! Exchange and queue names under the configured prefix, and their idempotent declaration.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::TASK_ROUTING_KEY;
use crate::Result;

/// Every name the system uses on the broker, derived from one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    delivery_limit: u32,
}

impl Topology {
    /// Names under `prefix`; `delivery_limit` bounds redeliveries of one message.
    pub fn new(prefix: &str, delivery_limit: u32) -> Self {
        Self {
            prefix: prefix.to_owned(),
            delivery_limit: delivery_limit.max(1),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Direct exchange tasks are published to.
    pub fn tasks_exchange(&self) -> String {
        format!("{}.tasks", self.prefix)
    }

    /// Quorum queue workers consume.
    pub fn tasks_queue(&self) -> String {
        format!("{}.tasks", self.prefix)
    }

    /// Dead-letter exchange (fanout, so any routing key lands in the dead queue).
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// Queue of terminally failed tasks and unparseable messages, for operators.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Second queue on the dead-letter exchange, consumed by workers: a task whose message the
    /// broker dead-letters (delivery limit) is marked failed. The dead queue keeps the copy for
    /// operators.
    pub fn dead_events_queue(&self) -> String {
        format!("{}.dead.events", self.prefix)
    }

    /// Fanout exchange of control messages.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// A worker's own control queue.
    pub fn control_queue(&self, worker_id: &str) -> String {
        format!("{}.control.{worker_id}", self.prefix)
    }

    /// Every exchange, for clean-up.
    pub fn exchanges(&self) -> [String; 3] {
        [
            self.tasks_exchange(),
            self.dead_letter_exchange(),
            self.control_exchange(),
        ]
    }

    /// Every shared queue, for clean-up.
    pub fn queues(&self) -> [String; 3] {
        [
            self.tasks_queue(),
            self.dead_queue(),
            self.dead_events_queue(),
        ]
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn quorum_queue() -> (QueueDeclareOptions, FieldTable) {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    (options, args)
}

/// Declare the whole topology. Idempotent: declaring what exists with the same arguments is a
/// no-op, so every process runs it at start and after reconnecting.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<()> {
    let dlx = topology.dead_letter_exchange();
    channel
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    for queue in [topology.dead_queue(), topology.dead_events_queue()] {
        let (options, args) = quorum_queue();
        channel
            .queue_declare(queue.as_str().into(), options, args)
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                dlx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }

    channel
        .exchange_declare(
            topology.tasks_exchange().into(),
            ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    let (options, mut args) = quorum_queue();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    // Quorum queues count redeliveries; past the limit a message is dead-lettered instead of
    // looping forever through crashing workers.
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(i32::try_from(topology.delivery_limit).unwrap_or(i32::MAX)),
    );
    channel
        .queue_declare(topology.tasks_queue().into(), options, args)
        .await?;
    channel
        .queue_bind(
            topology.tasks_queue().into(),
            topology.tasks_exchange().into(),
            TASK_ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    channel
        .exchange_declare(
            topology.control_exchange().into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}
