//! Task status events: every status change a store call makes is announced to every API
//! process (`GET /events`), whichever process made it.
//!
//! [`EventingStore`] wraps an engine's [`TaskStore`] (see [`crate::engine::Engine`]), so no path
//! that changes a status can forget to announce it: enqueue, claim, record, release, reap,
//! dead-letter failing, cancel, retry and bulk retry all go through it. Events are best-effort
//! and never slow or fail the store call: the wrapper hands each call's events, as one batch, to
//! a bounded in-memory buffer ([`EventPublisher`]) and returns; one task per process sends each
//! batch as one queue message ([`TaskQueue::publish_events`]), without confirms. When the buffer
//! is full (the queue is slow or down) a batch is dropped and counted
//! (`bgagent_events_dropped_total`); the rows stay the truth, and a client that resumes a
//! stream is told to re-read them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::Result;
use crate::domain::{Agent, Attempt, NewTask, Task, TaskEvent, TaskStatus, WorkerInfo};
use crate::queue::TaskQueue;
use crate::store::{
    AgentOutcomes, AttemptRecord, Backlog, CancelOutcome, DueBatch, Exclusive, Heartbeat, Inserted,
    LockGuard, Overview, Pruned, Reaped, Recorded, RetryFilter, RetryOutcome, TaskFilter,
    TaskStore, UiSession,
};

/// Event batches the buffer holds while the queue catches up; beyond it batches are dropped.
pub const EVENT_BUFFER_BATCHES: usize = 1024;

/// Events dropped by this process since it started (buffer full or queue unreachable).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Events this process dropped since it started: the `bgagent_events_dropped_total` figure.
pub fn dropped_total() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn count_dropped(n: usize) {
    DROPPED.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// Hands event batches to the queue from a bounded buffer; cheap to clone.
#[derive(Clone, Debug)]
pub struct EventPublisher {
    buffer: mpsc::Sender<Vec<TaskEvent>>,
}

impl EventPublisher {
    /// A publisher sending through `queue`; its sending task runs on the current runtime and ends
    /// when the last clone is dropped. Outside a runtime every event is dropped (and counted).
    pub fn start(queue: Arc<dyn TaskQueue>) -> Self {
        let (buffer, batches) = mpsc::channel(EVENT_BUFFER_BATCHES);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(send_loop(queue, batches));
            }
            Err(_) => tracing::warn!("no runtime: task events are not published"),
        }
        Self { buffer }
    }

    /// Queue `events` for publishing, as one message; never waits. A full buffer drops them.
    pub fn emit(&self, events: Vec<TaskEvent>) {
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.buffer.try_send(events) {
            let (mpsc::error::TrySendError::Full(events)
            | mpsc::error::TrySendError::Closed(events)) = e;
            count_dropped(events.len());
        }
    }
}

async fn send_loop(queue: Arc<dyn TaskQueue>, mut batches: mpsc::Receiver<Vec<TaskEvent>>) {
    let mut warned_at: Option<tokio::time::Instant> = None;
    while let Some(batch) = batches.recv().await {
        if let Err(e) = queue.publish_events(&batch).await {
            count_dropped(batch.len());
            // One line a minute at most: an unreachable queue would otherwise log per batch.
            if warned_at.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(error = %e, "task events not published (counted in bgagent_events_dropped_total)");
                warned_at = Some(tokio::time::Instant::now());
            }
        }
    }
}

/// A [`TaskStore`] that announces every status change its inner store makes.
pub struct EventingStore {
    inner: Arc<dyn TaskStore>,
    events: EventPublisher,
}

impl EventingStore {
    /// Wrap `inner`, announcing through `events`.
    pub fn new(inner: Arc<dyn TaskStore>, events: EventPublisher) -> Self {
        Self { inner, events }
    }

    fn emit_tasks<'a>(&self, tasks: impl IntoIterator<Item = &'a Task>) {
        self.events
            .emit(tasks.into_iter().map(TaskEvent::of).collect());
    }
}

