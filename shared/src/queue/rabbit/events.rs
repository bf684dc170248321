//! The task-event subscription of one process: an exclusive, auto-delete, server-named queue
//! bound to the events fanout exchange. The queue is bounded (`x-max-length`, dropping the
//! oldest), so a slow or stuck subscriber never grows the broker; the connection is opened
//! again after a broker loss, and what may have been missed meanwhile is reported as a gap.

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{RabbitQueue, connect, declare};
use crate::domain::TaskEvent;
use crate::queue::EventFeed;
use crate::{Error, Result};

/// Event messages (batches) one subscriber queue holds before the oldest are dropped.
pub const EVENT_QUEUE_MAX_LENGTH: i32 = 10_000;

/// Subscribe until `stopping`, reconnecting with back-off.
pub(super) async fn subscribe(
    queue: &RabbitQueue,
    feed: mpsc::Sender<EventFeed>,
    stopping: CancellationToken,
) {
    let mut backoff = Duration::from_millis(250);
    let mut connected_before = false;
    loop {
        let ended = tokio::select! {
            ended = listen(queue, &feed, &mut connected_before) => ended,
            () = stopping.cancelled() => return,
            () = feed.closed() => return,
        };
        match ended {
            Ok(()) => return, // the feed was closed
            Err(e) => {
                tracing::warn!(error = %e, "task event subscription lost; reconnecting");
                if connected_before {
                    backoff = Duration::from_millis(250);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopping.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's subscription; `Ok` when the feed was closed.
async fn listen(
    queue: &RabbitQueue,
    feed: &mpsc::Sender<EventFeed>,
    connected_before: &mut bool,
) -> Result<()> {
    let conn = tokio::time::timeout(
        Duration::from_secs(15),
        connect(&queue.consumer_url, &format!("{}/events", queue.name)),
    )
    .await
    .map_err(|_| Error::Broker("connect timed out".into()))??;
    declare(&conn, queue.topology()).await?;
    let channel = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongInt(EVENT_QUEUE_MAX_LENGTH),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    let declared = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let name = declared.name().as_str().to_owned();
    channel
        .queue_bind(
            name.as_str().into(),
            queue.topology().events_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            name.as_str().into(),
            format!("{}/events", queue.name).as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    // Events published while no queue was bound are gone: whoever keeps state re-reads it.
    if *connected_before && feed.send(EventFeed::Gap).await.is_err() {
        return Ok(());
    }
    *connected_before = true;
    tracing::info!(queue = %name, "task event subscription open");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        match serde_json::from_slice::<Vec<TaskEvent>>(&delivery.data) {
            Ok(events) => {
                if feed.send(EventFeed::Events(events)).await.is_err() {
                    let _ = conn.close(200, "bye".into()).await;
                    return Ok(());
                }
            }
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed task event message"),
        }
    }
    Err(Error::Broker("the event consumer ended".into()))
}
