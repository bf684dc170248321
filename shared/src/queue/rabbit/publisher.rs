//! Publishing with publisher confirms over a deadpool-lapin connection pool.
//!
//! One confirm-mode channel is cached and shared: lapin pipelines publishes on it and resolves
//! each confirm on its own, so a batch is published back to back and its confirms awaited
//! together. When the broker is unreachable, attempts fail fast for a short back-off instead of
//! making every request wait for a connect timeout; the first attempt after it reconnects and
//! re-declares the topology.

use deadpool_lapin::{Pool, PoolConfig, Runtime, Timeouts};
use futures_util::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{
    ControlMessage, MAX_TASKS_PER_MESSAGE, TASK_COUNT_HEADER, TASK_ID_HEADER, TASK_ROUTING_KEY,
    TaskMessage, Topology, declare,
};
use crate::config::BrokerConfig;
use crate::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Connecting, enabling confirms and declaring the topology, together.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Handing one message to the connection.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Open a named connection (shown in the management UI).
pub async fn connect(url: &str, connection_name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(connection_name.into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props)).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(Error::Broker("connect timed out".into())),
    }
}

/// Publishes task and control messages; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    topology: Topology,
    tasks_exchange: String,
    control_exchange: String,
    dead_exchange: String,
    events_exchange: String,
    confirm_timeout: Duration,
    state: Mutex<State>,
    /// A channel without confirms for task events (fire and forget).
    events_channel: Mutex<Option<Channel>>,
}

