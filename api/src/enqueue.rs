//! Group commit for `POST /enqueue`.
//!
//! Handlers hand validated tasks to a few batch loops. Each loop takes whatever requests are
//! waiting (up to a batch size), inserts them in one statement (one commit, one fsync) and
//! answers every request: no 202 is sent before its row is committed. The new rows' ids then go
//! to the publish loops, which publish them with pipelined confirms, and to a loop that marks
//! the confirmed rows published, many batches per statement. The row is the durable record (an
//! outbox): if the broker is down, or this process dies before publishing, the relay in the
//! workers publishes the row later.

use bgagent_shared::broker::Publisher;
use bgagent_shared::db;
use bgagent_shared::db::tasks::Inserted;
use bgagent_shared::domain::NewTask;
use bgagent_shared::gather::Gather;
use chrono::Utc;
use sqlx::PgPool;
use std::collections::VecDeque;
use std::sync::Arc;
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

struct Job {
    task: NewTask,
    reply: oneshot::Sender<ApiResult<Inserted>>,
}

/// Handle to the batch loops; cheap to clone.
#[derive(Clone)]
pub struct Enqueuer {
    tx: mpsc::Sender<Job>,
}

impl Enqueuer {
    /// Start `loops` batch loops. They end once every handle is dropped and the queue drained.
    pub fn start(
        db: PgPool,
        publisher: Publisher,
        metrics: Arc<Metrics>,
        loops: usize,
        tasks_per_message: usize,
    ) -> (Self, JoinSet<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let rx = Arc::new(Mutex::new(rx));
        let mut set = JoinSet::new();
        let (marks, marks_rx) = mpsc::channel(1024);
        set.spawn(mark_loop(db.clone(), marks_rx));
        // A short queue: when publishing falls behind, inserting slows down with it (back-pressure)
        // instead of piling up rows that the relay would then publish a second time.
        let (publish, publish_rx) = mpsc::channel(64);
        let publish_rx = Arc::new(Mutex::new(publish_rx));
        // Two publishers: one waits for its confirms while the other sends the next batch.
        for _ in 0..2 {
            set.spawn(publish_loop(
                publisher.clone(),
                metrics.clone(),
                publish_rx.clone(),
                marks.clone(),
                tasks_per_message,
            ));
        }
        for _ in 0..loops.max(1) {
            let pipeline = Pipeline {
                db: db.clone(),
                metrics: metrics.clone(),
                publish: publish.clone(),
            };
            set.spawn(pipeline.run(rx.clone()));
        }
        (Self { tx }, set)
    }

    /// Insert (and publish) one task; resolves once its row is committed.
    pub async fn enqueue(&self, task: NewTask) -> ApiResult<Inserted> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { task, reply })
            .await
            .map_err(|_| ApiError::Unavailable("enqueue pipeline"))?;
        answer
            .await
            .map_err(|_| ApiError::Internal("enqueue pipeline dropped the request".into()))?
    }
}

struct Pipeline {
    db: PgPool,
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
        let (tasks, replies): (Vec<NewTask>, Vec<_>) =
            jobs.into_iter().map(|j| (j.task, j.reply)).unzip();
        let inserted = match db::tasks::insert_batch(&self.db, &tasks).await {
            Ok(rows) => rows,
            Err(e) => {
                let err = ApiError::from(e);
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
                return;
            }
        };
        let now = Utc::now();
        let due: Vec<uuid::Uuid> = inserted
            .iter()
            .filter(|i| i.created && i.task.run_at <= now)
            .map(|i| i.task.id)
            .collect();
        for row in inserted.iter().filter(|i| i.created) {
            self.metrics
                .tasks_enqueued
                .with_label_values(&[self.metrics.agent_label(&row.task.agent)])
                .inc();
        }
        for (reply, row) in replies.into_iter().zip(inserted) {
            tracing::debug!(task_id = %row.task.id, agent = %row.task.agent, created = row.created, "enqueued");
            let _ = reply.send(Ok(row));
        }
        if !due.is_empty() && self.publish.send(due).await.is_err() {
            tracing::warn!("publish loop gone; the relay will publish these tasks");
        }
    }
}

/// Publish committed tasks with confirms, several batches per pass, and queue the confirmed ids
/// for marking.
async fn publish_loop(
    publisher: Publisher,
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
        let confirmed = match publisher.publish_tasks(&due, tasks_per_message).await {
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
async fn mark_loop(db: PgPool, mut marks: mpsc::Receiver<Vec<uuid::Uuid>>) {
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
                mark(&db, &ids).await;
            }
        }
    }
    // Shutting down: mark the rest now, so a restart does not republish them.
    let ids: Vec<uuid::Uuid> = waiting.into_iter().flat_map(|(_, ids)| ids).collect();
    mark(&db, &ids).await;
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn mark(db: &PgPool, ids: &[uuid::Uuid]) {
    if ids.is_empty() {
        return;
    }
    if let Err(e) = db::tasks::mark_published(db, ids).await {
        tracing::warn!(error = %e, tasks = ids.len(), "cannot mark tasks published; the relay will republish them");
    }
}
