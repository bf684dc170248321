//! Messages that carry several task ids (`BGAGENT_TASKS_PER_MESSAGE`, 64 by default): every task
//! runs once, a pause hands back the tasks not started, a dead-lettered message does not fail its
//! tasks together, the API groups the tasks it enqueues together (or not, at 1), and a worker's
//! prefetch counts tasks, not messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::TestEnv;
use bgagent_shared::queue::rabbit::Publisher;
use bgagent_worker::WorkerOptions;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn publisher(env: &TestEnv) -> Publisher {
    Publisher::new(&env.broker_config(), "bgagent-test").unwrap()
}

/// Status and attempts of each task, in the order of `ids`.
async fn states(env: &TestEnv, ids: &[Uuid]) -> Vec<(String, i32)> {
    let mut rows: Vec<(Uuid, String, i32)> =
        sqlx::query_as("select id, status, attempts from tasks where id = any($1)")
            .bind(ids)
            .fetch_all(env.db())
            .await
            .unwrap();
    rows.sort_by_key(|(id, ..)| ids.iter().position(|i| i == id));
    rows.into_iter().map(|(_, s, a)| (s, a)).collect()
}

/// How many of `ids` have `status`.
async fn count(env: &TestEnv, ids: &[Uuid], status: &str) -> usize {
    states(env, ids)
        .await
        .iter()
        .filter(|(s, _)| s == status)
        .count()
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_of_shared_messages_runs_once_even_beyond_the_worker_concurrency() {
    let env = TestEnv::new().await;
    let ids = env
        .insert_tasks("echo", "shared", json!({}), 40, true)
        .await;
    let publisher = publisher(&env);
    assert_eq!(publisher.publish_tasks(&ids, 16).await.unwrap().len(), 40);
    assert_eq!(
        publisher.queue_depths().await.unwrap(),
        (3, 0),
        "40 tasks in messages of 16"
    );

    let worker = env
        .spawn_worker(WorkerOptions {
            concurrency: 4,
            prefetch: 4,
            ..env.worker_options()
        })
        .await;
    env.wait_all_terminal(WAIT).await;
    assert_eq!(states(&env, &ids).await, vec![("succeeded".into(), 1); 40]);
    worker.stop().await;
    // Every message was acked: nothing came back to the queue when the worker left.
    assert_eq!(publisher.queue_depths().await.unwrap(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_hands_back_the_tasks_of_a_shared_message_that_had_not_started() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let worker = env
        .spawn_worker(WorkerOptions {
            concurrency: 2,
            ..env.worker_options()
        })
        .await;
    let ids = env
        .insert_tasks("sleep", "shared", json!({"ms": 1000}), 6, true)
        .await;
    publisher(&env).publish_tasks(&ids, 6).await.unwrap();
    wait_for("two tasks running", async || {
        count(&env, &ids, "running").await == 2
    })
    .await;

    api.post("/stop", &json!({})).await;
    // The two running tasks finish; the four others never start and keep every attempt.
    wait_for("the running tasks finish", async || {
        count(&env, &ids, "succeeded").await == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held: Vec<_> = states(&env, &ids)
        .await
        .into_iter()
        .filter(|(s, _)| s != "succeeded")
        .collect();
    assert_eq!(held, vec![("queued".into(), 0); 4]);

    api.post("/start", &json!({})).await;
    env.wait_all_terminal(WAIT).await;
    assert_eq!(states(&env, &ids).await, vec![("succeeded".into(), 1); 6]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_shared_message_sends_its_tasks_again_one_by_one() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    // Paused: the worker consumes no tasks, but watches the dead-letter events and relays.
    api.post("/stop", &json!({})).await;
    let worker = env.spawn_worker(env.worker_options()).await;
    let ids = env.insert_tasks("echo", "shared", json!({}), 3, true).await;
    let publisher = publisher(&env);
    publisher.publish_tasks(&ids, 3).await.unwrap();

    // Play a consumer that crashes before acknowledging, until the broker dead-letters it.
    let deliveries = env.nack_until_dead_lettered().await;
    assert!(deliveries > 1, "the message was redelivered: {deliveries}");

    // Not failed together: each task is published again in a message of its own.
    wait_for("three single-task messages", async || {
        publisher.queue_depths().await.unwrap().0 == 3
    })
    .await;
    assert_eq!(states(&env, &ids).await, vec![("queued".into(), 0); 3]);
    api.post("/start", &json!({})).await;
    env.wait_all_terminal(WAIT).await;
    assert_eq!(states(&env, &ids).await, vec![("succeeded".into(), 1); 3]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_puts_tasks_enqueued_together_in_shared_messages() {
    let env = TestEnv::new().await;
    let mut config = env.api_config();
    config.broker.tasks_per_message = 64;
    config.enqueue_loops = 1;
    let api = crate::common::TestApi::spawn(config).await;
    let tasks = futures_util::future::join_all((0..50).map(|i| {
        let api = &api;
        async move {
            api.enqueue(&json!({"agent": "echo", "command": format!("together {i}")}))
                .await
        }
    }))
    .await;
    let ids: Vec<Uuid> = tasks
        .iter()
        .map(|t| Uuid::parse_str(t["id"].as_str().unwrap()).unwrap())
        .collect();
    wait_for("every task published", async || {
        let published: i64 =
            sqlx::query_scalar("select count(*) from tasks where published_at is not null")
                .fetch_one(env.db())
                .await
                .unwrap();
        published == 50
    })
    .await;
    let depth = publisher(&env).queue_depths().await.unwrap().0;
    assert!(
        depth > 0 && depth < 50,
        "50 concurrent enqueues share messages: {depth} messages"
    );

    let worker = env.spawn_worker(env.worker_options()).await;
    env.wait_all_terminal(WAIT).await;
    assert_eq!(states(&env, &ids).await, vec![("succeeded".into(), 1); 50]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_task_per_message_when_grouping_is_set_to_one() {
    let env = TestEnv::new().await;
    let mut config = env.api_config();
    config.broker.tasks_per_message = 1;
    config.enqueue_loops = 1;
    let api = crate::common::TestApi::spawn(config).await;
    futures_util::future::join_all((0..30).map(|i| {
        let api = &api;
        async move {
            api.enqueue(&json!({"agent": "echo", "command": format!("alone {i}")}))
                .await
        }
    }))
    .await;
    wait_for("thirty messages", async || {
        publisher(&env).queue_depths().await.unwrap().0 == 30
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_prefetches_tasks_not_messages() {
    let env = TestEnv::new().await;
    let ids = env
        .insert_tasks("sleep", "held", json!({"ms": 400}), 40, true)
        .await;
    let publisher = publisher(&env);
    assert_eq!(publisher.publish_tasks(&ids, 8).await.unwrap().len(), 40);
    // Room for one running task and 8 waiting ones: one message of 8, since a message may hold up
    // to 64. Counted in messages, the broker would hand this worker all five.
    let worker = env
        .spawn_worker(WorkerOptions {
            concurrency: 1,
            prefetch: 8,
            ..env.worker_options()
        })
        .await;
    wait_for("a task running", async || {
        count(&env, &ids, "running").await == 1
    })
    .await;
    // The first message stays with the worker until its eighth task is claimed (over 2 s).
    assert_eq!(publisher.queue_depths().await.unwrap().0, 4);
    worker.stop().await;
}
