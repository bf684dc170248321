//! Exchange and queue names under the configured prefix, and their idempotent declaration.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};

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

    /// Queue holding one marker message the workers write: when a worker finds it empty, the
    /// broker lost its data (or the queue was deleted) and the tasks it was given must be
    /// published again.
    pub fn epoch_queue(&self) -> String {
        format!("{}.epoch", self.prefix)
    }

    /// Fanout exchange of control messages.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// Fanout exchange of task status events; each API process binds its own exclusive,
    /// auto-delete, length-bounded queue to it.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// A worker's own control queue.
    pub fn control_queue(&self, worker_id: &str) -> String {
        format!("{}.control.{worker_id}", self.prefix)
    }

    /// Every exchange, for clean-up.
    pub fn exchanges(&self) -> [String; 4] {
        [
            self.tasks_exchange(),
            self.dead_letter_exchange(),
            self.control_exchange(),
            self.events_exchange(),
        ]
    }

    /// Every shared queue, for clean-up.
    pub fn queues(&self) -> [String; 4] {
        [
            self.tasks_queue(),
            self.dead_queue(),
            self.dead_events_queue(),
            self.epoch_queue(),
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

/// Declare the whole topology on a channel of its own (closed afterwards). Idempotent: declaring
/// what exists with the same arguments is a no-op, so every process runs it at start and after
/// reconnecting.
///
/// A tasks queue declared earlier with another delivery limit (`BGAGENT_DELIVERY_LIMIT` changed)
/// makes RabbitMQ refuse the declaration with PRECONDITION_FAILED and close the channel. That
/// must not stop the deployment: the queue is then checked passively on a new channel, kept
/// with the limit it has, and a warning says how to apply the new one.
pub async fn declare(conn: &Connection, topology: &Topology) -> Result<()> {
    let mut channel = conn.create_channel().await?;
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
    match channel
        .queue_declare(topology.tasks_queue().into(), options, args)
        .await
    {
        Ok(_) => {}
        Err(e) if is_precondition_failed(&e) => {
            // The refused declaration closed the channel.
            channel = conn.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..options
            };
            channel
                .queue_declare(
                    topology.tasks_queue().into(),
                    passive,
                    FieldTable::default(),
                )
                .await?;
            tracing::warn!(
                queue = %topology.tasks_queue(),
                delivery_limit = topology.delivery_limit,
                "the tasks queue exists with other arguments (BGAGENT_DELIVERY_LIMIT changed?); \
                 it keeps the delivery limit it was declared with. To apply the new one, pause \
                 the fleet and delete the queues {prefix}.tasks and {prefix}.epoch: they are \
                 declared again and every queued task is published again (docs/OPERATIONS.md)",
                prefix = topology.prefix()
            );
        }
        Err(e) => return Err(e.into()),
    }
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
    // Events are transient and may be lost; the exchange itself is durable like the others, so
    // publishers never find it missing after a broker restart.
    channel
        .exchange_declare(
            topology.events_exchange().into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    let (options, args) = epoch_queue();
    channel
        .queue_declare(topology.epoch_queue().as_str().into(), options, args)
        .await?;
    // Best effort: the channel is only for declaring, and the connection outlives it anyway.
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// The epoch queue keeps the newest marker only, so workers that write one at the same time
/// leave one behind.
pub(super) fn epoch_queue() -> (QueueDeclareOptions, FieldTable) {
    let (options, mut args) = quorum_queue();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    (options, args)
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    use lapin::ErrorKind;
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(e.kind(), ErrorKind::ProtocolError(p)
        if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}
