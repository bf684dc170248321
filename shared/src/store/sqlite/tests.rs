//! The engine against a real SQLite file in a fresh directory per test.

#![allow(clippy::unwrap_used)]

use chrono::Utc;
use serde_json::{Value, json};
use sqlx::Row;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::{SqliteStore, retention, runs, tasks};
use crate::Error;
use crate::domain::{NewTask, Task, TaskStatus};
use crate::store::{
    AttemptOutcome, AttemptRecord, CancelOutcome, Exclusive, Heartbeat, Pruned, TaskFilter,
    TaskStore,
};

const LEASE: Duration = Duration::from_secs(60);

/// A temporary data directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("bgagent-sqlite-{}", Uuid::now_v7())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A store in a fresh directory; the store is dropped before its directory.
struct Fixture {
    store: SqliteStore,
    dir: TempDir,
}

async fn fresh() -> Fixture {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0).await.unwrap();
    Fixture { store, dir }
}

fn new_task(key: Option<&str>) -> NewTask {
    NewTask {
        id: Uuid::now_v7(),
        agent: "echo".into(),
        command: "hi".into(),
        meta: json!({"n": 1}),
        idempotency_key: key.map(str::to_owned),
        max_attempts: 3,
        timeout_secs: 60,
        delay_secs: 0,
    }
}

async fn insert(store: &SqliteStore, tasks: Vec<NewTask>) -> Vec<Task> {
    store
        .insert_tasks(&tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().task)
        .collect()
}

async fn insert_one(store: &SqliteStore, task: NewTask) -> Task {
    insert(store, vec![task]).await.remove(0)
}

async fn get(store: &SqliteStore, id: Uuid) -> Task {
    store.task(id).await.unwrap().unwrap()
}

fn record(task: &Task, status: TaskStatus, outcome: AttemptOutcome) -> AttemptRecord {
    AttemptRecord {
        task_id: task.id,
        attempt: task.attempts,
        status,
        outcome,
        result: (status == TaskStatus::Succeeded).then(|| json!({"ok": true})),
        error: (status != TaskStatus::Succeeded).then(|| "boom".to_owned()),
        retry_delay: Duration::ZERO,
        started_at: task.started_at.unwrap_or_else(Utc::now),
    }
}

/// Let the clock pass the microsecond of the last write, for strict comparisons.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

fn far_future() -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::seconds(60)
}

