//! `bgagent enqueue`: submit a task, optionally waiting for it to finish.

use bgagent_client::{EnqueueRequest, Task, TaskStatus};
use serde_json::Value;
use std::time::Duration;

use crate::connection::ClientOptions;
use crate::exit::{self, Exit};
use crate::output;

/// How long `--wait` waits unless `--wait-timeout` says otherwise.
const DEFAULT_WAIT_TIMEOUT_SECS: u64 = 300;

/// Arguments of `bgagent enqueue`.
#[derive(clap::Args)]
pub struct EnqueueArgs {
    /// Agent to route the task to: a built-in (echo, sleep, fail), a registered agent, or a role
    /// for the Omni Gateway.
    pub agent: String,
    /// What the agent should do.
    pub command: String,
    /// JSON object passed to the executor, e.g. '{"ms": 500}'.
    #[arg(long, value_name = "JSON", value_parser = parse_json_object)]
    pub meta: Option<Value>,
    /// Key that makes the enqueue idempotent: the same key again returns the existing task
    /// (default: a fresh key per call, so the client's retries cannot duplicate the task).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Attempts before the task fails (1-100; the API's default is 5).
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<i32>,
    /// Per-attempt timeout in seconds (1-86400; the API's default is 300).
    #[arg(long, value_name = "N")]
    pub timeout_secs: Option<i32>,
    /// Run no earlier than this many seconds from now.
    #[arg(long, value_name = "N")]
    pub delay_secs: Option<i64>,
    /// Wait until the task finishes and print it; exit 8 when it failed or was cancelled.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 9) [default: 300].
    #[arg(long, value_name = "SECS", requires = "wait")]
    pub wait_timeout: Option<u64>,
}

/// Parse a `--meta` value: a JSON object.
pub fn parse_json_object(raw: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(raw) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("must be a JSON object, e.g. '{\"key\": \"value\"}'".into()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// Run the command.
pub async fn run(args: EnqueueArgs, opts: &ClientOptions) -> anyhow::Result<()> {
    let client = opts.client()?;
    let request = EnqueueRequest {
        agent: args.agent,
        command: args.command,
        meta: args.meta,
        idempotency_key: args.idempotency_key,
        max_attempts: args.max_attempts,
        timeout_secs: args.timeout_secs,
        delay_secs: args.delay_secs,
    };
    let enqueued = client.enqueue(request).await?;
    let task = enqueued.task;
    let summary = if enqueued.created {
        format!(
            "enqueued {} (agent {}, {})",
            task.id, task.agent, task.status
        )
    } else {
        format!(
            "existing task {} for this idempotency key (agent {}, {})",
            task.id, task.agent, task.status
        )
    };
    if !args.wait {
        if opts.json {
            output::print_json(&task)?;
        } else {
            println!("{summary}");
        }
        return Ok(());
    }
    let wait_timeout = args.wait_timeout.unwrap_or(DEFAULT_WAIT_TIMEOUT_SECS);
    if !opts.json {
        eprintln!("{summary}; waiting up to {wait_timeout}s");
    }
    let done = client
        .wait(task.id, Duration::from_secs(wait_timeout))
        .await?;
    print_finished(&done, opts.json)
}

/// Print a finished task and turn `failed` / `cancelled` into exit code 8.
pub fn print_finished(task: &Task, json: bool) -> anyhow::Result<()> {
    if json {
        output::print_json(task)?;
    } else {
        print!("{}", output::task_detail(task, chrono::Utc::now()));
    }
    match task.status {
        TaskStatus::Failed | TaskStatus::Cancelled => {
            let why = task
                .last_error
                .as_deref()
                .map(|e| format!(": {}", output::truncate(e, 300)))
                .unwrap_or_default();
            Err(Exit::new(
                exit::TASK_FAILED,
                format!("task {} {}{why}", task.id, task.status),
            )
            .into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_must_be_a_json_object() {
        assert!(parse_json_object(r#"{"ms": 5}"#).is_ok());
        assert!(parse_json_object("[1]").is_err());
        assert!(parse_json_object("{bad").is_err());
    }
}
