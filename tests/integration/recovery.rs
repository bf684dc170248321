//! Recovery of tasks whose worker died (found by the fault suite, tests/faults), on both engines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use bgagent_shared::domain::TaskStatus;
use bgagent_worker::WorkerOptions;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

both_engines! {
    /// A worker that died holding a task (killed: no record, no hand-back) loses it once its lease
    /// expires: the reaper of a live worker hands it back and it runs again, the lost attempt
    /// counted.
    async fn a_lost_workers_task_runs_again_on_another_worker(env: TestEnv) {
        let api = env.spawn_api().await;
        let task = api
            .enqueue(&json!({"agent": "echo", "command": "orphan"}))
            .await;
        let id = Uuid::parse_str(task["id"].as_str().unwrap()).unwrap();
        env.claim_as_dead_worker("w-dead", &[id], Duration::from_secs(2))
            .await;
        assert_eq!(env.task_now(id).await.status, TaskStatus::Running);

        // A short lease of its own: the reaper judges leases once its view has been current for
        // one lease period.
        let worker = env
            .spawn_worker(WorkerOptions {
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
        let attempts = env.attempts_of(id).await;
        let seen: Vec<(i32, &str)> = attempts
            .iter()
            .map(|a| (a.attempt, a.outcome.as_str()))
            .collect();
        assert_eq!(seen, [(1, "retry"), (2, "succeeded")]);
        assert_eq!(attempts[1].worker_id.as_deref(), Some(worker.id.as_str()));
        worker.stop().await;
    }
}

both_engines! {
    /// A worker that crashed holding a task and was restarted with the same `BGAGENT_WORKER_ID`
    /// must not keep renewing the dead incarnation's lease: the task would stay `running` forever.
    /// The lease has to expire so the reaper hands the task back and it runs again.
    async fn a_worker_restarted_with_the_same_id_lets_orphaned_leases_expire(env: TestEnv) {
        let api = env.spawn_api().await;
        let task = api
            .enqueue(&json!({"agent": "echo", "command": "orphan"}))
            .await;
        let id = Uuid::parse_str(task["id"].as_str().unwrap()).unwrap();

        // The previous incarnation of "w-same" claimed the task, then died (SIGKILL): the row says
        // running under its id with a lease, and its message was acknowledged by nobody that cares.
        env.claim_as_dead_worker("w-same", &[id], Duration::from_secs(3))
            .await;

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
        let attempts: Vec<(i32, String)> = env
            .attempts_of(id)
            .await
            .into_iter()
            .map(|a| (a.attempt, a.outcome))
            .collect();
        assert_eq!(
            attempts,
            vec![(1, "retry".to_owned()), (2, "succeeded".to_owned())]
        );
        worker.stop().await;
    }
}

both_engines! {
    /// A task a worker claimed and then handed back on shutdown (attempts back to 0, unpublished)
    /// must not be marked published by a publish confirmation that arrives late: its first message
    /// is gone, so only the relay can publish it again, and a mark would leave it queued forever.
    async fn a_late_publish_mark_leaves_a_handed_back_task_to_the_relay(env: TestEnv) {
        let id = env
            .insert_tasks("echo", "handed back", json!({}), 1, false)
            .await[0];
        let claimed = env
            .store
            .claim(&[id], "w-stopping", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let released = env.store.release("w-stopping", &[(id, 1)]).await.unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].status, bgagent_shared::domain::TaskStatus::Queued);
        assert_eq!(released[0].attempts, 0, "the interrupted attempt is not counted");

        let marked = env.store.mark_published(&[id]).await.unwrap();
        assert_eq!(marked, 0, "a claimed task's first message is spent");
        let due = env.store.take_due(10, Duration::ZERO).await.unwrap();
        assert_eq!(
            due.ids(),
            [id],
            "the relay publishes the handed-back task"
        );
        // Let it go unpublished (as a relay whose publish failed).
        due.commit(&[]).await.unwrap();

        // A task never claimed is marked, and the relay leaves it alone.
        let fresh = env.insert_tasks("echo", "fresh", json!({}), 1, false).await[0];
        assert_eq!(env.store.mark_published(&[fresh]).await.unwrap(), 1);
        let due = env.store.take_due(10, Duration::ZERO).await.unwrap();
        assert_eq!(due.ids(), [id]);
        due.commit(&[]).await.unwrap();
    }
}