#[tokio::test]
async fn insert_is_idempotent_by_key() {
    let fx = fresh().await;
    let s = &fx.store;
    let first = new_task(Some("k1"));
    let results = s.insert_tasks(std::slice::from_ref(&first)).await;
    let stored = results[0].as_ref().unwrap();
    assert!(stored.created);
    assert_eq!(stored.task.id, first.id);
    assert_eq!(stored.task.status, TaskStatus::Queued);
    assert_eq!(stored.task.meta, json!({"n": 1}));

    // Same key again, and twice inside one batch (the first wins), beside a new task.
    let again = new_task(Some("k1"));
    let dup_a = new_task(Some("k2"));
    let dup_b = new_task(Some("k2"));
    let plain = new_task(None);
    let results = s
        .insert_tasks(&[again, dup_a.clone(), dup_b, plain.clone()])
        .await;
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        results.iter().map(|r| r.created).collect::<Vec<_>>(),
        [false, true, false, true]
    );
    assert_eq!(results[0].task.id, first.id);
    assert_eq!(results[1].task.id, dup_a.id);
    assert_eq!(results[2].task.id, dup_a.id);
    assert_eq!(results[3].task.id, plain.id);
    let all = s
        .tasks(&TaskFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn a_refused_task_fails_alone() {
    let fx = fresh().await;
    let s = &fx.store;
    let good = new_task(None);
    let bad = NewTask {
        max_attempts: 0, // the schema's check refuses it
        ..new_task(None)
    };
    let also_good = new_task(Some("k"));
    let results = s
        .insert_tasks(&[good.clone(), bad, also_good.clone()])
        .await;
    assert!(results[0].as_ref().is_ok_and(|r| r.created));
    assert!(
        matches!(results[1], Err(Error::Database(_))),
        "{:?}",
        results[1]
    );
    assert!(results[2].as_ref().is_ok_and(|r| r.created));
    assert!(s.task(good.id).await.unwrap().is_some());
    assert!(s.task(also_good.id).await.unwrap().is_some());
    // A repeated id inside one batch: the second copy alone fails.
    let one = new_task(None);
    let results = s.insert_tasks(&[one.clone(), one]).await;
    assert!(results[0].is_ok());
    assert!(results[1].is_err());
}

#[tokio::test]
async fn lists_filter_and_page_newest_first() {
    let fx = fresh().await;
    let s = &fx.store;
    let mut ids = Vec::new();
    for i in 0..7 {
        let agent = if i % 2 == 0 { "even" } else { "odd" };
        let task = insert_one(
            s,
            NewTask {
                agent: agent.into(),
                ..new_task(None)
            },
        )
        .await;
        ids.push(task.id);
    }
    s.cancel(ids[6]).await.unwrap();
    s.cancel(ids[3]).await.unwrap();

    let page = |status, agent: Option<&str>, before, limit| TaskFilter {
        status,
        agent: agent.map(str::to_owned),
        before,
        limit,
        full: false,
    };
    let list = |f: TaskFilter| async move {
        s.tasks(&f)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    };
    let newest_first: Vec<Uuid> = ids.iter().rev().copied().collect();
    assert_eq!(list(page(None, None, None, 100)).await, newest_first);
    assert_eq!(list(page(None, None, None, 3)).await, newest_first[..3]);
    assert_eq!(
        list(page(None, None, Some(ids[4]), 3)).await,
        [ids[3], ids[2], ids[1]]
    );
    assert_eq!(
        list(page(None, Some("even"), None, 100)).await,
        [ids[6], ids[4], ids[2], ids[0]]
    );
    assert_eq!(
        list(page(Some(TaskStatus::Cancelled), None, None, 100)).await,
        [ids[6], ids[3]]
    );
    assert_eq!(
        list(page(
            Some(TaskStatus::Queued),
            Some("even"),
            Some(ids[4]),
            100
        ))
        .await,
        [ids[2], ids[0]]
    );
    assert!(
        list(page(Some(TaskStatus::Running), None, None, 100))
            .await
            .is_empty()
    );
    assert!(list(page(None, None, None, -1)).await.is_empty());
    assert!(s.task(Uuid::now_v7()).await.unwrap().is_none());
}

#[tokio::test]
async fn cancel_by_status() {
    let fx = fresh().await;
    let s = &fx.store;
    let queued = insert_one(s, new_task(None)).await;
    let running = insert_one(s, new_task(None)).await;
    s.claim(&[running.id], "w1", LEASE).await.unwrap();

    match s.cancel(queued.id).await.unwrap() {
        CancelOutcome::Cancelled(t) => {
            assert_eq!(t.status, TaskStatus::Cancelled);
            assert!(t.finished_at.is_some());
            assert_eq!(t.last_error.as_deref(), Some("cancelled by request"));
        }
        other => panic!("{other:?}"),
    }
    match s.cancel(running.id).await.unwrap() {
        CancelOutcome::Requested(t) => {
            assert_eq!(t.status, TaskStatus::Running);
            assert!(t.cancel_requested);
            assert!(t.lease_until.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.cancel(queued.id).await.unwrap(),
        CancelOutcome::AlreadyFinished(t) if t.status == TaskStatus::Cancelled
    ));
    assert!(matches!(
        s.cancel(Uuid::now_v7()).await.unwrap(),
        CancelOutcome::NotFound
    ));
    // The worker learns of the cancel when renewing, and its outcome becomes cancelled.
    let held = s.renew_leases("w1", LEASE, &[running.id]).await.unwrap();
    assert_eq!(held, [running.id]);
    let claimed = get(s, running.id).await;
    let done = s
        .record(
            "w1",
            &[record(
                &claimed,
                TaskStatus::Succeeded,
                AttemptOutcome::Succeeded,
            )],
        )
        .await
        .unwrap();
    assert_eq!(done[0].status, TaskStatus::Cancelled);
    assert_eq!(done[0].outcome, AttemptOutcome::Cancelled);
    let task = get(s, running.id).await;
    assert_eq!(task.status, TaskStatus::Cancelled);
    assert_eq!(task.result, None);
    let attempts = s.attempts(None, 10).await.unwrap();
    assert_eq!(attempts[0].outcome, "cancelled");
}

#[tokio::test]
async fn claim_takes_only_queued_due_tasks() {
    let fx = fresh().await;
    let s = &fx.store;
    let due = insert_one(s, new_task(None)).await;
    let later = insert_one(
        s,
        NewTask {
            delay_secs: 60,
            ..new_task(None)
        },
    )
    .await;
    let cancelled = insert_one(s, new_task(None)).await;
    s.cancel(cancelled.id).await.unwrap();
    let ids = [due.id, later.id, cancelled.id, Uuid::now_v7(), due.id];
    let claimed = s.claim(&ids, "w1", LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let task = &claimed[0];
    assert_eq!(task.id, due.id);
    assert_eq!(task.status, TaskStatus::Running);
    assert_eq!(task.attempts, 1);
    assert_eq!(task.worker_id.as_deref(), Some("w1"));
    assert!(task.lease_until.unwrap() > Utc::now() + chrono::Duration::seconds(50));
    // Held: another claim gets nothing.
    assert!(s.claim(&[due.id], "w2", LEASE).await.unwrap().is_empty());
}

#[tokio::test]
async fn record_is_fenced_on_attempt_and_worker() {
    let fx = fresh().await;
    let s = &fx.store;
    let task = insert_one(s, new_task(None)).await;
    let claimed = s.claim(&[task.id], "w1", LEASE).await.unwrap().remove(0);

    let stale = AttemptRecord {
        attempt: claimed.attempts + 1,
        ..record(&claimed, TaskStatus::Succeeded, AttemptOutcome::Succeeded)
    };
    assert!(s.record("w1", &[stale]).await.unwrap().is_empty());
    let ok = record(&claimed, TaskStatus::Succeeded, AttemptOutcome::Succeeded);
    assert!(
        s.record("w2", std::slice::from_ref(&ok))
            .await
            .unwrap()
            .is_empty()
    );

    let done = s.record("w1", std::slice::from_ref(&ok)).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].status, TaskStatus::Succeeded);
    assert_eq!(done[0].agent, "echo");
    assert_eq!(done[0].attempt, 1);
    let stored = get(s, task.id).await;
    assert_eq!(stored.status, TaskStatus::Succeeded);
    assert_eq!(stored.result, Some(json!({"ok": true})));
    assert!(stored.finished_at.is_some() && stored.lease_until.is_none());
    // A redelivered outcome after the task finished is dropped.
    assert!(s.record("w1", &[ok]).await.unwrap().is_empty());
    let attempts = s.attempts(None, 10).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (
            attempts[0].task_id,
            attempts[0].attempt,
            attempts[0].outcome.as_str()
        ),
        (task.id, 1, "succeeded")
    );
    assert_eq!(attempts[0].command, "hi");
    assert_eq!(attempts[0].worker_id.as_deref(), Some("w1"));
}

