//! Group commit for `POST /enqueue`.
//!
//! Handlers hand validated tasks to a few batch loops. Each loop takes whatever requests are
//! waiting (up to a batch size), inserts them in one statement (one commit, one fsync) and
//! answers every request: no 202 is sent before its row is committed. The new rows' ids then go
//! to the publish loops, which publish them with pipelined confirms, and to a loop that marks
//! the confirmed rows published, many batches per statement. The row is the durable record (an
//! outbox): if the broker is down, or this process dies before publishing, the relay in the
//! workers publishes the row later.

use bgagent_shared::domain::NewTask;
use bgagent_shared::gather::Gather;
use bgagent_shared::queue::TaskQueue;
use bgagent_shared::store::{Inserted, TaskStore};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;

/// Most requests one loop puts in one statement.
const MAX_BATCH: usize = 512;
/// Requests waiting for a loop; beyond this handlers wait (back-pressure).
const QUEUE_DEPTH: usize = 8192;
/// Longest an insert loop waits to hand committed ids to the publish loops.
const PUBLISH_HANDOFF: Duration = Duration::from_millis(50);

struct Job {
    task: NewTask,
    reply: oneshot::Sender<ApiResult<Inserted>>,
    /// [`WAITING`] until a batch loop takes the job into a statement ([`TAKEN`]), or the request
    /// gives up first ([`WITHDRAWN`]): whichever side moves first decides.
    state: Arc<AtomicU8>,
}

const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

/// Handle to the batch loops; cheap to clone.
#[derive(Clone)]
pub struct Enqueuer {
    tx: mpsc::Sender<Job>,
    /// A request still waiting for a statement this long is withdrawn: answered "not stored".
    withdraw_after: Duration,
    /// A request whose statement is still running this long is answered "outcome unknown".
    unknown_after: Duration,
}

impl Enqueuer {
    /// Start `loops` batch loops. They end once every handle is dropped and the queue drained.
    /// `answer_within` is the request timeout: every enqueue is answered truthfully before it.
    pub fn start(
        store: Arc<dyn TaskStore>,
        queue: Arc<dyn TaskQueue>,
        metrics: Arc<Metrics>,
        loops: usize,
        tasks_per_message: usize,
        answer_within: Duration,
    ) -> (Self, JoinSet<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let rx = Arc::new(Mutex::new(rx));
        let mut set = JoinSet::new();
        let (marks, marks_rx) = mpsc::channel(1024);
        set.spawn(mark_loop(store.clone(), marks_rx));
        // A short queue: when publishing falls behind, inserting slows down with it (back-pressure)
        // instead of piling up rows that the relay would then publish a second time.
        let (publish, publish_rx) = mpsc::channel(64);
        let publish_rx = Arc::new(Mutex::new(publish_rx));
        // Two publishers: one waits for its confirms while the other sends the next batch.
        for _ in 0..2 {
            set.spawn(publish_loop(
                queue.clone(),
                metrics.clone(),
                publish_rx.clone(),
                marks.clone(),
                tasks_per_message,
            ));
        }
        for _ in 0..loops.max(1) {
            let pipeline = Pipeline {
                store: store.clone(),
                metrics: metrics.clone(),
                publish: publish.clone(),
            };
            set.spawn(pipeline.run(rx.clone()));
        }
        let enqueuer = Self {
            tx,
            withdraw_after: answer_within * 3 / 4,
            unknown_after: answer_within * 9 / 10,
        };
        (enqueuer, set)
    }

    /// Insert (and publish) one task; resolves once its row is committed. Never answers "not
    /// stored" for a task that was stored: a request that waited too long for a statement is
    /// withdrawn before any statement can take it (503, nothing stored); one whose statement is
    /// still running near the request timeout is answered `outcome_unknown` (503), which the
    /// clients retry with the same idempotency key.
    pub async fn enqueue(&self, task: NewTask) -> ApiResult<Inserted> {
        let started = Instant::now();
        let (reply, mut answer) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(WAITING));
        let job = Job {
            task,
            reply,
            state: state.clone(),
        };
        let withdraw_at = started + self.withdraw_after;
        match tokio::time::timeout_at(withdraw_at, self.tx.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ApiError::Unavailable("enqueue pipeline")),
            Err(_) => return Err(ApiError::Unavailable("database")),
        }
        let dropped = |_| ApiError::Internal("enqueue pipeline dropped the request".into());
        if let Ok(result) = tokio::time::timeout_at(withdraw_at, &mut answer).await {
            return result.map_err(dropped)?;
        }
        if state
            .compare_exchange(WAITING, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!("enqueue withdrawn: no statement took it in time; nothing stored");
            return Err(ApiError::Unavailable("database"));
        }
        match tokio::time::timeout_at(started + self.unknown_after, answer).await {
            Ok(result) => result.map_err(dropped)?,
            Err(_) => {
                tracing::warn!("enqueue statement still running at the deadline; outcome unknown");
                Err(ApiError::OutcomeUnknown)
            }
        }
    }
}

struct Pipeline {
    store: Arc<dyn TaskStore>,
    metrics: Arc<Metrics>,
    publish: mpsc::Sender<Vec<uuid::Uuid>>,
}

