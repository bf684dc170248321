//! Workers against real PostgreSQL and RabbitMQ: executors, retries, timeouts, dead letters,
//! HTTP agents and the gateway, pause/resume, cancel, exactly-once across processes, SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::TestEnv;
use crate::fake_agent::{FakeAgent, Reply};
use bgagent_shared::domain::TaskStatus;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::AMQPValue;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

fn id_of(task: &Value) -> Uuid {
    Uuid::parse_str(task["id"].as_str().unwrap()).unwrap()
}

async fn attempts_of(
    env: &TestEnv,
    id: Uuid,
) -> Vec<(i32, String, Option<String>, chrono::DateTime<chrono::Utc>)> {
    sqlx::query_as("select attempt, outcome, error, finished_at from task_attempts where task_id = $1 order by attempt")
        .bind(id)
        .fetch_all(env.db())
        .await
        .unwrap()
}

/// The dead queue's messages, once at least `expected` have arrived (copies are published off
/// the record path, so they may trail the task's final status a little).
async fn dead_messages(env: &TestEnv, expected: usize) -> Vec<lapin::message::BasicGetMessage> {
    let conn = env.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(m) = ch
            .basic_get(
                env.topology().dead_queue().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            out.push(m);
        }
        if out.len() >= expected || tokio::time::Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_sleep_and_missing_routes() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let _worker = env.spawn_worker(env.worker_options()).await;

    let echo = api
        .enqueue(&json!({"agent": "echo", "command": "hello", "meta": {"n": 7}}))
        .await;
    let sleep = api
        .enqueue(&json!({"agent": "sleep", "command": "nap", "meta": {"ms": 50}}))
        .await;
    let nobody = api
        .enqueue(&json!({"agent": "nobody", "command": "x"}))
        .await;

    let done = env
        .wait_task(id_of(&echo), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(
        done.result,
        Some(json!({"command": "hello", "meta": {"n": 7}}))
    );
    assert_eq!(done.attempts, 1);
    assert!(done.finished_at.is_some() && done.started_at.is_some());

    let done = env
        .wait_task(id_of(&sleep), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.result, Some(json!({"slept_ms": 50})));

    let done = env
        .wait_task(id_of(&nobody), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(
        done.last_error.as_deref(),
        Some("no executor for agent \"nobody\"")
    );
    assert_eq!(done.attempts, 1, "a missing route is not retried");

    let (_, processed) = api.get("/processed").await;
    assert_eq!(processed["processed"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_with_growing_delays_then_dead_letter() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    // Base 200 ms keeps each step of growth well above the relay's 50 ms polling jitter.
    let mut options = env.worker_options();
    options.retry_base_ms = 200;
    let _worker = env.spawn_worker(options).await;

    let task = api
        .enqueue(&json!({"agent": "fail", "command": "boom", "max_attempts": 4}))
        .await;
    let done = env
        .wait_task(id_of(&task), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(done.attempts, 4);
    assert!(
        done.last_error
            .as_deref()
            .unwrap()
            .contains("attempt 4 of 4"),
        "{:?}",
        done.last_error
    );

    let attempts = attempts_of(&env, done.id).await;
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.1.as_str()).collect();
    assert_eq!(
        outcomes,
        ["retry", "retry", "retry", "failed"],
        "exactly max_attempts attempts"
    );
    // Factor 2 with 75-100 % jitter: gaps of >= 150, 300, 600 ms, each longer than the last.
    let gaps: Vec<i64> = attempts
        .windows(2)
        .map(|w| (w[1].3 - w[0].3).num_milliseconds())
        .collect();
    assert!(gaps[0] >= 150 && gaps[2] >= 600, "{gaps:?}");
    assert!(
        gaps[1] > gaps[0] && gaps[2] > gaps[1],
        "delays grow: {gaps:?}"
    );

    // A non-retryable failure stops at once.
    let terminal = api
        .enqueue(&json!({"agent": "fail", "command": "no", "meta": {"retryable": false}}))
        .await;
    let done = env
        .wait_task(id_of(&terminal), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!((done.status, done.attempts), (TaskStatus::Failed, 1));

    // Both failures were copied to the dead queue with their error and attempts.
    let dead = dead_messages(&env, 2).await;
    assert_eq!(dead.len(), 2, "one dead-letter copy per failed task");
    let by_task: HashMap<String, &lapin::message::BasicGetMessage> = dead
        .iter()
        .map(|m| {
            (
                serde_json::from_slice::<Value>(&m.delivery.data).unwrap()["task_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                m,
            )
        })
        .collect();
    let copy = by_task[&task["id"].as_str().unwrap().to_owned()];
    let headers = copy.delivery.properties.headers().clone().unwrap();
    assert_eq!(
        headers.inner().get("x-attempts"),
        Some(&AMQPValue::LongInt(4))
    );
    match headers.inner().get("x-error") {
        Some(AMQPValue::LongString(e)) => assert!(e.to_string().contains("failed on purpose")),
        other => panic!("x-error header missing: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_timeout_fails_as_a_timeout() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let _worker = env.spawn_worker(env.worker_options()).await;
    let task = api
        .enqueue(&json!({"agent": "sleep", "command": "long", "meta": {"ms": 10_000}, "timeout_secs": 1, "max_attempts": 2}))
        .await;
    let done = env
        .wait_task(id_of(&task), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Failed);
    assert!(
        done.last_error
            .as_deref()
            .unwrap()
            .starts_with("timed out after 1 s"),
        "{:?}",
        done.last_error
    );
    let outcomes: Vec<String> = attempts_of(&env, done.id)
        .await
        .into_iter()
        .map(|a| a.1)
        .collect();
    assert_eq!(outcomes, ["timeout", "timeout"], "a timeout is retryable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_agents_get_the_documented_request_and_answers_decide_the_outcome() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let _worker = env.spawn_worker(env.worker_options()).await;

    // 500, then 429 with Retry-After: 1, then success.
    let mut busy = Reply::status(429);
    busy.retry_after = Some("1".into());
    let agent =
        FakeAgent::start(vec![Reply::status(500), busy, Reply::ok("{\"answer\":42}")]).await;
    let (status, _) = api
        .post(
            "/agents/register",
            &json!({"name": "coder", "endpoint": format!("{}/run", agent.url)}),
        )
        .await;
    assert_eq!(status, 200);
    let task = api
        .enqueue(&json!({"agent": "coder", "command": "write code", "meta": {"lang": "rust"}}))
        .await;
    let done = env
        .wait_task(id_of(&task), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.result, Some(json!({"answer": 42})));
    assert_eq!(done.attempts, 3);

    let receipts = agent.receipts();
    assert_eq!(receipts.len(), 3);
    for (n, r) in receipts.iter().enumerate() {
        assert_eq!(r.path, "/run");
        assert_eq!(r.headers["idempotency-key"], done.id.to_string());
        assert_eq!(
            r.body,
            json!({"task_id": done.id, "agent": "coder", "command": "write code", "meta": {"lang": "rust"}, "attempt": n + 1})
        );
    }
    assert!(
        receipts[2].at - receipts[1].at >= Duration::from_millis(950),
        "Retry-After honoured"
    );
    let outcomes: Vec<String> = attempts_of(&env, done.id)
        .await
        .into_iter()
        .map(|a| a.1)
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "succeeded"]);

    // A 400 fails at once, with the agent's answer in the error.
    let mut bad = Reply::status(400);
    bad.body = "bad command".into();
    let (rejecting, done) = run_once_via(&env, &api, "strict", bad).await;
    assert_eq!((done.status, done.attempts), (TaskStatus::Failed, 1));
    assert!(
        done.last_error.as_deref().unwrap().contains("400"),
        "{:?}",
        done.last_error
    );
    assert!(done.last_error.as_deref().unwrap().contains("bad command"));
    assert_eq!(rejecting.receipts().len(), 1);

    // Redirects are not followed: the task does not leave for another host.
    let (redirecting, done) = run_once_via(&env, &api, "bouncer", Reply::status(307)).await;
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(redirecting.receipts().len(), 1);
}

/// Register a fake agent `name` that answers `reply`, run one task through it, and return the
/// agent and the finished task.
async fn run_once_via(
    env: &TestEnv,
    api: &crate::common::TestApi,
    name: &str,
    reply: Reply,
) -> (FakeAgent, bgagent_shared::domain::Task) {
    let agent = FakeAgent::start(vec![reply]).await;
    let (status, _) = api
        .post(
            "/agents/register",
            &json!({"name": name, "endpoint": agent.url}),
        )
        .await;
    assert_eq!(status, 200);
    let task = api
        .enqueue(&json!({"agent": name, "command": "nope"}))
        .await;
    let done = env
        .wait_task(id_of(&task), WAIT, |t| t.status.is_terminal())
        .await;
    (agent, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_agents_go_to_the_omni_gateway() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let gateway = FakeAgent::start(vec![Reply::ok("{\"task_id\":\"gw-1\"}")]).await;
    let mut options = env.worker_options();
    options.omni_gateway_url = Some(format!("{}/", gateway.url));
    options.omni_gateway_api_key = Some("gateway-secret".to_owned().into());
    let _worker = env.spawn_worker(options).await;

    let task = api
        .enqueue(
            &json!({"agent": "researcher", "command": "find papers", "meta": {"topic": "queues"}}),
        )
        .await;
    let done = env
        .wait_task(id_of(&task), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.result, Some(json!({"task_id": "gw-1"})));
    let receipts = gateway.receipts();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].path, "/api/agents/enqueue");
    assert_eq!(receipts[0].headers["x-api-key"], "gateway-secret");
    assert_eq!(
        receipts[0].body,
        json!({"role": "researcher", "objective": "find papers", "context": {"topic": "queues"}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_holds_queued_tasks_lets_running_ones_finish_and_start_drains() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let worker = env.spawn_worker(env.worker_options()).await;

    let running = api
        .enqueue(&json!({"agent": "sleep", "command": "busy", "meta": {"ms": 1500}}))
        .await;
    env.wait_task(id_of(&running), WAIT, |t| t.status == TaskStatus::Running)
        .await;
    let (status, body) = api.post("/stop", &json!({})).await;
    assert_eq!(
        (status.as_u16(), body["paused"].as_bool()),
        (200, Some(true))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut held = Vec::new();
    for i in 0..5 {
        held.push(id_of(
            &api.enqueue(&json!({"agent": "echo", "command": format!("held {i}")}))
                .await,
        ));
    }
    // The in-flight task finishes while paused...
    let done = env
        .wait_task(id_of(&running), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Succeeded);
    // ...and nothing new starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &held {
        let task = bgagent_shared::db::tasks::get(env.db(), *id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            task.status,
            TaskStatus::Queued,
            "queued tasks stay queued while stopped"
        );
    }
    let (_, workers) = api.get("/workers").await;
    assert_eq!(workers["workers"][0]["paused"], true);

    // A worker started while the fleet is paused stays paused.
    let late = env.spawn_worker(env.worker_options()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &held {
        let task = bgagent_shared::db::tasks::get(env.db(), *id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            task.status,
            TaskStatus::Queued,
            "a new worker respects the paused fleet"
        );
    }

    api.post("/start", &json!({})).await;
    env.wait_all_terminal(WAIT).await;
    for id in &held {
        let task = bgagent_shared::db::tasks::get(env.db(), *id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(task.status, TaskStatus::Succeeded);
    }
    late.stop().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_missed_the_stop_message_reconciles_with_the_stored_state() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let _worker = env.spawn_worker(env.worker_options()).await;
    // Pause behind the broker's back: only the stored state changes.
    bgagent_shared::db::control::set_paused(env.db(), true, "test")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let task = api.enqueue(&json!({"agent": "echo", "command": "x"})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still = bgagent_shared::db::tasks::get(env.db(), id_of(&task))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.status, TaskStatus::Queued);
    bgagent_shared::db::control::set_paused(env.db(), false, "test")
        .await
        .unwrap();
    let done = env
        .wait_task(id_of(&task), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_tasks_end_cancelled_and_never_succeed() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let _worker = env.spawn_worker(env.worker_options()).await;

    let running = api
        .enqueue(&json!({"agent": "sleep", "command": "long", "meta": {"ms": 30_000}}))
        .await;
    env.wait_task(id_of(&running), WAIT, |t| t.status == TaskStatus::Running)
        .await;
    let (status, _) = api
        .post(&format!("/tasks/{}/cancel", id_of(&running)), &json!({}))
        .await;
    assert_eq!(status, 202);
    let done = env
        .wait_task(id_of(&running), Duration::from_secs(5), |t| {
            t.status.is_terminal()
        })
        .await;
    assert_eq!(
        done.status,
        TaskStatus::Cancelled,
        "aborted promptly, not after 30 s"
    );
    let outcomes: Vec<String> = attempts_of(&env, done.id)
        .await
        .into_iter()
        .map(|a| a.1)
        .collect();
    assert_eq!(outcomes, ["cancelled"]);

    // Delayed (queued) task: cancelled at once and never run later.
    let delayed = api
        .enqueue(&json!({"agent": "echo", "command": "later", "delay_secs": 1}))
        .await;
    let (status, body) = api
        .post(&format!("/tasks/{}/cancel", id_of(&delayed)), &json!({}))
        .await;
    assert_eq!(
        (status.as_u16(), body["status"].as_str()),
        (200, Some("cancelled"))
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = bgagent_shared::db::tasks::get(env.db(), id_of(&delayed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.status, TaskStatus::Cancelled);
    assert_eq!(after.attempts, 0, "a cancelled queued task never runs");

    // A cancel request the worker never hears about (flag only) still wins at the end.
    let quiet = api
        .enqueue(&json!({"agent": "sleep", "command": "q", "meta": {"ms": 1500}}))
        .await;
    env.wait_task(id_of(&quiet), WAIT, |t| t.status == TaskStatus::Running)
        .await;
    sqlx::query("update tasks set cancel_requested = true where id = $1")
        .bind(id_of(&quiet))
        .execute(env.db())
        .await
        .unwrap();
    let done = env
        .wait_task(id_of(&quiet), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_messages_are_dead_lettered_and_the_worker_keeps_going() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let _worker = env.spawn_worker(env.worker_options()).await;
    let conn = env.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        env.topology().tasks_exchange().into(),
        "task".into(),
        BasicPublishOptions::default(),
        b"this is not json",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let task = api
        .enqueue(&json!({"agent": "echo", "command": "after"}))
        .await;
    let done = env
        .wait_task(id_of(&task), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Succeeded);
    let dead = dead_messages(&env, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].delivery.data[..], b"this is not json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_run_each_task_exactly_once() {
    let env = TestEnv::new().await;
    let api = std::sync::Arc::new(env.spawn_api().await);
    let agent = FakeAgent::start(Vec::new()).await;
    api.post(
        "/agents/register",
        &json!({"name": "counter", "endpoint": agent.url}),
    )
    .await;
    let mut workers = vec![env.spawn_worker_process(&[]), env.spawn_worker_process(&[])];

    let mut ids = Vec::new();
    for chunk in 0..10 {
        let mut handles = Vec::new();
        for i in 0..100 {
            let api = api.clone();
            handles.push(tokio::spawn(async move {
                api.enqueue(&json!({"agent": "counter", "command": format!("job {chunk}-{i}")}))
                    .await
            }));
        }
        for h in handles {
            ids.push(id_of(&h.await.unwrap()));
        }
    }
    env.wait_all_terminal(Duration::from_secs(60)).await;
    let receipts = agent.receipts();
    let mut per_task: HashMap<String, usize> = HashMap::new();
    for r in &receipts {
        *per_task
            .entry(r.headers["idempotency-key"].to_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_task.len(), 1000, "every task reached the agent");
    assert!(per_task.values().all(|&n| n == 1), "no task ran twice");
    let succeeded: i64 =
        sqlx::query_scalar("select count(*) from tasks where status = 'succeeded'")
            .fetch_one(env.db())
            .await
            .unwrap();
    assert_eq!(succeeded, 1000);
    let by_worker: Vec<(String, i64)> =
        sqlx::query_as("select worker_id, count(*) from task_attempts group by worker_id")
            .fetch_all(env.db())
            .await
            .unwrap();
    assert_eq!(
        by_worker.len(),
        2,
        "both processes took work: {by_worker:?}"
    );
    for w in &mut workers {
        assert!(w.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_work_leaves_nothing_running() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let mut worker = env.spawn_worker_process(&[("BGAGENT_SHUTDOWN_GRACE_SECS", "1")]);
    // Short tasks finish within the grace; long ones are handed back.
    let mut ids = Vec::new();
    for i in 0..20 {
        let ms = if i % 2 == 0 { 200 } else { 20_000 };
        ids.push(id_of(
            &api.enqueue(
                &json!({"agent": "sleep", "command": format!("s{i}"), "meta": {"ms": ms}}),
            )
            .await,
        ));
    }
    env.wait_task(ids[1], WAIT, |t| t.status == TaskStatus::Running)
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = worker.terminate();
    assert!(status.success(), "clean exit: {status:?}");

    let running: i64 = sqlx::query_scalar("select count(*) from tasks where status = 'running'")
        .fetch_one(env.db())
        .await
        .unwrap();
    assert_eq!(running, 0, "a clean stop leaves no task running");
    let stopped: bool = sqlx::query_scalar("select stopped_at is not null from workers")
        .fetch_one(env.db())
        .await
        .unwrap();
    assert!(stopped);
    // The long ones went back to the queue without burning an attempt, and a new worker runs them.
    let long = bgagent_shared::db::tasks::get(env.db(), ids[1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!((long.status, long.attempts), (TaskStatus::Queued, 0));
    let mut options = env.worker_options();
    options.concurrency = 32;
    let _next = env.spawn_worker(options).await;
    sqlx::query("update tasks set meta = '{\"ms\": 10}' where status = 'queued'")
        .execute(env.db())
        .await
        .unwrap();
    env.wait_all_terminal(WAIT).await;
    let succeeded: i64 =
        sqlx::query_scalar("select count(*) from tasks where status = 'succeeded'")
            .fetch_one(env.db())
            .await
            .unwrap();
    assert_eq!(succeeded, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_the_delivery_limit_fails_its_task() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    // Paused: the worker consumes no tasks, but still watches the dead-letter events.
    api.post("/stop", &json!({})).await;
    let _worker = env.spawn_worker(env.worker_options()).await;
    let task = api
        .enqueue(&json!({"agent": "echo", "command": "poison"}))
        .await;

    // Play a consumer that crashes before acknowledging, again and again.
    let deliveries = env.nack_until_dead_lettered().await;
    assert!(
        deliveries > 1 && deliveries <= 22,
        "the broker stops redelivering at the limit: {deliveries}"
    );
    let done = env
        .wait_task(id_of(&task), WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Failed);
    let error = done.last_error.unwrap();
    assert!(
        error.contains("dead-lettered") && error.contains("delivery_limit"),
        "{error}"
    );
    // The operator's copy is on the dead queue.
    let dead = dead_messages(&env, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        serde_json::from_slice::<Value>(&dead[0].delivery.data).unwrap()["task_id"],
        task["id"]
    );
}
