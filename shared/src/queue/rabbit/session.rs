//! A worker's consumer session: one named connection with a task consumer (cancelled while the
//! fleet is paused), a control listener and a dead-letter listener, reconnected with back-off
//! when the broker goes away.

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

use super::acks::{ChannelAcks, DeadEvent, hand_back};
use super::{RabbitQueue, TaskMessage, connect, declare};
use crate::queue::{ConsumerSpec, ControlMessage, Delivery, OpenSession, QueueEvent, Receipt};
use crate::{Error, Result};

/// Longest wait for the connection to close at the very end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session ended.
enum Ended {
    /// Shutdown: the consumer is cancelled; the connection stays open for the last acks.
    Stopping,
    /// The connection or channel failed.
    Lost(String),
}

/// Keep a session up until `spec.stopping`; returns the open connection (if any) so the worker
/// can finish acknowledging before it closes it.
pub(super) async fn run(queue: &RabbitQueue, spec: ConsumerSpec) -> Option<Box<dyn OpenSession>> {
    let mut backoff = Duration::from_millis(250);
    loop {
        if spec.stopping.is_cancelled() {
            return None;
        }
        let opened = tokio::select! {
            opened = tokio::time::timeout(Duration::from_secs(15), open(queue, &spec)) => opened
                .unwrap_or_else(|_| Err(Error::Broker("opening the session timed out".into()))),
            () = spec.stopping.cancelled() => return None,
        };
        match opened {
            Ok((conn, channel)) => {
                backoff = Duration::from_millis(250);
                spec.connected.store(true, Ordering::Relaxed);
                let control = match conn.create_channel().await {
                    Ok(ch) => Some(tokio::spawn(control_listener(
                        queue.clone(),
                        spec.worker_id.clone(),
                        spec.events.clone(),
                        ch,
                    ))),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the control channel");
                        None
                    }
                };
                let dead_events = match conn.create_channel().await {
                    Ok(ch) => Some(tokio::spawn(dead_event_listener(
                        queue.clone(),
                        spec.worker_id.clone(),
                        spec.events.clone(),
                        ch,
                    ))),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the dead-letter channel");
                        None
                    }
                };
                let ended = consume(queue, &spec, &channel).await;
                for listener in [control, dead_events].into_iter().flatten() {
                    listener.abort();
                }
                spec.connected.store(false, Ordering::Relaxed);
                match ended {
                    Ended::Stopping => return Some(Box::new(Open(conn))),
                    Ended::Lost(reason) => {
                        tracing::warn!(reason, "broker session lost; reconnecting");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to the broker; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = spec.stopping.cancelled() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The connection of a stopped session, kept for the last settles.
struct Open(Connection);

#[async_trait]
impl OpenSession for Open {
    async fn close(self: Box<Self>) {
        let _ =
            tokio::time::timeout(CLOSE_TIMEOUT, self.0.close(200, "worker stopped".into())).await;
    }
}

async fn open(queue: &RabbitQueue, spec: &ConsumerSpec) -> Result<(Connection, Channel)> {
    let conn = connect(
        &queue.consumer_url,
        &format!("bgagent-worker@{}", spec.worker_id),
    )
    .await?;
    declare(&conn, queue.topology()).await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(spec.prefetch.max(1), BasicQosOptions::default())
        .await?;
    tracing::info!(worker_id = %spec.worker_id, "broker session open");
    // A new session may follow a broker that lost its data: the worker looks at once.
    let _ = spec.events.try_send(QueueEvent::SessionOpened);
    Ok((conn, channel))
}

/// The ids of a task message, or why it cannot be read.
fn task_ids(body: &[u8]) -> std::result::Result<Vec<uuid::Uuid>, String> {
    serde_json::from_slice::<TaskMessage>(body)
        .map(|message| message.task_ids().to_vec())
        .map_err(|e| e.to_string())
}

/// Consume while not paused; cancel the consumer when paused and start a new one when resumed.
async fn consume(queue: &RabbitQueue, spec: &ConsumerSpec, channel: &Channel) -> Ended {
    let mut paused = spec.paused.clone();
    let mut health = tokio::time::interval(Duration::from_secs(1));
    let mut generation = 0u64;
    // Delivery tags belong to the channel, across its consumers.
    let acks = ChannelAcks::default();
    let deliveries: &mpsc::Sender<Delivery> = &spec.deliveries;
    loop {
        // Paused: no consumer at all, so the broker sends nothing.
        while *paused.borrow_and_update() {
            tokio::select! {
                _ = paused.changed() => {}
                () = spec.stopping.cancelled() => return Ended::Stopping,
                _ = health.tick() => if !channel.status().connected() {
                    return Ended::Lost("channel closed while paused".into());
                },
            }
        }
        generation += 1;
        // The tag names the worker, so the management UI shows who consumes.
        let tag = format!("bgagent-worker@{}#{generation}", spec.worker_id);
        let mut consumer = match channel
            .basic_consume(
                queue.topology().tasks_queue().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return Ended::Lost(format!("basic.consume: {e}")),
        };
        tracing::info!(consumer = %tag, "consuming tasks");
        let stop_reason = loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let tasks = task_ids(&delivery.data);
                        let pending = acks.receive(delivery).await;
                        let delivery = Delivery { tasks, receipt: Receipt::new(pending) };
                        if deliveries.send(delivery).await.is_err() {
                            return Ended::Stopping;
                        }
                    }
                    Some(Err(e)) => return Ended::Lost(format!("consumer: {e}")),
                    None => return Ended::Lost("consumer cancelled by the broker".into()),
                },
                _ = paused.changed() => if *paused.borrow() { break None },
                () = spec.stopping.cancelled() => break Some(Ended::Stopping),
            }
        };
        // Stop the flow, then hand back whatever the broker had already pushed to us.
        match tokio::time::timeout(
            Duration::from_secs(5),
            channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Ended::Lost(format!("basic.cancel: {e}")),
            Err(_) => return Ended::Lost("basic.cancel timed out".into()),
        }
        let mut late = Vec::new();
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
        {
            late.push(acks.receive(delivery).await);
        }
        hand_back(&queue.publisher, late).await;
        tracing::info!(consumer = %tag, "consumer cancelled");
        if let Some(ended) = stop_reason {
            return ended;
        }
    }
}

