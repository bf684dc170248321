//! An engine: one task store and one task queue that belong together.

use std::path::Path;
use std::sync::Arc;

use crate::Result;
use crate::config::{BrokerConfig, DatabaseConfig};
use crate::events::{EventPublisher, EventingStore};
use crate::queue::TaskQueue;
use crate::queue::local::LocalQueue;
use crate::queue::rabbit::RabbitQueue;
use crate::store::TaskStore;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;

/// The store and queue an API or worker runs on; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    /// Rows: the truth.
    pub store: Arc<dyn TaskStore>,
    /// Messages: "look at these ids", and task status events.
    pub queue: Arc<dyn TaskQueue>,
}

/// The store wrapped so that every status change it makes is announced on `queue`.
fn announcing(store: Arc<dyn TaskStore>, queue: &Arc<dyn TaskQueue>) -> Arc<dyn TaskStore> {
    Arc::new(EventingStore::new(
        store,
        EventPublisher::start(queue.clone()),
    ))
}

impl Engine {
    /// PostgreSQL and RabbitMQ, connected lazily, so a process starts while either is down.
    /// `name` names the connections (`bgagent-api@host`, `bgagent-worker@id`); consumer sessions
    /// ask for an AMQP heartbeat every `heartbeat_secs`.
    pub fn postgres_rabbitmq(
        database: &DatabaseConfig,
        broker: &BrokerConfig,
        name: &str,
        heartbeat_secs: u16,
    ) -> Result<Self> {
        let queue: Arc<dyn TaskQueue> = Arc::new(RabbitQueue::new(
            broker,
            &format!("{name}/publish"),
            heartbeat_secs,
        )?);
        Ok(Self {
            store: announcing(Arc::new(PgStore::connect_lazy(database, name)?), &queue),
            queue,
        })
    }

    /// The embedded engine: a SQLite file in `data_dir` (created when absent, migrated) and an
    /// in-process queue. One process owns a data dir at a time.
    pub async fn embedded(data_dir: &Path) -> Result<Self> {
        let store = SqliteStore::open(data_dir).await?;
        let queue: Arc<dyn TaskQueue> = Arc::new(LocalQueue::new());
        Ok(Self {
            store: announcing(Arc::new(store), &queue),
            queue,
        })
    }

    /// A one-line description for banners: `postgresql + rabbitmq`.
    pub fn describe(&self) -> String {
        format!("{} + {}", self.store.engine(), self.queue.engine())
    }
}