impl Pipeline {
    async fn run(self, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut gather = Gather::default();
        loop {
            {
                // Whoever holds the receiver collects the waiting requests; the others are busy
                // committing or publishing theirs, so batches grow exactly when the database is
                // the bottleneck.
                let mut rx = rx.lock().await;
                if gather.next(&mut rx, &mut batch, MAX_BATCH).await == 0 {
                    return;
                }
            }
            let size = batch.len();
            self.process(std::mem::take(&mut batch))
                .instrument(tracing::debug_span!("enqueue_batch", size))
                .await;
        }
    }

    async fn process(&self, jobs: Vec<Job>) {
        // A request that gave up (withdrawn, or its handler dropped by the timeout layer) is not
        // inserted: it was, or will be, answered "not stored".
        let (tasks, replies): (Vec<NewTask>, Vec<_>) = jobs
            .into_iter()
            .filter(|j| {
                !j.reply.is_closed()
                    && j.state
                        .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            })
            .map(|j| (j.task, j.reply))
            .unzip();
        if tasks.is_empty() {
            return;
        }
        let results = self.store.insert_tasks(&tasks).await;
        let mut due = Vec::new();
        for ((reply, result), task) in replies.into_iter().zip(results).zip(&tasks) {
            let row = match result {
                Ok(row) => row,
                Err(e) => {
                    let _ = reply.send(Err(ApiError::from(e)));
                    continue;
                }
            };
            if row.created {
                self.metrics
                    .tasks_enqueued
                    .with_label_values(&[self.metrics.agent_label(&row.task.agent)])
                    .inc();
                // Only undelayed tasks go out now. A delayed one is the relay's, which decides
                // "due" on the database's clock: this host's clock may run ahead of it.
                if task.delay_secs == 0 {
                    due.push(row.task.id);
                }
            }
            tracing::debug!(task_id = %row.task.id, agent = %row.task.agent, created = row.created, "enqueued");
            let _ = reply.send(Ok(row));
        }
        // Committed tasks never wait for the broker: when publishing is stuck (a stalled broker),
        // the batch is left unpublished for the relay instead of holding up the next inserts.
        if !due.is_empty()
            && let Err(e) = self.publish.send_timeout(due, PUBLISH_HANDOFF).await
        {
            tracing::debug!(error = %e, "publishing is behind; the relay will publish these tasks");
        }
    }
}

/// Publish committed tasks with confirms, several batches per pass, and queue the confirmed ids
/// for marking.
async fn publish_loop(
    queue: Arc<dyn TaskQueue>,
    metrics: Arc<Metrics>,
    batches: Arc<Mutex<mpsc::Receiver<Vec<uuid::Uuid>>>>,
    marks: mpsc::Sender<Vec<uuid::Uuid>>,
    tasks_per_message: usize,
) {
    let mut taken = Vec::new();
    loop {
        {
            let mut rx = batches.lock().await;
            if rx.recv_many(&mut taken, 64).await == 0 {
                return;
            }
        }
        let due: Vec<uuid::Uuid> = taken.drain(..).flatten().collect();
        let confirmed = match queue.publish(&due, tasks_per_message).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, tasks = due.len(), "publish failed; the relay will publish these tasks");
                Vec::new()
            }
        };
        let missed = due.len() - confirmed.len();
        if missed > 0 {
            metrics
                .publish_failures
                .with_label_values(&["unconfirmed"])
                .inc_by(missed as u64);
        }
        if !confirmed.is_empty() {
            let _ = marks.send(confirmed).await;
        }
    }
}

/// How long a confirmed task waits before it is marked published. Most tasks are claimed by then,
/// and the mark skips claimed rows without writing them, which saves a row version per task; the
/// wait stays well inside the relay's grace for fresh rows, so the relay does not republish them.
const MARK_DELAY: Duration = Duration::from_secs(1);

/// Mark confirmed tasks published, [`MARK_DELAY`] after their confirm and many batches per
/// statement. If a mark is lost (crash, database error) the relay publishes those rows again: a
/// duplicate message, which the worker's claim turns into a no-op.
async fn mark_loop(store: Arc<dyn TaskStore>, mut marks: mpsc::Receiver<Vec<uuid::Uuid>>) {
    let mut waiting: VecDeque<(Instant, Vec<uuid::Uuid>)> = VecDeque::new();
    loop {
        let due_at = waiting
            .front()
            .map(|(confirmed, _)| *confirmed + MARK_DELAY);
        tokio::select! {
            batch = marks.recv() => match batch {
                Some(ids) => waiting.push_back((Instant::now(), ids)),
                None => break,
            },
            () = sleep_until_or_forever(due_at) => {
                let now = Instant::now();
                let due = waiting
                    .iter()
                    .take_while(|(confirmed, _)| *confirmed + MARK_DELAY <= now)
                    .count();
                let ids: Vec<uuid::Uuid> = waiting.drain(..due).flat_map(|(_, ids)| ids).collect();
                mark(&*store, &ids).await;
            }
        }
    }
    // Shutting down: mark the rest now, so a restart does not republish them.
    let ids: Vec<uuid::Uuid> = waiting.into_iter().flat_map(|(_, ids)| ids).collect();
    mark(&*store, &ids).await;
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn mark(store: &dyn TaskStore, ids: &[uuid::Uuid]) {
    if ids.is_empty() {
        return;
    }
    if let Err(e) = store.mark_published(ids).await {
        tracing::warn!(error = %e, tasks = ids.len(), "cannot mark tasks published; the relay will republish them");
    }
}