/// Listen on this worker's own queue bound to the control fanout exchange.
async fn control_listener(
    queue: RabbitQueue,
    worker_id: String,
    events: mpsc::Sender<QueueEvent>,
    channel: Channel,
) {
    if let Err(e) = listen(&queue, &worker_id, &events, &channel).await {
        tracing::warn!(error = %e, "control listener stopped; paused state is still reconciled");
    }
}

async fn listen(
    queue: &RabbitQueue,
    worker_id: &str,
    events: &mpsc::Sender<QueueEvent>,
    channel: &Channel,
) -> Result<()> {
    let topology = queue.topology();
    let name = topology.control_queue(worker_id);
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            name.as_str().into(),
            topology.control_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            name.as_str().into(),
            format!("bgagent-worker@{worker_id}/control")
                .as_str()
                .into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        match serde_json::from_slice::<ControlMessage>(&delivery.data) {
            Ok(message) => {
                if events.send(QueueEvent::Control(message)).await.is_err() {
                    return Ok(());
                }
            }
            Err(e) => tracing::warn!(error = %e, "ignoring malformed control message"),
        }
    }
    Ok(())
}

/// Watch the dead-letter events queue: a task message the broker dead-lettered (past the quorum
/// queue's delivery limit) goes to the worker, which fails its task with a clear error instead
/// of leaving it to loop.
async fn dead_event_listener(
    queue: RabbitQueue,
    worker_id: String,
    events: mpsc::Sender<QueueEvent>,
    channel: Channel,
) {
    if let Err(e) = watch_dead_letters(&queue, &worker_id, &events, &channel).await {
        tracing::warn!(error = %e, "dead-letter listener stopped");
    }
}

async fn watch_dead_letters(
    queue: &RabbitQueue,
    worker_id: &str,
    events: &mpsc::Sender<QueueEvent>,
    channel: &Channel,
) -> Result<()> {
    channel.basic_qos(16, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.topology().dead_events_queue().into(),
            format!("bgagent-worker@{worker_id}/dead").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        // Only the broker's own dead-lettering adds x-death; copies the workers publish for
        // tasks they already failed do not, and neither do they need handling.
        let reason = delivery.properties.headers().as_ref().and_then(|h| {
            let inner = h.inner();
            inner.get("x-death")?;
            Some(match inner.get("x-first-death-reason") {
                Some(AMQPValue::LongString(r)) => r.to_string(),
                _ => "dead-lettered".to_owned(),
            })
        });
        match (reason, task_ids(&delivery.data)) {
            (Some(reason), Ok(tasks)) => {
                let receipt = Receipt::new(DeadEvent(delivery.acker));
                let event = QueueEvent::DeadLettered {
                    tasks,
                    reason,
                    receipt,
                };
                if events.send(event).await.is_err() {
                    return Ok(());
                }
            }
            _ => {
                super::acks::settle_within_timeout(
                    "ack",
                    [delivery.acker.ack(BasicAckOptions::default())],
                )
                .await;
            }
        }
    }
    Ok(())
}