#[derive(Default)]
struct State {
    channel: Option<Channel>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("prefix", &self.inner.topology.prefix())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher for `config`'s broker; connects on first use, so it can be built while the
    /// broker is down.
    pub fn new(config: &BrokerConfig, connection_name: &str) -> Result<Self> {
        let url = config.url()?.to_owned();
        let topology = Topology::new(&config.broker_prefix, config.delivery_limit);
        let mut pool_config = PoolConfig::new(2);
        pool_config.timeouts = Timeouts {
            wait: Some(CONNECT_TIMEOUT),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(CONNECT_TIMEOUT),
        };
        let name = connection_name.to_owned();
        let pool = deadpool_lapin::Config {
            url: Some(url),
            pool: Some(pool_config),
        }
        .create_pool(
            move || ConnectionProperties::default().with_connection_name(name.as_str().into()),
            Runtime::Tokio1,
        )
        .map_err(|e| Error::Config(format!("AMQP_URL: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                tasks_exchange: topology.tasks_exchange(),
                control_exchange: topology.control_exchange(),
                dead_exchange: topology.dead_letter_exchange(),
                events_exchange: topology.events_exchange(),
                topology,
                confirm_timeout: Duration::from_secs(5),
                state: Mutex::new(State::default()),
                events_channel: Mutex::new(None),
            }),
        })
    }

    /// The topology this publisher declares and publishes to.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The cached confirm channel, (re)connecting and declaring the topology when needed.
    pub async fn channel(&self) -> Result<Channel> {
        let mut state = self.inner.state.lock().await;
        if let Some(ch) = &state.channel {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
            state.channel = None;
        }
        if let Some(at) = state.retry_at
            && Instant::now() < at
        {
            return Err(Error::Broker("unreachable (retrying shortly)".into()));
        }
        // Bounded as a whole: a broker that accepts the connection but never answers must not
        // hold this lock (and every publisher waiting on it) forever.
        let opened = tokio::time::timeout(OPEN_TIMEOUT, self.open_channel())
            .await
            .unwrap_or_else(|_| Err(Error::Broker("opening a channel timed out".into())));
        match opened {
            Ok(ch) => {
                state.channel = Some(ch.clone());
                state.retry_at = None;
                state.backoff = Duration::ZERO;
                Ok(ch)
            }
            Err(e) => {
                state.backoff = (state.backoff * 2).clamp(Duration::from_millis(250), MAX_BACKOFF);
                state.retry_at = Some(Instant::now() + state.backoff);
                Err(e)
            }
        }
    }

    async fn open_channel(&self) -> Result<Channel> {
        let conn = self
            .inner
            .pool
            .get()
            .await
            .map_err(|e| Error::Broker(format!("connect: {e}")))?;
        declare(&conn, &self.inner.topology).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        tracing::info!(
            prefix = self.inner.topology.prefix(),
            "broker channel open, topology declared"
        );
        Ok(channel)
    }

    async fn forget_channel(&self) {
        self.inner.state.lock().await.channel = None;
    }

    /// True when a channel is (or can now be) open.
    pub async fn ping(&self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.channel()).await,
            Ok(Ok(_))
        )
    }

    /// Messages ready in the tasks queue and in the dead queue (passive declares, no side effects).
    pub async fn queue_depths(&self) -> Result<(u32, u32)> {
        let channel = self.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let depth = |name: String| {
            let channel = channel.clone();
            async move {
                channel
                    .queue_declare(name.into(), passive, FieldTable::default())
                    .await
                    .map(|q| q.message_count())
            }
        };
        let result = tokio::try_join!(
            depth(self.inner.topology.tasks_queue()),
            depth(self.inner.topology.dead_queue())
        );
        if result.is_err() {
            self.forget_channel().await;
        }
        Ok(result?)
    }

    /// Publish persistent messages carrying up to `per_message` task ids each (clamped to
    /// 1..=[`MAX_TASKS_PER_MESSAGE`]) and wait for the broker's confirms. Returns the ids the
    /// broker confirmed; the rest stay unpublished for the relay.
    pub async fn publish_tasks(&self, ids: &[Uuid], per_message: usize) -> Result<Vec<Uuid>> {
        let channel = self.channel().await?;
        let chunks: Vec<&[Uuid]> = ids
            .chunks(per_message.clamp(1, MAX_TASKS_PER_MESSAGE))
            .collect();
        let messages: Vec<(Vec<u8>, BasicProperties)> = chunks
            .iter()
            .map(|chunk| {
                let body = serde_json::to_vec(&TaskMessage::for_tasks(chunk)).unwrap_or_default();
                let mut headers = FieldTable::default();
                let mut props = persistent();
                if let [task_id] = chunk {
                    let id = task_id.to_string();
                    headers.insert(
                        TASK_ID_HEADER.into(),
                        AMQPValue::LongString(id.as_str().into()),
                    );
                    props = props.with_message_id(id.into());
                } else {
                    headers.insert(
                        TASK_COUNT_HEADER.into(),
                        AMQPValue::LongUInt(u32::try_from(chunk.len()).unwrap_or(u32::MAX)),
                    );
                }
                (body, props.with_headers(headers))
            })
            .collect();
        // All publishes are started together, so lapin writes the batch in few socket writes
        // instead of one round through its I/O loop per message.
        let sent = join_all(messages.into_iter().map(|(body, props)| {
            let channel = &channel;
            async move {
                publish(
                    channel,
                    &self.inner.tasks_exchange,
                    TASK_ROUTING_KEY,
                    &body,
                    props,
                )
                .await
            }
        }))
        .await;
        let mut pending = Vec::with_capacity(chunks.len());
        for (chunk, result) in chunks.into_iter().zip(sent) {
            match result {
                Ok(confirm) => pending.push((chunk, confirm)),
                Err(e) => {
                    self.forget_channel().await;
                    tracing::warn!(error = %e, "publish failed; tasks stay unpublished for the relay");
                    break;
                }
            }
        }
        let (chunks, confirms): (Vec<&[Uuid]>, Vec<_>) = pending.into_iter().unzip();
        let Ok(results) =
            tokio::time::timeout(self.inner.confirm_timeout, join_all(confirms)).await
        else {
            self.forget_channel().await;
            return Err(Error::NotConfirmed);
        };
        // A returned message had no queue to go to: the tasks queue was deleted. The next
        // publish opens a new channel, which declares the topology again.
        if results
            .iter()
            .any(|r| matches!(r, Ok(Confirmation::Ack(Some(_)))))
        {
            tracing::warn!("task messages came back unroutable; declaring the topology again");
            self.forget_channel().await;
        }
        Ok(chunks
            .into_iter()
            .zip(results)
            .filter(|(_, r)| is_confirmed(r))
            .flat_map(|(chunk, _)| chunk.iter().copied())
            .collect())
    }

    /// Markers in the epoch queue (see [`Topology::epoch_queue`]); 0 means the broker no longer
    /// holds what it was given.
    pub async fn epoch_markers(&self) -> Result<u32> {
        let channel = self.channel().await?;
        let (options, args) = super::topology::epoch_queue();
        match channel
            .queue_declare(self.inner.topology.epoch_queue().into(), options, args)
            .await
        {
            Ok(queue) => Ok(queue.message_count()),
            Err(e) => {
                self.forget_channel().await;
                Err(e.into())
            }
        }
    }

    /// Store a new epoch marker (persistent, confirmed) naming `epoch`.
    pub async fn write_epoch_marker(&self, epoch: &str) -> Result<()> {
        let props = persistent().with_message_id(epoch.into());
        let body = serde_json::to_vec(&serde_json::json!({ "epoch": epoch }))
            .map_err(|e| Error::Broker(e.to_string()))?;
        self.publish_one("", &self.inner.topology.epoch_queue(), &body, props)
            .await
    }

    /// Publish one batch of task events (a JSON array) to the events exchange: transient, not
    /// mandatory, no confirm. The connection and its back-off are shared with the confirmed
    /// publishes, so an unreachable broker fails this fast too.
    pub async fn publish_events(&self, body: &[u8]) -> Result<()> {
        let channel = {
            let mut cached = self.inner.events_channel.lock().await;
            match cached.as_ref().filter(|ch| ch.status().connected()) {
                Some(ch) => ch.clone(),
                None => {
                    // Connects and declares the topology (with the back-off) when needed.
                    self.channel().await?;
                    let conn = self
                        .inner
                        .pool
                        .get()
                        .await
                        .map_err(|e| Error::Broker(format!("connect: {e}")))?;
                    let ch = conn.create_channel().await?;
                    *cached = Some(ch.clone());
                    ch
                }
            }
        };
        let props = BasicProperties::default().with_content_type("application/json".into());
        let send = channel.basic_publish(
            self.inner.events_exchange.as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            body,
            props,
        );
        let sent = match tokio::time::timeout(SEND_TIMEOUT, send).await {
            Ok(sent) => sent.map(drop).map_err(Error::from),
            Err(_) => Err(Error::Broker("publish timed out".into())),
        };
        if sent.is_err() {
            *self.inner.events_channel.lock().await = None;
        }
        sent
    }

    /// Publish a control message to every worker.
    pub async fn publish_control(&self, message: &ControlMessage) -> Result<()> {
        let body = serde_json::to_vec(message).map_err(|e| Error::Broker(e.to_string()))?;
        self.publish_one(&self.inner.control_exchange, "", &body, persistent())
            .await
    }

    /// Publish a copy of a terminally failed task (or an unparseable message) to the dead queue,
    /// with `headers` describing why.
    pub async fn publish_dead(&self, body: &[u8], headers: FieldTable) -> Result<()> {
        let props = persistent().with_headers(headers);
        self.publish_one(&self.inner.dead_exchange, "dead", body, props)
            .await
    }

    async fn publish_one(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<()> {
        let channel = self.channel().await?;
        let confirm = match publish(&channel, exchange, routing_key, body, props).await {
            Ok(c) => c,
            Err(e) => {
                self.forget_channel().await;
                return Err(e);
            }
        };
        match tokio::time::timeout(self.inner.confirm_timeout, confirm).await {
            Ok(result) if is_confirmed(&result) => Ok(()),
            Ok(_) => Err(Error::NotConfirmed),
            Err(_) => {
                self.forget_channel().await;
                Err(Error::NotConfirmed)
            }
        }
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<lapin::PublisherConfirm> {
    // Task and dead-letter messages are mandatory: an unroutable one (queue deleted) comes back
    // instead of vanishing. Control messages may have no listener (no worker running).
    let options = BasicPublishOptions {
        mandatory: !routing_key.is_empty(),
        ..Default::default()
    };
    let send = channel.basic_publish(exchange.into(), routing_key.into(), options, body, props);
    match tokio::time::timeout(SEND_TIMEOUT, send).await {
        Ok(sent) => Ok(sent?),
        Err(_) => Err(Error::Broker("publish timed out".into())),
    }
}

fn is_confirmed(result: &lapin::Result<Confirmation>) -> bool {
    matches!(result, Ok(Confirmation::Ack(None)))
}
