//! Workers on both engines: executors, retries, timeouts, dead letters, HTTP agents and the
//! gateway, pause/resume, cancel, delayed tasks, heartbeats, several workers sharing work and a
//! clean stop handing work back. RabbitMQ specifics (unparseable messages, the delivery limit)
//! and worker processes (exactly-once across processes, SIGTERM) run on PostgreSQL and RabbitMQ.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use crate::common::{EngineKind, TestEnv};
use crate::fake_agent::{FakeAgent, Reply};
use crate::neutral::wait_metric;
use bgagent_shared::domain::TaskStatus;
use bgagent_shared::store::CancelOutcome;
use bgagent_worker::WorkerOptions;
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

both_engines! {
    async fn echo_sleep_and_missing_routes(env: TestEnv) {
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
}

both_engines! {
    async fn failures_retry_with_growing_delays_then_dead_letter(env: TestEnv) {
        let api = env.spawn_api().await;
        // Base 400 ms, factor 3, 75-100 % jitter: delays of 300-400, 900-1200 and 2700-3600 ms.
        // Each is at least 500 ms longer than the longest the one before can be, far above the
        // relay's 50 ms polling and the claim's round trips even on a loaded machine.
        let mut options = env.worker_options();
        options.retry_base_ms = 400;
        options.retry_factor = 3.0;
        let _worker = env.spawn_worker(options).await;

        let task = api
            .enqueue(&json!({"agent": "fail", "command": "boom", "max_attempts": 4}))
            .await;
        let done = env
            .wait_task(id_of(&task), Duration::from_secs(60), |t| t.status.is_terminal())
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

        let attempts = env.attempts_of(done.id).await;
        let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
        assert_eq!(
            outcomes,
            ["retry", "retry", "retry", "failed"],
            "exactly max_attempts attempts"
        );
        // No retry ran before its delay (the store's clock decides), and each waited longer than
        // the one before.
        let gaps: Vec<i64> = attempts
            .windows(2)
            .map(|w| (w[1].started_at - w[0].finished_at).num_milliseconds())
            .collect();
        assert!(
            gaps[0] >= 300 && gaps[1] >= 900 && gaps[2] >= 2700,
            "no retry ran before its delay: {gaps:?}"
        );
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

        // Both failures were copied for operators: the dead queue holds two messages (copies are
        // made off the record path, so they may trail the final status a little).
        let dead = r#"bgagent_queue_messages{queue="dead"}"#;
        assert_eq!(
            wait_metric(&api, dead, 2, WAIT).await,
            2,
            "one dead-letter copy per failed task"
        );
        if env.kind == EngineKind::Postgres {
            // On RabbitMQ the copies carry the error and attempts in their headers.
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
                Some(AMQPValue::LongString(e)) => {
                    assert!(e.to_string().contains("failed on purpose"))
                }
                other => panic!("x-error header missing: {other:?}"),
            }
        }
    }
}

both_engines! {
    async fn a_task_past_its_timeout_fails_as_a_timeout(env: TestEnv) {
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
        assert_eq!(
            env.outcomes_of(done.id).await,
            ["timeout", "timeout"],
            "a timeout is retryable"
        );
    }
}