#[tokio::test]
async fn retry_requeues_unpublished_for_later() {
    let fx = fresh().await;
    let s = &fx.store;
    let task = insert_one(s, new_task(None)).await;
    s.mark_published(&[task.id]).await.unwrap();
    let claimed = s.claim(&[task.id], "w1", LEASE).await.unwrap().remove(0);
    let retry = AttemptRecord {
        retry_delay: Duration::from_secs(30),
        ..record(&claimed, TaskStatus::Queued, AttemptOutcome::Retry)
    };
    let done = s.record("w1", &[retry]).await.unwrap();
    assert_eq!(done[0].status, TaskStatus::Queued);
    assert_eq!(done[0].outcome, AttemptOutcome::Retry);
    assert_eq!(done[0].error.as_deref(), Some("boom"));
    let stored = get(s, task.id).await;
    assert_eq!(stored.status, TaskStatus::Queued);
    assert!(stored.run_at > Utc::now() + chrono::Duration::seconds(25));
    assert_eq!(stored.published_at, None);
    assert_eq!(stored.finished_at, None);
    assert_eq!(stored.last_error.as_deref(), Some("boom"));
    // Not due yet.
    assert!(s.claim(&[task.id], "w1", LEASE).await.unwrap().is_empty());
    assert_eq!(s.attempts(None, 10).await.unwrap()[0].outcome, "retry");
}

#[tokio::test]
async fn release_hands_back_without_counting() {
    let fx = fresh().await;
    let s = &fx.store;
    let task = insert_one(s, new_task(None)).await;
    let claimed = s.claim(&[task.id], "w1", LEASE).await.unwrap().remove(0);
    assert!(s.release("w2", &[(task.id, 1)]).await.unwrap().is_empty());
    assert!(s.release("w1", &[(task.id, 2)]).await.unwrap().is_empty());
    let released = s
        .release("w1", &[(task.id, claimed.attempts)])
        .await
        .unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(
        (released[0].id, released[0].status, released[0].attempts),
        (task.id, TaskStatus::Queued, 0)
    );
    let stored = get(s, task.id).await;
    assert_eq!((stored.status, stored.attempts), (TaskStatus::Queued, 0));
    assert_eq!(stored.published_at, None);
    // Claimed once: the API's late publish confirmation must not mark it.
    assert_eq!(s.mark_published(&[task.id]).await.unwrap(), 0);
}

