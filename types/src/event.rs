//! A task's status change, as `GET /events` streams it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Task, TaskStatus};

/// One status change of a task: the `data` of an `event: task` on `GET /events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskEvent {
    /// The task.
    pub id: Uuid,
    /// Its agent.
    pub agent: String,
    /// Its status after the change.
    pub status: TaskStatus,
    /// Attempts used so far.
    pub attempts: i32,
    /// When the change was made.
    pub updated_at: DateTime<Utc>,
}

impl TaskEvent {
    /// The event saying that `task` is as it is now.
    pub fn of(task: &Task) -> Self {
        Self {
            id: task.id,
            agent: task.agent.clone(),
            status: task.status,
            attempts: task.attempts,
            updated_at: task.updated_at,
        }
    }
}
