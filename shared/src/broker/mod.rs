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
/// Header carrying the number of task ids of a message with several.
pub const TASK_COUNT_HEADER: &str = "task_count";

/// Most task ids one message may carry.
pub const MAX_TASKS_PER_MESSAGE: usize = 256;

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