#[tokio::test]
async fn renew_extends_only_held_running_tasks() {
    let fx = fresh().await;
    let s = &fx.store;
    let a = insert_one(s, new_task(None)).await;
    let b = insert_one(s, new_task(None)).await;
    s.claim(&[a.id, b.id], "w1", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(s.renew_leases("w1", LEASE, &[]).await.unwrap().is_empty());
    assert!(
        s.renew_leases("w1", LEASE, &[a.id])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.renew_leases("w2", LEASE, &[b.id])
            .await
            .unwrap()
            .is_empty()
    );
    let soon = Utc::now() + chrono::Duration::seconds(30);
    assert!(get(s, a.id).await.lease_until.unwrap() > soon);
    assert!(get(s, b.id).await.lease_until.unwrap() < soon);
}

#[tokio::test]
async fn reap_returns_expired_leases_and_fails_last_attempts() {
    let fx = fresh().await;
    let s = &fx.store;
    s.register_worker("w1", "host", "v").await.unwrap();
    let expired = insert_one(s, new_task(None)).await;
    let last = insert_one(
        s,
        NewTask {
            max_attempts: 1,
            ..new_task(None)
        },
    )
    .await;
    let alive = insert_one(s, new_task(None)).await;
    s.claim(&[expired.id, last.id], "w1", Duration::ZERO)
        .await
        .unwrap();
    s.claim(&[alive.id], "w1", LEASE).await.unwrap();
    tick().await;

    // A reap that starts after its deadline does nothing.
    let late = Utc::now() - chrono::Duration::milliseconds(1);
    assert!(
        s.reap(Duration::from_secs(30), late)
            .await
            .unwrap()
            .is_empty()
    );

    // The last attempt of a live holder may still be reported: only the other is requeued.
    let reaped = s.reap(Duration::from_secs(30), far_future()).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].task_id, expired.id);
    assert_eq!(reaped[0].status, TaskStatus::Queued);
    let stored = get(s, expired.id).await;
    assert_eq!(stored.status, TaskStatus::Queued);
    assert_eq!(stored.published_at, None);
    assert!(stored.last_error.unwrap().contains("worker lost"));
    assert_eq!(get(s, last.id).await.status, TaskStatus::Running);

    // Its holder stopped: the last attempt fails at once (the live lease stays, but goes too).
    s.mark_worker_stopped("w1").await.unwrap();
    let mut reaped = s.reap(Duration::from_secs(30), far_future()).await.unwrap();
    reaped.sort_by_key(|r| r.task_id);
    assert_eq!(reaped.len(), 2);
    assert_eq!(
        (reaped[0].task_id, reaped[0].status),
        (last.id, TaskStatus::Failed)
    );
    assert_eq!(
        (reaped[1].task_id, reaped[1].status),
        (alive.id, TaskStatus::Queued)
    );
    assert!(get(s, last.id).await.finished_at.is_some());
    let outcomes: Vec<(Uuid, String)> = s
        .attempts(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.task_id, a.outcome))
        .collect();
    assert!(outcomes.contains(&(last.id, "failed".to_owned())));
    assert!(outcomes.contains(&(expired.id, "retry".to_owned())));

    // The holder of the requeued task reports late: its outcome is taken (no newer attempt).
    let claimed = Task {
        attempts: 1,
        ..get(s, expired.id).await
    };
    let done = s
        .record(
            "w1",
            &[record(
                &claimed,
                TaskStatus::Succeeded,
                AttemptOutcome::Succeeded,
            )],
        )
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    let attempts = s.attempts(None, 10).await.unwrap();
    let expired_attempts: Vec<_> = attempts
        .iter()
        .filter(|a| a.task_id == expired.id)
        .collect();
    assert_eq!(expired_attempts.len(), 1);
    assert_eq!(expired_attempts[0].outcome, "succeeded");
}

#[tokio::test]
async fn dead_letters_and_unpublishing() {
    let fx = fresh().await;
    let s = &fx.store;
    let task = insert_one(s, new_task(None)).await;
    s.mark_published(&[task.id]).await.unwrap();
    assert!(get(s, task.id).await.published_at.is_some());
    assert_eq!(s.unpublish_queued(&[task.id]).await.unwrap(), 1);
    assert_eq!(s.unpublish_queued(&[task.id]).await.unwrap(), 0);

    s.mark_published(&[task.id]).await.unwrap();
    tick().await;
    assert!(s.stale_published_exists(Duration::ZERO).await.unwrap());
    assert!(!s.stale_published_exists(LEASE).await.unwrap());
    assert_eq!(s.unpublish_published(Some(LEASE), 10).await.unwrap(), 0);
    assert_eq!(s.unpublish_published(None, 10).await.unwrap(), 1);

    let failed = s
        .fail_dead_lettered(task.id, "delivery_limit")
        .await
        .unwrap();
    let failed = failed.expect("the task changed");
    assert_eq!(
        (failed.agent.as_str(), failed.status, failed.attempts),
        ("echo", TaskStatus::Failed, 0)
    );
    let stored = get(s, task.id).await;
    assert_eq!(stored.status, TaskStatus::Failed);
    assert!(stored.last_error.unwrap().contains("(delivery_limit)"));
    assert_eq!(s.fail_dead_lettered(task.id, "x").await.unwrap(), None);
}

