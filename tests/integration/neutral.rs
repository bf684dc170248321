//! Engine-neutral set-up and assertions for tests that run on both engines (`both_engines!`):
//! what the PostgreSQL-only tests read or wrote with SQL, through the task store instead.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use crate::common::{TestApi, TestEnv};
use bgagent_shared::domain::{Attempt, Task, TaskStatus, WorkerInfo};
use bgagent_shared::store::TaskFilter;
use std::time::Duration;
use uuid::Uuid;

/// Rows read per page.
const PAGE: i64 = 1000;

impl TestEnv {
    /// One task as stored now (it must exist).
    pub async fn task_now(&self, id: Uuid) -> Task {
        self.store
            .task(id)
            .await
            .expect("read task")
            .expect("task exists")
    }

    /// Every attempt record, oldest first.
    pub async fn all_attempts(&self) -> Vec<Attempt> {
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let page = self.store.attempts(before, PAGE).await.expect("attempts");
            let full = page.len() as i64 == PAGE;
            before = page.last().map(|a| a.id);
            all.extend(page);
            if !full {
                break;
            }
        }
        all.reverse();
        all
    }

    /// The attempt records of one task, first attempt first.
    pub async fn attempts_of(&self, id: Uuid) -> Vec<Attempt> {
        let mut attempts: Vec<Attempt> = self
            .all_attempts()
            .await
            .into_iter()
            .filter(|a| a.task_id == id)
            .collect();
        attempts.sort_by_key(|a| a.attempt);
        attempts
    }

    /// The outcomes of one task's attempts, first attempt first.
    pub async fn outcomes_of(&self, id: Uuid) -> Vec<String> {
        self.attempts_of(id)
            .await
            .into_iter()
            .map(|a| a.outcome)
            .collect()
    }

    /// Every task with `status`.
    pub async fn tasks_with(&self, status: TaskStatus) -> Vec<Task> {
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let filter = TaskFilter {
                status: Some(status),
                before,
                limit: PAGE,
                full: true,
                ..Default::default()
            };
            let page = self.store.tasks(&filter).await.expect("tasks");
            let full = page.len() as i64 == PAGE;
            before = page.last().map(|t| t.id);
            all.extend(page);
            if !full {
                return all;
            }
        }
    }

    /// How many tasks have `status`.
    pub async fn count_with(&self, status: TaskStatus) -> usize {
        self.tasks_with(status).await.len()
    }

    /// One worker as `/workers` lists it.
    pub async fn worker_info(&self, id: &str) -> Option<WorkerInfo> {
        self.store
            .workers()
            .await
            .expect("workers")
            .into_iter()
            .find(|w| w.id == id)
    }

    /// Play a worker `worker_id` that claimed `ids` with a lease of `lease` and then died
    /// (killed: it never renews, records or hands back anything). Returns the claimed tasks.
    pub async fn claim_as_dead_worker(
        &self,
        worker_id: &str,
        ids: &[Uuid],
        lease: Duration,
    ) -> Vec<Task> {
        self.store
            .register_worker(worker_id, "test", "test")
            .await
            .expect("register the worker");
        let claimed = self
            .store
            .claim(ids, worker_id, lease)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), ids.len(), "every task was claimable");
        claimed
    }

    /// Poll until `done` holds for the worker `id` as the store lists it, or panic after
    /// `timeout`.
    pub async fn wait_worker(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&WorkerInfo) -> bool,
    ) -> WorkerInfo {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let info = self.worker_info(id).await;
            if let Some(info) = info.as_ref().filter(|w| done(w)) {
                return info.clone();
            }
            if tokio::time::Instant::now() > deadline {
                panic!("worker {id} did not reach the expected state in {timeout:?}: {info:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of one series of `api`'s `/metrics` (0 when absent).
pub async fn metric(api: &TestApi, series: &str) -> i64 {
    let text = api.text(&api.url("/metrics")).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Poll `api`'s `/metrics` until `series` reaches at least `at_least`; returns its last value
/// (which may be lower, after `timeout`).
pub async fn wait_metric(api: &TestApi, series: &str, at_least: i64, timeout: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let value = metric(api, series).await;
        if value >= at_least || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
