//! Faults of the broker beyond an outage: it lost its data, the tasks queue was purged or
//! deleted, the delivery limit changed between starts, a worker froze holding prefetched tasks.
//! Every queued task must still run without a human.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{TestApi, TestEnv};
use bgagent_shared::config::BrokerConfig;
use bgagent_shared::queue::rabbit::{self as broker, Publisher};
use bgagent_worker::{Worker, WorkerConfig, WorkerOptions};
use lapin::options::{QueueDeleteOptions, QueuePurgeOptions};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(40);
const TASKS: usize = 50;

fn publisher(env: &TestEnv) -> Publisher {
    Publisher::new(&env.broker_config(), "bgagent-test").unwrap()
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs of the in-process API and worker on stderr with `DEBUG_LOG=1` (and `--no-capture`).
fn debug_log() {
    if std::env::var_os("DEBUG_LOG").is_some() {
        bgagent_shared::telemetry::init(bgagent_shared::telemetry::LogFormat::Pretty);
    }
}

/// Pause the fleet and wait until every worker says it is paused (its consumer is cancelled), so
/// what is enqueued next stays ready in the queue.
async fn pause(env: &TestEnv, api: &TestApi) {
    api.post("/stop", &json!({})).await;
    wait_for("every worker paused", WAIT, async || {
        let running: i64 = sqlx::query_scalar(
            "select count(*) from workers where stopped_at is null and not paused",
        )
        .fetch_one(env.db())
        .await
        .unwrap();
        running == 0
    })
    .await;
}

async fn count(env: &TestEnv, ids: &[Uuid], status: &str) -> usize {
    let n: i64 =
        sqlx::query_scalar("select count(*) from tasks where id = any($1) and status = $2")
            .bind(ids)
            .bind(status)
            .fetch_one(env.db())
            .await
            .unwrap();
    usize::try_from(n).unwrap()
}

/// How many of `ids` are marked published.
async fn published(env: &TestEnv, ids: &[Uuid]) -> usize {
    let n: i64 = sqlx::query_scalar(
        "select count(*) from tasks where id = any($1) and published_at is not null",
    )
    .bind(ids)
    .fetch_one(env.db())
    .await
    .unwrap();
    usize::try_from(n).unwrap()
}

/// What happens to the broker while the fleet is paused with every task published.
enum Loss {
    /// The broker lost its data: every queue is gone, the epoch marker with them.
    Data,
    /// The tasks queue was purged; the epoch marker survives.
    Purge,
    /// The tasks queue was deleted; the epoch marker survives.
    DeleteQueue,
}

/// Pause, enqueue through the API (published), make the broker lose the messages, resume: every
/// task must run, with the republished ones counted.
async fn tasks_survive(loss: Loss, check_secs: u64) {
    debug_log();
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let worker = env
        .spawn_worker(WorkerOptions {
            broker_check_secs: check_secs,
            metrics_bind: Some("127.0.0.1:0".parse().unwrap()),
            ..env.worker_options()
        })
        .await;
    wait_for("the first epoch marker", WAIT, async || {
        bgagent_shared::db::runs::broker_epoch(env.db())
            .await
            .unwrap()
            .is_some()
    })
    .await;
    pause(&env, &api).await;
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let task = api
            .enqueue(&json!({"agent": "echo", "command": format!("t{i}")}))
            .await;
        ids.push(task["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    // The API marks rows published a moment after the broker's confirm.
    wait_for("every task marked published", WAIT, async || {
        published(&env, &ids).await == TASKS
    })
    .await;

    let conn = env.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    let topology = env.topology();
    match loss {
        Loss::Data => {
            for queue in [topology.tasks_queue(), topology.epoch_queue()] {
                ch.queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await
                    .unwrap();
            }
        }
        Loss::Purge => {
            ch.queue_purge(topology.tasks_queue().into(), QueuePurgeOptions::default())
                .await
                .unwrap();
        }
        Loss::DeleteQueue => {
            ch.queue_delete(topology.tasks_queue().into(), QueueDeleteOptions::default())
                .await
                .unwrap();
        }
    }
    conn.close(200, "done".into()).await.ok();
    let resumed = Instant::now();
    api.post("/start", &json!({})).await;

    wait_for("every task succeeded", WAIT, async || {
        count(&env, &ids, "succeeded").await == TASKS
    })
    .await;
    let took = resumed.elapsed();
    let metrics = api
        .text(&format!("http://{}/metrics", worker.metrics_addr.unwrap()))
        .await;
    let republished: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bgagent_tasks_republished_total "))
        .expect("republished metric")
        .parse()
        .unwrap();
    assert!(
        republished >= TASKS as u64,
        "{republished} tasks counted as republished"
    );
    eprintln!("all {TASKS} tasks ran {took:?} after the resume");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_its_data_gets_every_queued_task_published_again() {
    // The periodic check is far away: the new broker session alone must notice.
    tasks_survive(Loss::Data, 600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_tasks_queue_gets_its_queued_tasks_published_again() {
    tasks_survive(Loss::Purge, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tasks_queue_gets_its_queued_tasks_published_again() {
    tasks_survive(Loss::DeleteQueue, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_backlog_is_not_published_again() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let worker = env
        .spawn_worker(WorkerOptions {
            broker_check_secs: 1,
            metrics_bind: Some("127.0.0.1:0".parse().unwrap()),
            ..env.worker_options()
        })
        .await;
    pause(&env, &api).await;
    for i in 0..10 {
        api.enqueue(&json!({"agent": "echo", "command": format!("t{i}")}))
            .await;
    }
    // Paused, the messages wait ready in the queue (tasks enqueued close together may share
    // one). Watched for a while on purpose (past the staleness of 2 s and several checks):
    // nothing may be sent again meanwhile.
    let publisher = publisher(&env);
    wait_for("every task marked published", WAIT, async || {
        let n: i64 =
            sqlx::query_scalar("select count(*) from tasks where published_at is not null")
                .fetch_one(env.db())
                .await
                .unwrap();
        n == 10
    })
    .await;
    let messages = publisher.queue_depths().await.unwrap().0;
    assert!((1..=10).contains(&messages), "{messages} messages");
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(publisher.queue_depths().await.unwrap().0, messages);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = api
        .text(&format!("http://{}/metrics", worker.metrics_addr.unwrap()))
        .await;
    assert!(
        metrics.contains("bgagent_tasks_republished_total 0"),
        "{metrics}"
    );
    worker.stop().await;
}

/// A worker or API started with another `BGAGENT_DELIVERY_LIMIT` than the one the tasks queue
/// was declared with keeps working (RabbitMQ refuses the re-declaration: PRECONDITION_FAILED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_delivery_limit_does_not_stop_the_deployment() {
    debug_log();
    let env = TestEnv::new().await;
    let conn = env.amqp().await;
    broker::declare(&conn, &broker::Topology::new(&env.prefix, 20))
        .await
        .unwrap();
    conn.close(200, "done".into()).await.ok();

    let broker = BrokerConfig {
        delivery_limit: 5,
        ..env.broker_config()
    };
    let mut api_config = env.api_config();
    api_config.broker = broker.clone();
    let api = TestApi::spawn(api_config).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let task = api
            .enqueue(&json!({"agent": "echo", "command": format!("t{i}")}))
            .await;
        ids.push(task["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    // No worker yet: the API's own channel published them (the relay would leave them unmarked).
    wait_for("the API published every task", WAIT, async || {
        published(&env, &ids).await == 5
    })
    .await;

    let worker = Worker::build(&WorkerConfig {
        database: env.database_config(),
        broker,
        options: env.worker_options(),
        egress: Default::default(),
    })
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until_stopped(stop.clone()));
    wait_for("every task succeeded", WAIT, async || {
        count(&env, &ids, "succeeded").await == ids.len()
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// A frozen worker (SIGSTOP) holding prefetched tasks it has not started loses them to an idle
/// worker within a few AMQP heartbeats: RabbitMQ closes its connection and requeues them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_gives_up_its_prefetched_tasks_within_the_heartbeat_bound() {
    let env = TestEnv::new().await;
    // One task per message, so the frozen worker's prefetch of 64 tasks is 64 messages: every
    // one of the 20 enqueued below.
    let mut config = env.api_config();
    config.broker.tasks_per_message = 1;
    let api = env.spawn_api_with(config).await;
    let mut frozen = env.spawn_worker_process(&[
        ("BGAGENT_WORKER_ID", "frozen"),
        ("BGAGENT_TASKS_PER_MESSAGE", "1"),
        ("BGAGENT_CONCURRENCY", "1"),
        ("BGAGENT_PREFETCH", "64"),
        ("BGAGENT_AMQP_HEARTBEAT_SECS", "2"),
        // Its running task must not come back through the lease within the test.
        ("BGAGENT_LEASE_SECS", "120"),
    ]);
    let long = api
        .enqueue(&json!({"agent": "sleep", "command": "hold", "meta": {"ms": 120_000}}))
        .await;
    let long: Uuid = long["id"].as_str().unwrap().parse().unwrap();
    env.wait_task(long, WAIT, |t| {
        t.status == bgagent_shared::domain::TaskStatus::Running
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let task = api
            .enqueue(&json!({"agent": "echo", "command": format!("t{i}")}))
            .await;
        ids.push(task["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    // Its only slot is busy: the broker pushed the 20 messages into its prefetch window.
    let publisher = publisher(&env);
    wait_for("the frozen worker holds every message", WAIT, async || {
        publisher.queue_depths().await.unwrap().0 == 0
    })
    .await;
    assert_eq!(count(&env, &ids, "queued").await, 20);

    let pid = nix::unistd::Pid::from_raw(i32::try_from(frozen.0.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let froze = Instant::now();
    let other = env.spawn_worker(env.worker_options()).await;
    // Heartbeat 2 s: RabbitMQ gives up on the connection after about two missed intervals.
    wait_for(
        "the prefetched tasks ran on the other worker",
        Duration::from_secs(15),
        async || count(&env, &ids, "succeeded").await == 20,
    )
    .await;
    eprintln!(
        "prefetched tasks ran {:?} after the freeze",
        froze.elapsed()
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = frozen.0.wait();
    other.stop().await;
}

/// Ready messages in the tasks queue, or None when it does not exist (a passive declare on a
/// channel of its own, so the check itself declares nothing).
async fn ready_if_declared(env: &TestEnv) -> Option<u32> {
    let conn = env.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = ch
        .queue_declare(
            env.topology().tasks_queue().into(),
            passive,
            lapin::types::FieldTable::default(),
        )
        .await
        .ok()
        .map(|q| q.message_count());
    conn.close(200, "done".into()).await.ok();
    found
}

/// The API's publishes to a deleted tasks queue come back unroutable; it declares the topology
/// again instead of publishing into the void until it reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_declares_a_deleted_tasks_queue_again() {
    debug_log();
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    api.enqueue(&json!({"agent": "echo", "command": "first"}))
        .await;
    assert_eq!(ready_if_declared(&env).await, Some(1));
    let conn = env.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(
        env.topology().tasks_queue().into(),
        QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    conn.close(200, "done".into()).await.ok();
    assert_eq!(ready_if_declared(&env).await, None);

    // The first publish comes back; one of the next ones lands in the declared-again queue.
    let mut n = 0;
    wait_for(
        "a publish reaches the tasks queue again",
        WAIT,
        async || {
            n += 1;
            api.enqueue(&json!({"agent": "echo", "command": format!("after {n}")}))
                .await;
            ready_if_declared(&env).await.is_some_and(|ready| ready > 0)
        },
    )
    .await;
}