#[tokio::test]
async fn take_due_skips_fresh_enqueues_and_respects_the_limit() {
    let fx = fresh().await;
    let s = &fx.store;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(insert_one(s, new_task(None)).await.id);
    }
    let delayed = insert_one(
        s,
        NewTask {
            delay_secs: 60,
            ..new_task(None)
        },
    )
    .await;
    tick().await;
    // Fresh: left to the API that accepted them.
    let batch = s.take_due(10, LEASE).await.unwrap();
    assert!(batch.ids().is_empty());
    drop(batch);

    let batch = s.take_due(2, Duration::ZERO).await.unwrap();
    assert_eq!(batch.ids(), &ids[..2]);
    // One relay at a time.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), s.take_due(2, Duration::ZERO))
            .await
            .is_err()
    );
    batch.commit(&ids[..1]).await.unwrap();
    let batch = s.take_due(10, Duration::ZERO).await.unwrap();
    assert_eq!(batch.ids(), &ids[1..]);
    assert!(!batch.ids().contains(&delayed.id));

    // A task claimed and sent back while the batch was out is not marked: it must be relayed.
    s.claim(&[ids[1]], "w1", LEASE).await.unwrap();
    s.release("w1", &[(ids[1], 1)]).await.unwrap();
    batch.commit(&ids[1..]).await.unwrap();
    assert_eq!(get(s, ids[1]).await.published_at, None);
    assert!(get(s, ids[2]).await.published_at.is_some());
    let batch = s.take_due(10, Duration::ZERO).await.unwrap();
    assert_eq!(batch.ids(), &ids[1..2]);
}

#[tokio::test]
async fn agents_workers_and_control() {
    let fx = fresh().await;
    let s = &fx.store;
    assert_eq!(s.engine(), "sqlite");
    assert!(s.ping(Duration::from_secs(1)).await);
    s.migrate().await.unwrap();

    let a = s
        .upsert_agent("echo", "http://127.0.0.1:1/run", &json!({"a": 1}))
        .await
        .unwrap();
    let b = s
        .upsert_agent("echo", "http://127.0.0.1:2/run", &json!({}))
        .await
        .unwrap();
    assert_eq!(a.created_at, b.created_at);
    assert_eq!(b.endpoint, "http://127.0.0.1:2/run");
    s.upsert_agent("alpha", "http://x/", &json!({}))
        .await
        .unwrap();
    assert_eq!(s.agent_names(10).await.unwrap(), ["alpha", "echo"]);
    assert_eq!(s.agents().await.unwrap().len(), 2);
    assert!(s.delete_agent("alpha").await.unwrap());
    assert!(!s.delete_agent("alpha").await.unwrap());
    assert!(s.agent("alpha").await.unwrap().is_none());
    assert_eq!(s.agent("echo").await.unwrap().unwrap().meta, json!({}));

    assert!(!s.paused().await.unwrap());
    assert!(s.set_paused(true, "test").await.unwrap());
    assert!(s.paused().await.unwrap());

    s.register_worker("w1", "host", "1.0").await.unwrap();
    s.heartbeat(&Heartbeat {
        worker_id: "w1",
        paused: true,
        in_flight: 3,
        processed: 7,
    })
    .await
    .unwrap();
    let workers = s.workers().await.unwrap();
    assert_eq!(
        (
            workers[0].in_flight,
            workers[0].processed,
            workers[0].paused
        ),
        (3, 7, true)
    );
    assert_eq!(s.live_workers().await.unwrap(), 1);
    s.mark_worker_stopped("w1").await.unwrap();
    assert_eq!(s.live_workers().await.unwrap(), 0);
    assert!(s.workers().await.unwrap()[0].stopped_at.is_some());

    assert_eq!(s.broker_epoch().await.unwrap(), None);
    let epoch = Uuid::now_v7();
    s.set_broker_epoch(epoch).await.unwrap();
    assert_eq!(s.broker_epoch().await.unwrap(), Some(epoch));

    let lock = s.try_lock(Exclusive::BrokerCheck).await.unwrap().unwrap();
    assert!(s.try_lock(Exclusive::BrokerCheck).await.unwrap().is_none());
    lock.release().await.unwrap();
    assert!(s.try_lock(Exclusive::BrokerCheck).await.unwrap().is_some());
}

