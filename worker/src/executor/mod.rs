//! Executors, routed by agent: built-ins, then registered agents (HTTP), then the Omni Gateway.
//! Nothing here ever runs a shell.

mod builtin;
pub mod http;

use bgagent_shared::domain::Task;
use bgagent_shared::labels::AgentLabels;
use serde_json::Value;
use std::time::Duration;

pub use http::{AgentRegistry, HttpExecutor};

/// Why an attempt failed, which decides what happens next.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskError {
    /// Worth another attempt (5xx, 429, 408, connection error, timeout), possibly not before
    /// `retry_after`.
    Retryable {
        /// What went wrong.
        message: String,
        /// The agent's `Retry-After`.
        retry_after: Option<Duration>,
        /// Label for `bgagent_executor_errors_total`.
        kind: &'static str,
    },
    /// Retrying cannot help (4xx, no route, bad input).
    Terminal {
        /// What went wrong.
        message: String,
        /// Label for `bgagent_executor_errors_total`.
        kind: &'static str,
    },
}

impl TaskError {
    /// A retryable error without `Retry-After`.
    pub fn retryable(kind: &'static str, message: impl Into<String>) -> Self {
        Self::Retryable {
            message: message.into(),
            retry_after: None,
            kind,
        }
    }

    /// A terminal error.
    pub fn terminal(kind: &'static str, message: impl Into<String>) -> Self {
        Self::Terminal {
            message: message.into(),
            kind,
        }
    }

    /// The error label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Retryable { kind, .. } | Self::Terminal { kind, .. } => kind,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Self::Retryable { message, .. } | Self::Terminal { message, .. } => message,
        }
    }
}

/// Result of running one attempt.
pub type ExecResult = Result<Value, TaskError>;

/// Routes tasks to the executor that serves their agent.
#[derive(Clone)]
pub struct Executors {
    http: HttpExecutor,
    agents: AgentRegistry,
    labels: AgentLabels,
}

impl Executors {
    /// Executors over `http` with agent lookups through `agents`; agents found registered are
    /// reported by name in `labels` at once, without waiting for its next load.
    pub fn new(http: HttpExecutor, agents: AgentRegistry, labels: AgentLabels) -> Self {
        Self {
            http,
            agents,
            labels,
        }
    }

    /// Run one attempt of `task` (attempt number `attempt`).
    pub async fn run(&self, task: &Task, attempt: i32) -> ExecResult {
        if let Some(result) = builtin::run(task).await {
            return result;
        }
        match self.agents.endpoint(&task.agent).await {
            Ok(Some(endpoint)) => {
                self.labels.registered(&task.agent);
                self.http.call_agent(&endpoint, task, attempt).await
            }
            Ok(None) if self.http.has_gateway() => self.http.call_gateway(task).await,
            Ok(None) => Err(TaskError::terminal(
                "no_route",
                format!("no executor for agent \"{}\"", task.agent),
            )),
            Err(e) => Err(TaskError::retryable(
                "registry",
                format!("cannot look up agent: {e}"),
            )),
        }
    }
}
