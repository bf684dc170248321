//! Recovery of tasks whose worker died, found by the fault suite (tests/faults).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::TestEnv;
use bgagent_shared::db;
use bgagent_shared::domain::TaskStatus;
use bgagent_worker::WorkerOptions;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

/// A worker that crashed holding a task and was restarted with the same `BGAGENT_WORKER_ID`
/// must not keep renewing the dead incarnation's lease: the task would stay `running` forever.
/// The lease has to expire so the reaper hands the task back and it runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_with_the_same_id_lets_orphaned_leases_expire() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let task = api
        .enqueue(&json!({"agent": "echo", "command": "orphan"}))
        .await;
    let id = Uuid::parse_str(task["id"].as_str().unwrap()).unwrap();

    // The previous incarnation of "w-same" claimed the task, then died (SIGKILL): the row says
    // running under its id with a lease, and its message was acknowledged by nobody that cares.
    sqlx::query("insert into workers (id, host, version) values ('w-same', 'test', 'test')")
        .execute(env.db())
        .await
        .unwrap();
    sqlx::query(
        "update tasks set status = 'running', attempts = 1, worker_id = 'w-same',
                started_at = now(), lease_until = now() + interval '3 seconds'
         where id = $1",
    )
    .bind(id)
    .execute(env.db())
    .await
    .unwrap();

    let worker = env
        .spawn_worker(WorkerOptions {
            worker_id: Some("w-same".into()),
            lease_secs: 3,
            ..env.worker_options()
        })
        .await;
    let done = env
        .wait_task(id, Duration::from_secs(30), |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    assert_eq!(
        done.attempts, 2,
        "the lost attempt counts, the task ran again"
    );
    let attempts: Vec<(i32, String)> = sqlx::query_as(
        "select attempt, outcome from task_attempts where task_id = $1 order by attempt",
    )
    .bind(id)
    .fetch_all(env.db())
    .await
    .unwrap();
    assert_eq!(
        attempts,
        vec![(1, "retry".to_owned()), (2, "succeeded".to_owned())]
    );
    worker.stop().await;
}

/// A task a worker claimed and then handed back on shutdown (attempts back to 0, unpublished) must
/// not be marked published by a publish confirmation that arrives late: its first message is gone,
/// so only the relay can publish it again, and a mark would leave it queued forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_publish_mark_leaves_a_handed_back_task_to_the_relay() {
    let env = TestEnv::new().await;
    let id = env
        .insert_tasks("echo", "handed back", json!({}), 1, false)
        .await[0];
    let claimed = db::runs::claim(env.db(), &[id], "w-stopping", 30)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let released = db::runs::release(env.db(), "w-stopping", &[(id, 1)])
        .await
        .unwrap();
    assert_eq!(released, 1);

    let marked = db::tasks::mark_published(env.db(), &[id]).await.unwrap();
    assert_eq!(marked, 0, "a claimed task's first message is spent");
    let mut tx = env.db().begin().await.unwrap();
    let relayed = db::runs::lock_unpublished(&mut tx, 10, 0.0).await.unwrap();
    assert_eq!(
        relayed,
        vec![id],
        "the relay publishes the handed-back task"
    );
    tx.rollback().await.unwrap();

    // A task never claimed is marked, and the relay leaves it alone.
    let fresh = env.insert_tasks("echo", "fresh", json!({}), 1, false).await[0];
    assert_eq!(
        db::tasks::mark_published(env.db(), &[fresh]).await.unwrap(),
        1
    );
    let mut tx = env.db().begin().await.unwrap();
    let relayed = db::runs::lock_unpublished(&mut tx, 10, 0.0).await.unwrap();
    assert_eq!(relayed, vec![id]);
}