#[async_trait]
impl TaskStore for EventingStore {
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }
    async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }
    async fn now(&self) -> Result<DateTime<Utc>> {
        self.inner.now().await
    }
    async fn ping(&self, timeout: Duration) -> bool {
        self.inner.ping(timeout).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }

    async fn insert_tasks(&self, tasks: &[NewTask]) -> Vec<Result<Inserted>> {
        let inserted = self.inner.insert_tasks(tasks).await;
        // An idempotency key that already existed changed nothing.
        self.emit_tasks(inserted.iter().filter_map(|r| match r {
            Ok(i) if i.created => Some(&i.task),
            _ => None,
        }));
        inserted
    }
    async fn mark_published(&self, ids: &[Uuid]) -> Result<u64> {
        self.inner.mark_published(ids).await
    }
    async fn task(&self, id: Uuid) -> Result<Option<Task>> {
        self.inner.task(id).await
    }
    async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        self.inner.tasks(filter).await
    }
    async fn final_among(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        self.inner.final_among(ids).await
    }
    async fn cancel(&self, id: Uuid) -> Result<CancelOutcome> {
        let outcome = self.inner.cancel(id).await?;
        // A running task's cancel is only requested: its status changes when its worker records.
        if let CancelOutcome::Cancelled(task) = &outcome {
            self.emit_tasks([task]);
        }
        Ok(outcome)
    }
    async fn retry(&self, id: Uuid) -> Result<RetryOutcome> {
        let outcome = self.inner.retry(id).await?;
        if let RetryOutcome::Retried(task) = &outcome {
            self.emit_tasks([task]);
        }
        Ok(outcome)
    }
    async fn retry_batch(&self, filter: &RetryFilter, limit: i64) -> Result<Vec<TaskEvent>> {
        let retried = self.inner.retry_batch(filter, limit).await?;
        self.events.emit(retried.clone());
        Ok(retried)
    }
    async fn attempts(&self, before: Option<i64>, limit: i64) -> Result<Vec<Attempt>> {
        self.inner.attempts(before, limit).await
    }

    async fn upsert_agent(&self, name: &str, endpoint: &str, meta: &Value) -> Result<Agent> {
        self.inner.upsert_agent(name, endpoint, meta).await
    }
    async fn delete_agent(&self, name: &str) -> Result<bool> {
        self.inner.delete_agent(name).await
    }
    async fn agents(&self) -> Result<Vec<Agent>> {
        self.inner.agents().await
    }
    async fn agent(&self, name: &str) -> Result<Option<Agent>> {
        self.inner.agent(name).await
    }
    async fn agent_names(&self, limit: i64) -> Result<Vec<String>> {
        self.inner.agent_names(limit).await
    }

    async fn paused(&self) -> Result<bool> {
        self.inner.paused().await
    }
    async fn set_paused(&self, paused: bool, changed_by: &str) -> Result<bool> {
        self.inner.set_paused(paused, changed_by).await
    }
    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.inner.workers().await
    }
    async fn live_workers(&self) -> Result<i64> {
        self.inner.live_workers().await
    }
    async fn register_worker(&self, id: &str, host: &str, version: &str) -> Result<()> {
        self.inner.register_worker(id, host, version).await
    }
    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<()> {
        self.inner.heartbeat(beat).await
    }
    async fn mark_worker_stopped(&self, id: &str) -> Result<()> {
        self.inner.mark_worker_stopped(id).await
    }

    async fn claim(&self, ids: &[Uuid], worker_id: &str, lease: Duration) -> Result<Vec<Task>> {
        let claimed = self.inner.claim(ids, worker_id, lease).await?;
        self.emit_tasks(&claimed);
        Ok(claimed)
    }
    async fn record(&self, worker_id: &str, records: &[AttemptRecord]) -> Result<Vec<Recorded>> {
        let recorded = self.inner.record(worker_id, records).await?;
        self.events.emit(
            recorded
                .iter()
                .map(|r| TaskEvent {
                    id: r.task_id,
                    agent: r.agent.clone(),
                    status: r.status,
                    attempts: r.attempt,
                    updated_at: r.updated_at,
                })
                .collect(),
        );
        Ok(recorded)
    }
    async fn release(&self, worker_id: &str, tasks: &[(Uuid, i32)]) -> Result<Vec<TaskEvent>> {
        let released = self.inner.release(worker_id, tasks).await?;
        self.events.emit(released.clone());
        Ok(released)
    }
    async fn renew_leases(
        &self,
        worker_id: &str,
        lease: Duration,
        held: &[Uuid],
    ) -> Result<Vec<Uuid>> {
        self.inner.renew_leases(worker_id, lease, held).await
    }
    async fn reap(
        &self,
        last_attempt_grace: Duration,
        run_before: DateTime<Utc>,
    ) -> Result<Vec<Reaped>> {
        let reaped = self.inner.reap(last_attempt_grace, run_before).await?;
        self.events.emit(
            reaped
                .iter()
                .map(|r| TaskEvent {
                    id: r.task_id,
                    agent: r.agent.clone(),
                    status: r.status,
                    attempts: r.attempts,
                    updated_at: r.updated_at,
                })
                .collect(),
        );
        Ok(reaped)
    }
    async fn fail_dead_lettered(&self, id: Uuid, reason: &str) -> Result<Option<TaskEvent>> {
        let failed = self.inner.fail_dead_lettered(id, reason).await?;
        self.events.emit(failed.iter().cloned().collect());
        Ok(failed)
    }
    async fn unpublish_queued(&self, ids: &[Uuid]) -> Result<u64> {
        self.inner.unpublish_queued(ids).await
    }

    async fn backlog(&self) -> Result<Backlog> {
        self.inner.backlog().await
    }
    async fn take_due(&self, limit: usize, fresh_grace: Duration) -> Result<Box<dyn DueBatch>> {
        self.inner.take_due(limit, fresh_grace).await
    }
    async fn try_lock(&self, work: Exclusive) -> Result<Option<Box<dyn LockGuard>>> {
        self.inner.try_lock(work).await
    }
    async fn broker_epoch(&self) -> Result<Option<Uuid>> {
        self.inner.broker_epoch().await
    }
    async fn set_broker_epoch(&self, epoch: Uuid) -> Result<()> {
        self.inner.set_broker_epoch(epoch).await
    }
    async fn stale_published_exists(&self, age: Duration) -> Result<bool> {
        self.inner.stale_published_exists(age).await
    }
    async fn unpublish_published(&self, age: Option<Duration>, limit: i64) -> Result<u64> {
        self.inner.unpublish_published(age, limit).await
    }
    async fn prune_tasks(&self, status: TaskStatus, age: Duration, limit: i64) -> Result<Pruned> {
        self.inner.prune_tasks(status, age, limit).await
    }
    async fn prune_workers(&self, age: Duration, limit: i64) -> Result<u64> {
        self.inner.prune_workers(age, limit).await
    }

    async fn task_attempts(&self, id: Uuid, limit: i64) -> Result<Vec<Attempt>> {
        self.inner.task_attempts(id, limit).await
    }
    async fn task_by_key(&self, key: &str) -> Result<Option<Task>> {
        self.inner.task_by_key(key).await
    }
    async fn overview(&self, cap: i64) -> Result<Overview> {
        self.inner.overview(cap).await
    }
    async fn agent_outcomes(
        &self,
        window: Duration,
        cap: i64,
        limit: i64,
    ) -> Result<Vec<AgentOutcomes>> {
        self.inner.agent_outcomes(window, cap, limit).await
    }
    async fn insert_session(&self, token_hash: &[u8], csrf: &str, ttl: Duration) -> Result<()> {
        self.inner.insert_session(token_hash, csrf, ttl).await
    }
    async fn session(&self, token_hash: &[u8]) -> Result<Option<UiSession>> {
        self.inner.session(token_hash).await
    }
    async fn delete_session(&self, token_hash: &[u8]) -> Result<bool> {
        self.inner.delete_session(token_hash).await
    }
    async fn prune_sessions(&self, limit: i64) -> Result<u64> {
        self.inner.prune_sessions(limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::local::LocalQueue;

    fn event(n: u128) -> TaskEvent {
        TaskEvent {
            id: Uuid::from_u128(n),
            agent: "echo".into(),
            status: TaskStatus::Queued,
            attempts: 0,
            updated_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_full_buffer_drops_and_counts_without_waiting() {
        // No sending task: the buffer only fills.
        let (buffer, _batches) = mpsc::channel(2);
        let publisher = EventPublisher { buffer };
        let before = dropped_total();
        for n in 0..5 {
            publisher.emit(vec![event(n), event(n + 100)]);
        }
        assert!(dropped_total() >= before + 6, "3 batches of 2 dropped");
    }

    #[tokio::test]
    async fn emitted_batches_reach_subscribers_as_one_message() {
        let queue = Arc::new(LocalQueue::new());
        let (feed, mut received) = mpsc::channel(8);
        let stopping = tokio_util::sync::CancellationToken::new();
        let subscriber = {
            let queue = queue.clone();
            let stopping = stopping.clone();
            tokio::spawn(async move { queue.subscribe_events(feed, stopping).await })
        };
        // The subscription is live once its receiver exists; retry until then.
        let publisher = EventPublisher::start(queue);
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                publisher.emit(vec![event(1), event(2)]);
                tokio::select! {
                    got = received.recv() => return got,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
        .await
        .expect("an event batch arrives");
        match got {
            Some(crate::queue::EventFeed::Events(batch)) => assert_eq!(batch.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
        stopping.cancel();
        subscriber.await.expect("subscriber ends");
    }
}