both_engines! {
    async fn registered_agents_get_the_documented_request_and_answers_decide_the_outcome(
        env: TestEnv
    ) {
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
        assert_eq!(
            env.outcomes_of(done.id).await,
            ["retry", "retry", "succeeded"]
        );

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

both_engines! {
    async fn unregistered_agents_go_to_the_omni_gateway(env: TestEnv) {
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
}

both_engines! {
    async fn stop_holds_queued_tasks_lets_running_ones_finish_and_start_drains(env: TestEnv) {
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
            assert_eq!(
                env.task_now(*id).await.status,
                TaskStatus::Queued,
                "queued tasks stay queued while stopped"
            );
        }
        // The worker says so in its heartbeat.
        env.wait_worker(&worker.id, WAIT, |w| w.paused).await;
        let (_, workers) = api.get("/workers").await;
        assert_eq!(workers["workers"][0]["id"], worker.id.as_str());
        assert_eq!(workers["workers"][0]["paused"], true);

        // A worker started while the fleet is paused stays paused.
        let late = env.spawn_worker(env.worker_options()).await;
        env.wait_worker(&late.id, WAIT, |w| w.paused).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        for id in &held {
            assert_eq!(
                env.task_now(*id).await.status,
                TaskStatus::Queued,
                "a new worker respects the paused fleet"
            );
        }

        api.post("/start", &json!({})).await;
        env.wait_all_terminal(WAIT).await;
        for id in &held {
            assert_eq!(env.task_now(*id).await.status, TaskStatus::Succeeded);
        }
        late.stop().await;
        worker.stop().await;
    }
}

both_engines! {
    async fn a_worker_that_missed_the_stop_message_reconciles_with_the_stored_state(
        env: TestEnv
    ) {
        let api = env.spawn_api().await;
        let worker = env.spawn_worker(env.worker_options()).await;
        // Pause behind the queue's back: only the stored state changes, no stop message.
        env.store.set_paused(true, "test").await.unwrap();
        // The worker's heartbeat reads the stored state and stops consuming.
        env.wait_worker(&worker.id, WAIT, |w| w.paused).await;
        let task = api.enqueue(&json!({"agent": "echo", "command": "x"})).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(env.task_now(id_of(&task)).await.status, TaskStatus::Queued);
        env.store.set_paused(false, "test").await.unwrap();
        let done = env
            .wait_task(id_of(&task), WAIT, |t| t.status.is_terminal())
            .await;
        assert_eq!(done.status, TaskStatus::Succeeded);
    }
}

both_engines! {
    async fn cancelled_tasks_end_cancelled_and_never_succeed(env: TestEnv) {
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
        assert_eq!(env.outcomes_of(done.id).await, ["cancelled"]);

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
        let after = env.task_now(id_of(&delayed)).await;
        assert_eq!(after.status, TaskStatus::Cancelled);
        assert_eq!(after.attempts, 0, "a cancelled queued task never runs");

        // A cancel request the worker never hears about (the stored flag only, no message) still
        // wins at the end.
        let quiet = api
            .enqueue(&json!({"agent": "sleep", "command": "q", "meta": {"ms": 1500}}))
            .await;
        env.wait_task(id_of(&quiet), WAIT, |t| t.status == TaskStatus::Running)
            .await;
        let requested = env.store.cancel(id_of(&quiet)).await.unwrap();
        assert!(
            matches!(requested, CancelOutcome::Requested(_)),
            "{requested:?}"
        );
        let done = env
            .wait_task(id_of(&quiet), WAIT, |t| t.status.is_terminal())
            .await;
        assert_eq!(done.status, TaskStatus::Cancelled);
    }
}

both_engines! {
    /// A delayed task waits in the queue until its time, then runs.
    async fn delayed_tasks_run_once_due_and_not_before(env: TestEnv) {
        let api = env.spawn_api().await;
        let _worker = env.spawn_worker(env.worker_options()).await;
        let delayed = api
            .enqueue(&json!({"agent": "echo", "command": "later", "delay_secs": 2}))
            .await;
        let now = api
            .enqueue(&json!({"agent": "echo", "command": "now"}))
            .await;
        let queued = env.task_now(id_of(&delayed)).await;
        assert!(
            queued.run_at - queued.created_at >= chrono::Duration::seconds(2),
            "{queued:?}"
        );
        // The undelayed one does not wait behind it.
        let first = env
            .wait_task(id_of(&now), WAIT, |t| t.status.is_terminal())
            .await;
        assert_eq!(first.status, TaskStatus::Succeeded);
        let done = env
            .wait_task(id_of(&delayed), WAIT, |t| t.status.is_terminal())
            .await;
        assert_eq!((done.status, done.attempts), (TaskStatus::Succeeded, 1));
        let started = done.started_at.unwrap();
        assert!(
            started >= queued.run_at,
            "started {started} before its time {}",
            queued.run_at
        );
        assert!(first.finished_at.unwrap() < started);
    }
}

both_engines! {
    /// `/workers` shows each worker's heartbeat: what it runs, what it finished, whether it is
    /// paused, and that it stopped; `/health` counts the live ones.
    async fn heartbeats_show_each_worker_in_workers_and_health(env: TestEnv) {
        let api = env.spawn_api().await;
        let first = env.spawn_worker(env.worker_options()).await;
        let second = env.spawn_worker(env.worker_options()).await;
        assert_ne!(first.id, second.id);
        for w in [&first, &second] {
            env.wait_worker(&w.id, WAIT, |_| true).await;
        }
        let health = api.public_json("/health").await;
        assert_eq!(health["workers"], 2, "{health}");

        let task = api
            .enqueue(&json!({"agent": "sleep", "command": "busy", "meta": {"ms": 3000}}))
            .await;
        let running = env
            .wait_task(id_of(&task), WAIT, |t| t.status == TaskStatus::Running)
            .await;
        let holder = running.worker_id.clone().unwrap();
        assert!(holder == first.id || holder == second.id, "{holder}");
        let busy = env.wait_worker(&holder, WAIT, |w| w.in_flight == 1).await;
        // The heartbeat goes on while the task runs.
        env.wait_worker(&holder, WAIT, |w| w.last_seen > busy.last_seen)
            .await;
        let (status, workers) = api.get("/workers").await;
        assert_eq!(status, 200);
        let listed = workers["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == holder.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{holder} not in {workers}"));
        assert_eq!(listed["paused"], false);
        assert!(listed["stopped_at"].is_null(), "{listed}");

        env.wait_task(id_of(&task), WAIT, |t| t.status.is_terminal())
            .await;
        env.wait_worker(&holder, WAIT, |w| w.in_flight == 0 && w.processed == 1)
            .await;

        // A clean stop is visible at once, and the worker no longer counts as live.
        let (first_id, second_id) = (first.id.clone(), second.id.clone());
        first.stop().await;
        let info = env
            .worker_info(&first_id)
            .await
            .expect("a stopped worker stays listed");
        assert!(info.stopped_at.is_some(), "{info:?}");
        assert_eq!(info.in_flight, 0);
        assert_eq!(api.public_json("/health").await["workers"], 1);
        second.stop().await;
        assert!(env.worker_info(&second_id).await.unwrap().stopped_at.is_some());
        assert_eq!(api.public_json("/health").await["workers"], 0);
    }
}

both_engines! {
    /// Several workers on one engine (worker processes on PostgreSQL and RabbitMQ, the worker
    /// loops of `bgagent dev --workers N` on the embedded engine) share the work, and each task
    /// runs exactly once.
    async fn several_workers_share_the_work_and_run_each_task_once(env: TestEnv) {
        const TASKS: usize = 600;
        let api = std::sync::Arc::new(env.spawn_api().await);
        // Every answer takes a little while, so no worker can drain the queue alone.
        let script = (0..TASKS)
            .map(|_| Reply {
                delay: Duration::from_millis(20),
                ..Reply::ok("{\"ok\":true}")
            })
            .collect();
        let agent = FakeAgent::start(script).await;
        api.post(
            "/agents/register",
            &json!({"name": "counter", "endpoint": agent.url}),
        )
        .await;
        let options = WorkerOptions {
            concurrency: 8,
            prefetch: 8,
            ..env.worker_options()
        };
        let mut workers = Vec::new();
        for _ in 0..3 {
            workers.push(env.spawn_worker(options.clone()).await);
        }

        for chunk in 0..TASKS / 100 {
            let mut handles = Vec::new();
            for i in 0..100 {
                let api = api.clone();
                handles.push(tokio::spawn(async move {
                    api.enqueue(&json!({"agent": "counter", "command": format!("job {chunk}-{i}")}))
                        .await
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
        }
        env.wait_all_terminal(Duration::from_secs(90)).await;
        let mut per_task: HashMap<String, usize> = HashMap::new();
        for r in &agent.receipts() {
            *per_task
                .entry(r.headers["idempotency-key"].to_str().unwrap().to_owned())
                .or_default() += 1;
        }
        assert_eq!(per_task.len(), TASKS, "every task reached the agent");
        assert!(per_task.values().all(|&n| n == 1), "no task ran twice");
        assert_eq!(env.count_with(TaskStatus::Succeeded).await, TASKS);
        let attempts = env.all_attempts().await;
        assert_eq!(attempts.len(), TASKS, "one attempt per task");
        let mut by_worker: HashMap<String, usize> = HashMap::new();
        for a in &attempts {
            *by_worker.entry(a.worker_id.clone().unwrap()).or_default() += 1;
        }
        for w in &workers {
            assert!(
                by_worker.get(&w.id).is_some_and(|&n| n > 0),
                "every worker took work: {by_worker:?}"
            );
        }
        for w in workers {
            w.stop().await;
        }
    }
}

both_engines! {
    /// A clean stop lets what finishes within the grace finish, hands the rest back (not counted
    /// as an attempt) and leaves nothing running; another worker then runs what was handed back.
    async fn a_clean_stop_hands_back_unfinished_tasks(env: TestEnv) {
        let api = env.spawn_api().await;
        // The first request of each slow task hangs past any grace; the next is answered at once.
        let slow = FakeAgent::start(
            (0..10)
                .map(|_| Reply {
                    delay: Duration::from_secs(120),
                    ..Reply::ok("{\"ok\":true}")
                })
                .collect(),
        )
        .await;
        api.post(
            "/agents/register",
            &json!({"name": "slow", "endpoint": slow.url}),
        )
        .await;
        let worker = env
            .spawn_worker(WorkerOptions {
                shutdown_grace_secs: 1,
                ..env.worker_options()
            })
            .await;
        let worker_id = worker.id.clone();
        let (mut short, mut long) = (Vec::new(), Vec::new());
        for i in 0..20 {
            if i % 2 == 0 {
                short.push(id_of(
                    &api.enqueue(&json!({"agent": "sleep", "command": format!("s{i}"), "meta": {"ms": 200}}))
                        .await,
                ));
            } else {
                long.push(id_of(
                    &api.enqueue(&json!({"agent": "slow", "command": format!("s{i}")}))
                        .await,
                ));
            }
        }
        // Everything is under way: the slow agent has every long task, the short ones run (or
        // are done).
        let deadline = tokio::time::Instant::now() + WAIT;
        while slow.receipts().len() < long.len() {
            assert!(tokio::time::Instant::now() < deadline, "the long tasks did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for id in &short {
            env.wait_task(*id, WAIT, |t| t.status != TaskStatus::Queued)
                .await;
        }
        worker.stop().await;

        assert_eq!(
            env.count_with(TaskStatus::Running).await,
            0,
            "a clean stop leaves no task running"
        );
        let info = env.worker_info(&worker_id).await.unwrap();
        assert!(info.stopped_at.is_some(), "{info:?}");
        for id in &short {
            assert_eq!(
                env.task_now(*id).await.status,
                TaskStatus::Succeeded,
                "tasks that end within the grace finish"
            );
        }
        // The long ones went back to the queue without burning an attempt, and a new worker runs
        // them.
        for id in &long {
            let task = env.task_now(*id).await;
            assert_eq!((task.status, task.attempts), (TaskStatus::Queued, 0), "{task:?}");
        }
        let next = env.spawn_worker(env.worker_options()).await;
        env.wait_all_terminal(WAIT).await;
        assert_eq!(env.count_with(TaskStatus::Succeeded).await, 20);
        for id in &long {
            let task = env.task_now(*id).await;
            assert_eq!(task.worker_id.as_deref(), Some(next.id.as_str()));
            assert_eq!(task.attempts, 1, "the handed-back attempt did not count");
        }
        next.stop().await;
    }
}

both_engines! {
    /// A stop does not wait for a free slot: with every slot busy with long tasks, the worker
    /// still stops within its grace, handing back the running tasks and the one waiting behind
    /// them.
    async fn a_stop_with_every_slot_busy_ends_within_the_grace(env: TestEnv) {
        let api = env.spawn_api().await;
        let slow = FakeAgent::start(
            (0..2)
                .map(|_| Reply {
                    delay: Duration::from_secs(120),
                    ..Reply::ok("{\"ok\":true}")
                })
                .collect(),
        )
        .await;
        api.post(
            "/agents/register",
            &json!({"name": "slow", "endpoint": slow.url}),
        )
        .await;
        let worker = env
            .spawn_worker(WorkerOptions {
                concurrency: 2,
                shutdown_grace_secs: 1,
                ..env.worker_options()
            })
            .await;
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(id_of(
                &api.enqueue(&json!({"agent": "slow", "command": format!("s{i}")}))
                    .await,
            ));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        while slow.receipts().len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "the tasks did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = std::time::Instant::now();
        worker.stop().await;
        let took = started.elapsed();
        // One second of grace, then the hand-back: well under the 10 s a stuck step would add.
        assert!(took < Duration::from_secs(6), "the stop took {took:?}");
        for id in &ids {
            let task = env.task_now(*id).await;
            assert_eq!((task.status, task.attempts), (TaskStatus::Queued, 0), "{task:?}");
        }
        let next = env.spawn_worker(env.worker_options()).await;
        env.wait_all_terminal(WAIT).await;
        assert_eq!(env.count_with(TaskStatus::Succeeded).await, 3);
        next.stop().await;
    }
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
