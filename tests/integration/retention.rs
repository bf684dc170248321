//! Retention: the pruner deletes finished tasks past `BGAGENT_RETAIN_*` with their attempts
//! (a pruned task answers 404 and its idempotency key is free again), never touches queued or
//! running tasks, keeps a status whose retention is `off`, and removes the rows of workers gone
//! for a day.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use crate::common::{TestApi, TestEnv};
use bgagent_shared::domain::TaskStatus;
use bgagent_shared::store::Exclusive;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

/// Poll `check` every 100 ms until it holds, or panic after `timeout` with `what`.
async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn id_of(task: &Value) -> Uuid {
    task["id"].as_str().unwrap().parse().unwrap()
}

/// The value of `bgagent_pruned_rows_total{kind="…"}` in a worker's exposition.
async fn pruned(api: &TestApi, metrics: &str, kind: &str) -> u64 {
    let text = api.text(metrics).await;
    let series = format!("bgagent_pruned_rows_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn attempts_of(env: &TestEnv, id: Uuid) -> usize {
    env.store
        .attempts(None, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.task_id == id)
        .count()
}

both_engines! {
    async fn finished_tasks_go_after_their_retention(env: TestEnv) {
        let api = env.spawn_api().await;
        let mut options = env.worker_options();
        options.metrics_bind = Some("127.0.0.1:0".parse().unwrap());
        options.retention.retain_succeeded = Some(Duration::from_secs(1));
        options.retention.retain_cancelled = Some(Duration::from_secs(1));
        options.retention.retain_failed = None;
        options.retention.prune_interval = Some(Duration::from_millis(200));
        let worker = env.spawn_worker(options).await;
        let metrics = format!("http://{}/metrics", worker.metrics_addr.unwrap());

        let succeeded = api
            .enqueue(&json!({"agent": "echo", "command": "x", "idempotency_key": "order-42"}))
            .await;
        let failed = api
            .enqueue(&json!({"agent": "fail", "command": "x", "max_attempts": 2}))
            .await;
        let later = api
            .enqueue(&json!({"agent": "echo", "command": "later", "delay_secs": 3600}))
            .await;
        let cancelled = api
            .enqueue(&json!({"agent": "echo", "command": "cancel me", "delay_secs": 3600}))
            .await;
        let running = api
            .enqueue(&json!({"agent": "sleep", "command": "x", "meta": {"ms": 60000}}))
            .await;
        let (status, _) = api
            .post(&format!("/tasks/{}/cancel", id_of(&cancelled)), &json!({}))
            .await;
        assert_eq!(status, StatusCode::OK);
        let failed_id = id_of(&failed);
        env.wait_task(failed_id, Duration::from_secs(20), |t| {
            t.status == TaskStatus::Failed
        })
        .await;
        env.wait_task(id_of(&running), Duration::from_secs(20), |t| {
            t.status == TaskStatus::Running
        })
        .await;
        assert_eq!(attempts_of(&env, id_of(&succeeded)).await, 1);

        // The succeeded and cancelled tasks answer 404 once their second has passed.
        for task in [&succeeded, &cancelled] {
            let path = format!("/tasks/{}", id_of(task));
            wait_for(Duration::from_secs(20), &format!("{path} pruned"), || async {
                api.get(&path).await.0 == StatusCode::NOT_FOUND
            })
            .await;
        }
        assert_eq!(attempts_of(&env, id_of(&succeeded)).await, 0);

        // Failed tasks are kept (`off`) with their attempts; queued and running ones untouched.
        let (status, kept) = api.get(&format!("/tasks/{failed_id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(kept["status"], "failed");
        assert_eq!(attempts_of(&env, failed_id).await, 2);
        for (task, status) in [(&later, "queued"), (&running, "running")] {
            let (code, body) = api.get(&format!("/tasks/{}", id_of(task))).await;
            assert_eq!((code, body["status"].as_str()), (StatusCode::OK, Some(status)));
        }

        // The key is free again: the same key makes a new task.
        let (status, again) = api
            .post(
                "/enqueue",
                &json!({"agent": "echo", "command": "x", "idempotency_key": "order-42"}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{again}");
        assert_ne!(id_of(&again), id_of(&succeeded));

        assert!(pruned(&api, &metrics, "tasks").await >= 2);
        assert!(pruned(&api, &metrics, "attempts").await >= 1);
        assert_eq!(pruned(&api, &metrics, "workers").await, 0);
        worker.stop().await;
    }
}

both_engines! {
    async fn one_pruner_at_a_time(env: TestEnv) {
        let lock = env.store.try_lock(Exclusive::Prune).await.unwrap().unwrap();
        assert!(env.store.try_lock(Exclusive::Prune).await.unwrap().is_none());
        // Pruning and the broker check do not wait for each other.
        let broker_check = env.store.try_lock(Exclusive::BrokerCheck).await.unwrap();
        assert!(broker_check.is_some());
        lock.release().await.unwrap();
        assert!(env.store.try_lock(Exclusive::Prune).await.unwrap().is_some());
    }
}

/// Worker rows of processes gone for a day are deleted; a live worker's row stays. (The embedded
/// engine's statement is tested in its store tests: this needs to age rows by hand.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_gone_for_a_day_are_pruned() {
    let env = TestEnv::new().await;
    sqlx::query(
        "insert into workers (id, host, version, last_seen, stopped_at) values
             ('crashed', 'h', 'v', now() - interval '25 hours', null),
             ('stopped', 'h', 'v', now() - interval '2 days', now() - interval '2 days'),
             ('stopped-lately', 'h', 'v', now() - interval '1 hour', now() - interval '1 hour')",
    )
    .execute(env.db())
    .await
    .unwrap();
    let api = env.spawn_api().await;
    let mut options = env.worker_options();
    options.metrics_bind = Some("127.0.0.1:0".parse().unwrap());
    options.retention.prune_interval = Some(Duration::from_millis(200));
    let worker = env.spawn_worker(options).await;
    let metrics = format!("http://{}/metrics", worker.metrics_addr.unwrap());
    let ids = || async {
        let mut ids: Vec<String> = sqlx::query_scalar("select id from workers")
            .fetch_all(env.db())
            .await
            .unwrap();
        ids.sort();
        ids
    };
    wait_for(Duration::from_secs(20), "gone workers pruned", || async {
        ids().await.len() == 2
    })
    .await;
    let mut expected = vec!["stopped-lately".to_owned(), worker.id.clone()];
    expected.sort();
    assert_eq!(ids().await, expected);
    assert_eq!(pruned(&api, &metrics, "workers").await, 2);
    worker.stop().await;
}

/// The pruner's statement reads only the rows it deletes: the partial index of finished tasks
/// and the attempts' key, never a scan, with the planner free to choose (seq scans allowed) on
/// a table holding many tasks of every status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prune_statement_uses_the_finished_index() {
    let env = TestEnv::new().await;
    let mut conn = env.db().acquire().await.unwrap();
    sqlx::query(
        "insert into tasks (id, agent, command, status, finished_at)
         select gen_random_uuid(), 'echo', 'x',
                (array['queued', 'running', 'succeeded', 'failed', 'cancelled'])[1 + n % 5],
                case when n % 5 >= 2 then now() - make_interval(secs => n) end
         from generate_series(1, 50000) as n",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "insert into task_attempts (task_id, attempt, agent, outcome, started_at)
         select id, 1, agent, 'succeeded', now() from tasks",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    for sql in [
        "analyze tasks",
        "analyze task_attempts",
        "set enable_seqscan = on",
    ] {
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    }
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "explain {}",
        bgagent_shared::db::retention::PRUNE_TASKS
    )))
    .bind("succeeded")
    .bind(60.0_f64)
    .bind(1000_i64)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("tasks_finished_idx"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}
