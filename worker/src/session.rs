//! The broker side of a worker: one named connection with a task consumer (cancelled while the
//! fleet is paused) and a control listener, reconnected with back-off when the broker goes away.

use bgagent_shared::broker::{self, ControlMessage, TaskMessage};
use bgagent_shared::db;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::AMQPValue;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::acks::{ChannelAcks, Received, hand_back};
use crate::pipeline::{MAX_REFUSALS, give_up, settle};
use crate::state::Shared;

/// Why a session ended.
enum Ended {
    /// Shutdown: the consumer is cancelled; the connection stays open for the last acks.
    Stopping,
    /// The connection or channel failed.
    Lost(String),
}

/// Keep a broker session up until `stopping`; returns the open connection (if any) so the caller
/// can finish acknowledging before it closes it.
pub(crate) async fn run(
    shared: Arc<Shared>,
    deliveries: mpsc::Sender<Received>,
    stopping: CancellationToken,
) -> Option<Connection> {
    let mut backoff = Duration::from_millis(250);
    loop {
        if stopping.is_cancelled() {
            return None;
        }
        let opened = tokio::select! {
            opened = tokio::time::timeout(Duration::from_secs(15), open(&shared)) => opened
                .unwrap_or_else(|_| Err(bgagent_shared::Error::Broker("opening the session timed out".into()))),
            () = stopping.cancelled() => return None,
        };
        match opened {
            Ok((conn, channel)) => {
                backoff = Duration::from_millis(250);
                shared.connected.store(true, Ordering::Relaxed);
                let control = match conn.create_channel().await {
                    Ok(ch) => Some(tokio::spawn(control_listener(shared.clone(), ch))),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the control channel");
                        None
                    }
                };
                let dead_events = match conn.create_channel().await {
                    Ok(ch) => Some(tokio::spawn(dead_event_listener(shared.clone(), ch))),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the dead-letter channel");
                        None
                    }
                };
                let ended = consume(&shared, &channel, &deliveries, &stopping).await;
                for listener in [control, dead_events].into_iter().flatten() {
                    listener.abort();
                }
                shared.connected.store(false, Ordering::Relaxed);
                match ended {
                    Ended::Stopping => return Some(conn),
                    Ended::Lost(reason) => {
                        tracing::warn!(reason, "broker session lost; reconnecting");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to the broker; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopping.cancelled() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn open(shared: &Shared) -> bgagent_shared::Result<(Connection, Channel)> {
    let conn = broker::connect(&shared.amqp_url, &format!("bgagent-worker@{}", shared.id)).await?;
    broker::declare(&conn, &shared.topology).await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(shared.options.prefetch.max(1), BasicQosOptions::default())
        .await?;
    tracing::info!(worker_id = %shared.id, "broker session open");
    // A new session may follow a broker that lost its data: look at once.
    shared.broker_check.notify_one();
    Ok((conn, channel))
}

/// Consume while not paused; cancel the consumer when paused and start a new one when resumed.
async fn consume(
    shared: &Shared,
    channel: &Channel,
    deliveries: &mpsc::Sender<Received>,
    stopping: &CancellationToken,
) -> Ended {
    let mut paused = shared.paused.subscribe();
    let mut health = tokio::time::interval(Duration::from_secs(1));
    let mut generation = 0u64;
    // Delivery tags belong to the channel, across its consumers.
    let acks = ChannelAcks::default();
    loop {
        // Paused: no consumer at all, so the broker sends nothing.
        while *paused.borrow_and_update() {
            tokio::select! {
                _ = paused.changed() => {}
                () = stopping.cancelled() => return Ended::Stopping,
                _ = health.tick() => if !channel.status().connected() {
                    return Ended::Lost("channel closed while paused".into());
                },
            }
        }
        generation += 1;
        // The tag names the worker, so the management UI shows who consumes.
        let tag = format!("bgagent-worker@{}#{generation}", shared.id);
        let mut consumer = match channel
            .basic_consume(
                shared.topology.tasks_queue().into(),
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
                        if deliveries.send(acks.receive(delivery).await).await.is_err() {
                            return Ended::Stopping;
                        }
                    }
                    Some(Err(e)) => return Ended::Lost(format!("consumer: {e}")),
                    None => return Ended::Lost("consumer cancelled by the broker".into()),
                },
                _ = paused.changed() => if *paused.borrow() { break None },
                () = stopping.cancelled() => break Some(Ended::Stopping),
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
            late.push(acks.receive(delivery).await.pending);
        }
        hand_back(&shared.publisher, late).await;
        tracing::info!(consumer = %tag, "consumer cancelled");
        if let Some(ended) = stop_reason {
            return ended;
        }
    }
}

/// Listen on this worker's own queue bound to the control fanout exchange.
async fn control_listener(shared: Arc<Shared>, channel: Channel) {
    if let Err(e) = listen(&shared, &channel).await {
        tracing::warn!(error = %e, "control listener stopped; paused state is still reconciled");
    }
}

async fn listen(shared: &Shared, channel: &Channel) -> bgagent_shared::Result<()> {
    let queue = shared.topology.control_queue(&shared.id);
    channel
        .queue_declare(
            queue.as_str().into(),
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
            queue.as_str().into(),
            shared.topology.control_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            format!("bgagent-worker@{}/control", shared.id)
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
            Ok(ControlMessage::Stop) => {
                shared.set_paused(true);
            }
            Ok(ControlMessage::Start) => {
                shared.set_paused(false);
            }
            Ok(ControlMessage::Cancel { task_id, worker_id }) => {
                let for_us = worker_id.as_deref().is_none_or(|w| w == shared.id);
                if for_us && shared.cancel_task(task_id) {
                    tracing::info!(task_id = %task_id, "cancelling running task");
                }
            }
            Err(e) => tracing::warn!(error = %e, "ignoring malformed control message"),
        }
    }
    Ok(())
}

/// Watch the dead-letter events queue: a task message the broker dead-lettered (past the quorum
/// queue's delivery limit) fails its task with a clear error instead of leaving it to loop.
async fn dead_event_listener(shared: Arc<Shared>, channel: Channel) {
    if let Err(e) = watch_dead_letters(&shared, &channel).await {
        tracing::warn!(error = %e, "dead-letter listener stopped");
    }
}

async fn watch_dead_letters(shared: &Shared, channel: &Channel) -> bgagent_shared::Result<()> {
    channel.basic_qos(16, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            shared.topology.dead_events_queue().into(),
            format!("bgagent-worker@{}/dead", shared.id).as_str().into(),
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
        if let (Some(reason), Ok(message)) = (
            reason,
            serde_json::from_slice::<TaskMessage>(&delivery.data),
        ) {
            match message {
                TaskMessage::One { task_id } => fail_dead_lettered(shared, task_id, &reason).await,
                TaskMessage::Many { task_ids } => split_dead_lettered(shared, &task_ids).await,
            }
        }
        settle("ack", [delivery.acker.ack(BasicAckOptions::default())]).await;
    }
    Ok(())
}

/// Fail the task of a dead-lettered single-task message.
async fn fail_dead_lettered(shared: &Shared, task_id: Uuid, reason: &str) {
    let failed = until_stored(shared, "fail a dead-lettered task", || {
        db::runs::fail_dead_lettered(&shared.db, task_id, reason)
    })
    .await
    .flatten();
    if let Some((agent, attempts)) = failed {
        tracing::warn!(task_id = %task_id, agent, attempts, reason, "task failed: its message was dead-lettered");
        shared
            .metrics
            .processed
            .with_label_values(&[shared.metrics.agent_label(&agent), "failed"])
            .inc();
    }
}

/// A dead-lettered message with several tasks does not fail them all for one poison task: its
/// queued tasks become unpublished, so the relay publishes each in a message of its own, and only
/// a task that keeps failing its deliveries alone is failed.
async fn split_dead_lettered(shared: &Shared, task_ids: &[Uuid]) {
    let count = until_stored(
        shared,
        "unpublish the tasks of a dead-lettered message",
        || db::runs::unpublish_queued(&shared.db, task_ids),
    )
    .await;
    tracing::warn!(
        tasks = task_ids.len(),
        republished = count,
        "a message with several tasks was dead-lettered; its queued tasks are published again one by one"
    );
}

/// Run a database write until it succeeds, once a second: the dead-letter event is acked only
/// after its write is stored. An outage is waited out; a write the database refuses
/// [`MAX_REFUSALS`] times is given up (None).
async fn until_stored<T, F>(shared: &Shared, what: &str, mut write: impl FnMut() -> F) -> Option<T>
where
    F: Future<Output = bgagent_shared::Result<T>>,
{
    let mut refusals = 0;
    loop {
        match write().await {
            Ok(value) => return Some(value),
            Err(e) => {
                tracing::warn!(error = %e, "cannot {what}; retrying");
                if !e.is_unavailable() {
                    refusals += 1;
                    if refusals >= MAX_REFUSALS {
                        give_up(shared, "dead_letter_event", &e);
                        return None;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// `url` with the AMQP heartbeat `secs` (none when 0 or when the URL already sets one).
pub(crate) fn with_heartbeat(url: &str, secs: u16) -> String {
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