#[tokio::test]
async fn a_second_open_of_the_directory_is_refused() {
    let fx = fresh().await;
    match SqliteStore::open(&fx.dir.0).await {
        Err(Error::Config(message)) => {
            assert!(
                message.contains("in use by another bgagent process"),
                "{message}"
            );
            assert!(
                message.contains(&format!("pid {}", std::process::id())),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(fx.store.path(), fx.dir.0.join("bgagent.db"));
}

#[tokio::test]
async fn reopening_stops_workers_and_unpublishes_queued_tasks() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0).await.unwrap();
    store.register_worker("w1", "host", "v").await.unwrap();
    let queued = insert_one(&store, new_task(None)).await;
    let running = insert_one(
        &store,
        NewTask {
            max_attempts: 1,
            ..new_task(None)
        },
    )
    .await;
    store
        .mark_published(&[queued.id, running.id])
        .await
        .unwrap();
    store.claim(&[running.id], "w1", LEASE).await.unwrap();
    store.close().await;
    drop(store);

    let store = SqliteStore::open(&dir.0).await.unwrap();
    assert!(store.workers().await.unwrap()[0].stopped_at.is_some());
    assert_eq!(get(&store, queued.id).await.published_at, None);
    // The killed process's task is recovered by the open itself, lease or not: it was on its
    // last attempt, so it fails, and nothing is left for the reaper.
    let lost = get(&store, running.id).await;
    assert_eq!(lost.status, TaskStatus::Failed);
    assert!(
        lost.last_error
            .as_deref()
            .is_some_and(|e| e.contains("worker lost")),
        "{lost:?}"
    );
    let reaped = store
        .reap(Duration::from_secs(30), far_future())
        .await
        .unwrap();
    assert!(reaped.is_empty(), "{reaped:?}");
    drop(store);
}

#[tokio::test]
async fn unreadable_json_reads_back_as_text() {
    let fx = fresh().await;
    let s = &fx.store;
    let task = insert_one(s, new_task(None)).await;
    let huge = format!(r#"{{"n": 1{}}}"#, "0".repeat(400));
    for text in ["{\"n\": 1", huge.as_str()] {
        sqlx::query("update tasks set meta = ?1, result = ?1 where id = ?2")
            .bind(text)
            .bind(task.id)
            .execute(&fx.store.writer)
            .await
            .unwrap();
        let stored = get(s, task.id).await;
        assert_eq!(stored.meta, Value::String(text.to_owned()));
        assert_eq!(stored.result, Some(Value::String(text.to_owned())));
        assert_eq!(
            s.tasks(&TaskFilter {
                limit: 10,
                full: true,
                ..Default::default()
            })
            .await
            .unwrap()[0]
                .meta,
            Value::String(text.to_owned())
        );
    }
}

/// Every batch statement finds its rows by key, driven by the batch: one that walked a whole
/// status instead (the planner's choice without statistics) cost 500 ms per batch of 256.
#[tokio::test]
async fn batch_statements_look_rows_up_by_key() {
    let fx = fresh().await;
    let statements = [
        ("INSERT", tasks::INSERT),
        ("BY_KEYS", tasks::BY_KEYS),
        ("MARK_PUBLISHED", tasks::MARK_PUBLISHED),
        ("CLAIM", runs::CLAIM),
        ("RECORD", runs::RECORD),
        ("RECORD_ATTEMPTS", runs::RECORD_ATTEMPTS),
        ("RELEASE", runs::RELEASE),
        ("RENEW", runs::RENEW),
        ("REAP_ATTEMPTS", runs::REAP_ATTEMPTS),
        ("UNPUBLISH_QUEUED", runs::UNPUBLISH_QUEUED),
        ("MARK_RELAYED", runs::MARK_RELAYED),
        ("PRUNE_TASKS", retention::PRUNE_TASKS),
    ];
    for (name, sql) in statements {
        let params = (1..10).filter(|n| sql.contains(&format!("?{n}"))).count();
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("explain query plan {sql}")));
        for _ in 0..params {
            query = query.bind(None::<i64>);
        }
        let plan: Vec<String> = query
            .fetch_all(&fx.store.readers)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("detail"))
            .collect();
        for step in &plan {
            let whole_status = step.starts_with("SEARCH tasks") && step.ends_with("(status=?)");
            assert!(
                !step.starts_with("SCAN tasks") && !whole_status,
                "{name}: {plan:?}"
            );
        }
    }
}

/// Not a pass/fail check: prints what the store sustains (`--nocapture` shows it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput() {
    const TASKS: usize = 20_000;
    let fx = fresh().await;
    let s = &fx.store;
    let tasks: Vec<NewTask> = (0..TASKS).map(|_| new_task(None)).collect();

    let start = Instant::now();
    for batch in tasks.chunks(500) {
        assert!(s.insert_tasks(batch).await.iter().all(Result::is_ok));
    }
    let inserted = start.elapsed();

    let ids: Vec<Uuid> = tasks.iter().map(|t| t.id).collect();
    let claim_start = Instant::now();
    let mut claimed = Vec::with_capacity(TASKS);
    for batch in ids.chunks(256) {
        claimed.extend(s.claim(batch, "w1", LEASE).await.unwrap());
    }
    let claimed_in = claim_start.elapsed();
    assert_eq!(claimed.len(), TASKS);

    let record_start = Instant::now();
    for batch in claimed.chunks(256) {
        let records: Vec<AttemptRecord> = batch
            .iter()
            .map(|t| record(t, TaskStatus::Succeeded, AttemptOutcome::Succeeded))
            .collect();
        assert_eq!(s.record("w1", &records).await.unwrap().len(), batch.len());
    }
    let recorded_in = record_start.elapsed();
    let total = start.elapsed();

    let rate = |d: Duration| TASKS as f64 / d.as_secs_f64();
    println!(
        "sqlite store, {TASKS} tasks: insert {:.0}/s (batches of 500), claim {:.0}/s, \
         record {:.0}/s (batches of 256); end to end {:.0} tasks/s ({:.2} s)",
        rate(inserted),
        rate(claimed_in),
        rate(recorded_in),
        rate(total),
        total.as_secs_f64()
    );

    // The pruner's batches, each one write transaction the hot path waits behind.
    tick().await;
    let mut slowest = Duration::ZERO;
    let prune_start = Instant::now();
    loop {
        let batch_start = Instant::now();
        let pruned = s
            .prune_tasks(TaskStatus::Succeeded, Duration::ZERO, 1000)
            .await
            .unwrap();
        slowest = slowest.max(batch_start.elapsed());
        if pruned.tasks < 1000 {
            break;
        }
    }
    let pruned_in = prune_start.elapsed();
    println!(
        "sqlite store, prune {TASKS} tasks and their attempts: {:.0} tasks/s in batches of 1000, \
         slowest batch {:.1} ms",
        rate(pruned_in),
        slowest.as_secs_f64() * 1000.0
    );
}

