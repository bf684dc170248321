//! RabbitMQ: topology names and declaration, message formats, and the publisher.

mod publisher;
mod topology;

pub use publisher::{Publisher, connect};
pub use topology::{Topology, declare};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Routing key of task messages on the tasks exchange.
pub const TASK_ROUTING_KEY: &str = "task";
/// Header carrying the task id, so logs and the management UI correlate without parsing bodies.
pub const TASK_ID_HEADER: &str = "task_id";

/// Body of a task message. It carries the id only: the worker loads the task from PostgreSQL,
/// which stays the source of truth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// The task to run.
    pub task_id: Uuid,
}

/// A message on the control fanout exchange; every worker receives each one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ControlMessage {
    /// Stop taking new tasks; in-flight tasks finish.
    Stop,
    /// Take tasks again.
    Start,
    /// Abort a running task; the worker holding it records `cancelled`.
    Cancel {
        /// The task.
        task_id: Uuid,
        /// The worker believed to hold it (others ignore the message).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker_id: Option<String>,
    },
}
