//! Engine-neutral set-up and checks for the API, MCP and hostile-input tests: what they used to
//! read or write with SQL, through the task store instead, so one test body runs on PostgreSQL
//! and on the embedded engine.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use crate::common::TestEnv;
use bgagent_shared::domain::{Task, TaskStatus};
use bgagent_shared::store::{AttemptOutcome, AttemptRecord, TaskFilter};
use std::time::Duration;
use uuid::Uuid;

/// How many tasks the store holds, every status, counted page by page.
pub async fn count_tasks(env: &TestEnv) -> usize {
    let mut count = 0;
    let mut before = None;
    loop {
        let filter = TaskFilter {
            before,
            limit: 500,
            ..Default::default()
        };
        let page = env.store.tasks(&filter).await.expect("list tasks");
        count += page.len();
        match page.last() {
            Some(last) if page.len() == 500 => before = Some(last.id),
            _ => return count,
        }
    }
}

/// Whether task `id` counts as on the queue (`published_at` set); None when there is no such task.
pub async fn published(env: &TestEnv, id: Uuid) -> Option<bool> {
    env.store
        .task(id)
        .await
        .expect("read task")
        .map(|t| t.published_at.is_some())
}

/// Wait until the queue confirmed task `id` (the row is marked published), or panic.
pub async fn wait_published(env: &TestEnv, id: Uuid) -> Task {
    env.wait_task(id, Duration::from_secs(10), |t| t.published_at.is_some())
        .await
}

/// Claim queued task `id` for `worker`, as a worker would: it is then running, held by `worker`,
/// with one more attempt. Panics when the task is not claimable.
pub async fn claim_as(env: &TestEnv, id: Uuid, worker: &str) -> Task {
    let mut claimed = env
        .store
        .claim(&[id], worker, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "task {id} was not claimable");
    claimed.pop().unwrap()
}

/// Record how `worker`'s claimed attempt of `task` ended, as a worker would; a retry is due at once.
pub async fn record_as(
    env: &TestEnv,
    worker: &str,
    task: &Task,
    outcome: AttemptOutcome,
    status: TaskStatus,
) {
    let record = AttemptRecord {
        task_id: task.id,
        attempt: task.attempts,
        status,
        outcome,
        result: (status == TaskStatus::Succeeded).then(|| serde_json::json!({"ok": true})),
        error: (status != TaskStatus::Succeeded).then(|| "test failure".to_owned()),
        retry_delay: Duration::ZERO,
        started_at: task.started_at.unwrap_or_else(chrono::Utc::now),
    };
    let recorded = env
        .store
        .record(worker, &[record])
        .await
        .expect("record the attempt");
    assert_eq!(recorded.len(), 1, "the attempt of {} was recorded", task.id);
}