/// Finished tasks past their age go with their attempts, oldest first and a batch at a time;
/// queued and running tasks, younger ones and other statuses stay; keys are free again.
#[tokio::test]
async fn prune_deletes_finished_tasks_with_their_attempts() {
    let fx = fresh().await;
    let s = &fx.store;
    let tasks = insert(
        s,
        ["ok-1", "ok-2", "failed", "cancelled", "queued", "running"]
            .map(|key| new_task(Some(key)))
            .to_vec(),
    )
    .await;
    let [ok1, ok2, failed, cancelled, queued, running] = &tasks[..] else {
        unreachable!()
    };
    let claimed = s
        .claim(&[ok1.id, ok2.id, failed.id, running.id], "w1", LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    let by_id = |id: Uuid| claimed.iter().find(|t| t.id == id).unwrap();
    // ok-1 is retried once first: two attempt records.
    s.record(
        "w1",
        &[record(
            by_id(ok1.id),
            TaskStatus::Queued,
            AttemptOutcome::Retry,
        )],
    )
    .await
    .unwrap();
    let again = s.claim(&[ok1.id], "w1", LEASE).await.unwrap().remove(0);
    s.record(
        "w1",
        &[
            record(&again, TaskStatus::Succeeded, AttemptOutcome::Succeeded),
            record(
                by_id(ok2.id),
                TaskStatus::Succeeded,
                AttemptOutcome::Succeeded,
            ),
            record(by_id(failed.id), TaskStatus::Failed, AttemptOutcome::Failed),
        ],
    )
    .await
    .unwrap();
    assert!(matches!(
        s.cancel(cancelled.id).await.unwrap(),
        CancelOutcome::Cancelled(_)
    ));
    assert_eq!(s.attempts(None, 100).await.unwrap().len(), 4);
    tick().await;

    // Nothing finished an hour ago.
    let hour = Duration::from_secs(3600);
    for status in [
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ] {
        assert_eq!(
            s.prune_tasks(status, hour, 1000).await.unwrap(),
            Pruned::default()
        );
    }
    // Only finished statuses can be pruned.
    for status in [TaskStatus::Queued, TaskStatus::Running] {
        assert!(matches!(
            s.prune_tasks(status, Duration::ZERO, 1000).await,
            Err(Error::Invalid { .. })
        ));
    }

    // Batches of one, oldest finish first: ok-1 (finished first) with its two attempts.
    let first = s
        .prune_tasks(TaskStatus::Succeeded, Duration::ZERO, 1)
        .await
        .unwrap();
    assert_eq!(
        first,
        Pruned {
            tasks: 1,
            attempts: 2
        }
    );
    assert!(s.task(ok1.id).await.unwrap().is_none());
    assert!(s.task(ok2.id).await.unwrap().is_some());
    let rest = s
        .prune_tasks(TaskStatus::Succeeded, Duration::ZERO, 1)
        .await
        .unwrap();
    assert_eq!(
        rest,
        Pruned {
            tasks: 1,
            attempts: 1
        }
    );
    assert_eq!(
        s.prune_tasks(TaskStatus::Succeeded, Duration::ZERO, 1)
            .await
            .unwrap(),
        Pruned::default()
    );
    // The failed task's attempt stays until its own status is pruned.
    let left: Vec<Uuid> = s
        .attempts(None, 100)
        .await
        .unwrap()
        .iter()
        .map(|a| a.task_id)
        .collect();
    assert_eq!(left, [failed.id]);
    assert_eq!(
        s.prune_tasks(TaskStatus::Cancelled, Duration::ZERO, 1000)
            .await
            .unwrap(),
        Pruned {
            tasks: 1,
            attempts: 0
        }
    );
    assert_eq!(
        s.prune_tasks(TaskStatus::Failed, Duration::ZERO, 1000)
            .await
            .unwrap(),
        Pruned {
            tasks: 1,
            attempts: 1
        }
    );
    assert!(s.attempts(None, 100).await.unwrap().is_empty());
    assert_eq!(get(s, queued.id).await.status, TaskStatus::Queued);
    assert_eq!(get(s, running.id).await.status, TaskStatus::Running);

    // A pruned task's key is free again: the same key makes a new task.
    let reused = s
        .insert_tasks(&[new_task(Some("ok-1")), new_task(Some("queued"))])
        .await;
    let reused: Vec<_> = reused.into_iter().map(Result::unwrap).collect();
    assert!(reused[0].created && reused[0].task.id != ok1.id);
    assert!(!reused[1].created && reused[1].task.id == queued.id);
}

#[tokio::test]
async fn prune_removes_workers_gone_for_long() {
    let fx = fresh().await;
    let s = &fx.store;
    for id in ["gone", "stopped-long-ago", "stopped-now", "live"] {
        s.register_worker(id, "host", "v").await.unwrap();
    }
    s.mark_worker_stopped("stopped-long-ago").await.unwrap();
    s.mark_worker_stopped("stopped-now").await.unwrap();
    let two_days_ago = super::rows::now() - 2 * 86_400 * 1_000_000;
    sqlx::query("update workers set last_seen = ?1 where id in ('gone', 'stopped-long-ago')")
        .bind(two_days_ago)
        .execute(&fx.store.writer)
        .await
        .unwrap();
    let day = Duration::from_secs(86_400);
    assert_eq!(s.prune_workers(day, 1).await.unwrap(), 1);
    assert_eq!(s.prune_workers(day, 1000).await.unwrap(), 1);
    assert_eq!(s.prune_workers(day, 1000).await.unwrap(), 0);
    let mut left: Vec<String> = sqlx::query_scalar("select id from workers")
        .fetch_all(&fx.store.readers)
        .await
        .unwrap();
    left.sort();
    assert_eq!(left, ["live", "stopped-now"]);

    // One pruner at a time, beside (not instead of) the broker check.
    let lock = s.try_lock(Exclusive::Prune).await.unwrap().unwrap();
    assert!(s.try_lock(Exclusive::Prune).await.unwrap().is_none());
    assert!(s.try_lock(Exclusive::BrokerCheck).await.unwrap().is_some());
    lock.release().await.unwrap();
    assert!(s.try_lock(Exclusive::Prune).await.unwrap().is_some());
}

/// The pruner's statement finds its rows through the partial index of finished tasks, never by
/// walking the table or a whole status.
#[tokio::test]
async fn prune_uses_the_finished_index() {
    let fx = fresh().await;
    let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "explain query plan {}",
        retention::PRUNE_TASKS
    )))
    .bind("succeeded")
    .bind(0_i64)
    .bind(1000_i64)
    .fetch_all(&fx.store.readers)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get("detail"))
    .collect();
    assert!(
        plan.iter()
            .any(|step| step.contains("USING INDEX tasks_finished_idx")),
        "{plan:?}"
    );
}

