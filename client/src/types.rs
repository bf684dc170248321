//! Request options and what some calls answer beyond the body. The bodies themselves (`Task`,
//! `TaskPage`, `Health`, ...) come from `bgagent-types`, the crate the API serves them from.

use bgagent_types::{Task, TaskStatus};

/// Answer of [`Client::enqueue`](crate::Client::enqueue).
#[derive(Clone, Debug)]
pub struct Enqueued {
    /// The task (new, or the existing one with the same idempotency key).
    pub task: Task,
    /// True when a task was created (HTTP 202); false when the idempotency key already existed
    /// and the existing task was returned (HTTP 200).
    pub created: bool,
}

/// Answer of [`Client::cancel_task`](crate::Client::cancel_task).
#[derive(Clone, Debug)]
pub struct Cancellation {
    /// The task after the request.
    pub task: Task,
    /// False when the task was queued and is now `cancelled` (HTTP 200); true when it was running
    /// and its worker was asked to stop it (HTTP 202): poll it, or [`wait`](crate::Client::wait).
    pub pending: bool,
}

/// Filters and paging of [`Client::list_tasks`](crate::Client::list_tasks).
#[derive(Clone, Debug, Default)]
pub struct TaskQuery {
    /// Only tasks with this status.
    pub status: Option<TaskStatus>,
    /// Only tasks of this agent.
    pub agent: Option<String>,
    /// Page size, 1-500 (the API's default is 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Also fetch each task's `meta` and `result` (`full=true`). Without it the tasks are
    /// summaries: `meta` is JSON null and `result` None.
    pub full: bool,
}

impl TaskQuery {
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(status) = self.status {
            pairs.push(("status", status.as_str().to_owned()));
        }
        if let Some(agent) = &self.agent {
            pairs.push(("agent", agent.clone()));
        }
        pairs.extend(
            PageQuery {
                limit: self.limit,
                cursor: self.cursor.clone(),
            }
            .pairs(),
        );
        if self.full {
            pairs.push(("full", "true".to_owned()));
        }
        pairs
    }
}

/// Paging of [`Client::processed`](crate::Client::processed).
#[derive(Clone, Debug, Default)]
pub struct PageQuery {
    /// Page size, 1-500 (the API's default is 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(limit) = self.limit {
            pairs.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &self.cursor {
            pairs.push(("cursor", cursor.clone()));
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_carry_only_what_is_set() {
        assert!(TaskQuery::default().pairs().is_empty());
        let query = TaskQuery {
            status: Some(TaskStatus::Failed),
            agent: Some("echo".into()),
            limit: Some(5),
            cursor: Some("c".into()),
            full: true,
        };
        assert_eq!(
            query.pairs(),
            vec![
                ("status", "failed".to_owned()),
                ("agent", "echo".to_owned()),
                ("limit", "5".to_owned()),
                ("cursor", "c".to_owned()),
                ("full", "true".to_owned()),
            ]
        );
    }
}
