//! Built-in executors for tests, demos and benchmarks: `echo`, `sleep`, `fail`.

use bgagent_shared::domain::Task;
use serde_json::json;
use std::time::Duration;

use super::{ExecResult, TaskError};

/// Longest `sleep` accepted (the task timeout still applies).
const MAX_SLEEP_MS: u64 = 86_400_000;

/// Run `task` if its agent is a built-in; `None` otherwise.
pub async fn run(task: &Task) -> Option<ExecResult> {
    Some(match task.agent.as_str() {
        // Returns its input.
        "echo" => Ok(json!({"command": task.command, "meta": task.meta})),
        "sleep" => {
            let ms = task
                .meta
                .get("ms")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(100)
                .min(MAX_SLEEP_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({"slept_ms": ms}))
        }
        "fail" => {
            let retryable = task
                .meta
                .get("retryable")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true);
            let message = format!("failed on purpose: {}", task.command);
            Err(if retryable {
                TaskError::retryable("requested", message)
            } else {
                TaskError::terminal("requested", message)
            })
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bgagent_shared::domain::TaskStatus;
    use bgagent_shared::labels::BUILTIN_AGENTS;
    use chrono::Utc;

    /// The metrics report these agents by name because they are built in: the list must match.
    #[tokio::test]
    async fn every_builtin_agent_named_for_metrics_runs_here() {
        for agent in BUILTIN_AGENTS {
            let task = Task {
                id: uuid::Uuid::now_v7(),
                agent: agent.into(),
                command: "x".into(),
                meta: json!({"ms": 0, "retryable": false}),
                status: TaskStatus::Running,
                attempts: 1,
                max_attempts: 1,
                timeout_secs: 1,
                idempotency_key: None,
                run_at: Utc::now(),
                published_at: None,
                worker_id: None,
                lease_until: None,
                result: None,
                last_error: None,
                cancel_requested: false,
                created_at: Utc::now(),
                started_at: None,
                finished_at: None,
                updated_at: Utc::now(),
            };
            assert!(run(&task).await.is_some(), "{agent} is not a built-in");
        }
    }
}