#[tokio::test]
async fn every_list_filter_walks_its_index_and_summaries_leave_out_meta_and_result() {
    let f = fresh().await;
    let s = &f.store;
    let task = new_task(None);
    s.insert_tasks(std::slice::from_ref(&task)).await[0]
        .as_ref()
        .unwrap();
    let listed = s
        .tasks(&TaskFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((listed[0].id, &listed[0].meta), (task.id, &Value::Null));
    let full = s
        .tasks(&TaskFilter {
            limit: 10,
            full: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(full[0].meta, json!({"n": 1}));

    // The plan SQLite chooses for each statement (no filter, status, agent, agent and status):
    // an index that returns the page in order, never a scan of the table and no sort.
    let expected = [
        ("sqlite_autoindex_tasks_1", vec![]),
        ("tasks_status_id_idx", vec!["queued"]),
        ("tasks_agent_id_idx", vec!["echo"]),
        ("tasks_agent_status_id_idx", vec!["echo", "queued"]),
    ];
    for statements in [&tasks::LIST_SUMMARY, &tasks::LIST_FULL] {
        for (sql, (index, filters)) in statements.iter().zip(&expected) {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("explain query plan {sql}")));
            for value in filters {
                query = query.bind(*value);
            }
            let plan: Vec<String> = query
                .bind(vec![0xffu8; 17])
                .bind(50)
                .fetch_all(&s.readers)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>("detail"))
                .collect();
            let plan = plan.join("; ");
            assert!(plan.contains(index), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql} sorts: {plan}");
            assert!(!plan.starts_with("SCAN tasks"), "{sql} scans: {plan}");
        }
    }
}
