//! Faults beyond crashes, tested against the real services: a database too slow to answer in
//! time, a reaper whose view is stale, a holder that reports after its lease, a cancel racing a
//! finish, and hand-backs that must not spend the poison budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{TestApi, TestEnv};
use bgagent_shared::db;
use bgagent_shared::domain::TaskStatus;
use futures_util::future::join_all;
use lapin::options::BasicGetOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn id_of(task: &Value) -> Uuid {
    task["id"].as_str().unwrap().parse().unwrap()
}

/// A connection holding the tasks table locked: every insert waits, as in a database stall.
async fn stall_inserts(env: &TestEnv) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(&env.database_url)
        .await
        .unwrap();
    sqlx::query("begin").execute(&mut conn).await.unwrap();
    sqlx::query("lock table tasks in access exclusive mode")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn end_stall(mut conn: sqlx::PgConnection) {
    sqlx::query("rollback").execute(&mut conn).await.unwrap();
    conn.close().await.ok();
}

/// An enqueue the database cannot take before the request timeout is either withdrawn (503
/// `unavailable`: nothing stored) or, if its statement was already running, answered 503
/// `outcome_unknown`. Never "not done" for something done: a retry with the same key creates
/// each withdrawn task anew and finds no duplicate anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_past_its_deadline_is_withdrawn_or_reported_unknown() {
    let env = TestEnv::new().await;
    let mut config = env.api_config();
    config.request_timeout_secs = 2;
    config.enqueue_loops = 1;
    let api = TestApi::spawn(config).await;

    // Hold the table: inserts block, as they would while PostgreSQL stalls.
    let stall = stall_inserts(&env).await;
    let keys: Vec<String> = (0..20).map(|i| format!("stall-{i}")).collect();
    let answers = join_all(keys.iter().map(|key| {
        let body = json!({"agent": "echo", "command": "x", "idempotency_key": key});
        let api = &api;
        async move { api.post("/enqueue", &body).await }
    }))
    .await;
    end_stall(stall).await;

    let mut withdrawn = Vec::new();
    for (key, (status, body)) in keys.iter().zip(&answers) {
        assert_eq!(status, &StatusCode::SERVICE_UNAVAILABLE, "{key}: {body}");
        match body["error"]["code"].as_str().unwrap() {
            "unavailable" => withdrawn.push(key.clone()),
            "outcome_unknown" => {}
            other => panic!("{key}: unexpected code {other}: {body}"),
        }
    }
    assert!(
        !withdrawn.is_empty(),
        "requests waiting for a statement are withdrawn"
    );
    // Retried with the same keys: a withdrawn request was never stored, so its retry creates
    // the task; every key ends up with exactly one task.
    for key in &keys {
        let (status, body) = api
            .post(
                "/enqueue",
                &json!({"agent": "echo", "command": "x", "idempotency_key": key}),
            )
            .await;
        assert!(status.is_success(), "{key}: {status} {body}");
        if withdrawn.contains(key) {
            assert_eq!(
                status,
                StatusCode::ACCEPTED,
                "{key} was withdrawn yet stored"
            );
        }
    }
    let rows: i64 = sqlx::query_scalar("select count(*) from tasks")
        .fetch_one(env.db())
        .await
        .unwrap();
    assert_eq!(rows, 20);

    // The Rust client retries such answers with the key it sends on every enqueue.
    let client = bgagent_client::Client::new(&api.base, crate::common::TEST_KEY).unwrap();
    let stall = stall_inserts(&env).await;
    let enqueue = tokio::spawn(async move {
        client
            .enqueue(bgagent_shared::domain::EnqueueRequest {
                agent: "echo".into(),
                command: "patient".into(),
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_secs(3)).await; // hold the stall past one request timeout
    end_stall(stall).await;
    let enqueued = enqueue
        .await
        .unwrap()
        .expect("the client's retries get through");
    let copies: i64 = sqlx::query_scalar("select count(*) from tasks where command = 'patient'")
        .fetch_one(env.db())
        .await
        .unwrap();
    assert_eq!(copies, 1, "{enqueued:?}");
}

/// Cancels that race their task's claim, retry or finish answer 200, 202 or 409, never 500,
/// and the final status agrees with the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_finish_never_fails() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let _worker = env.spawn_worker(env.worker_options()).await;
    let tasks = join_all((0..60).map(|i| {
        let body = if i % 2 == 0 {
            json!({"agent": "echo", "command": format!("{i}")})
        } else {
            json!({"agent": "fail", "command": "x", "meta": {"retryable": true}, "max_attempts": 3})
        };
        let api = &api;
        async move { api.enqueue(&body).await }
    }))
    .await;
    let answers = join_all(tasks.iter().map(|t| {
        let api = &api;
        async move {
            let id = id_of(t);
            (
                id,
                api.post(&format!("/tasks/{id}/cancel"), &json!({})).await,
            )
        }
    }))
    .await;
    for (id, (status, body)) in answers {
        let done = env.wait_task(id, WAIT, |t| t.status.is_terminal()).await;
        match status {
            StatusCode::OK => assert_eq!(done.status, TaskStatus::Cancelled, "{body}"),
            StatusCode::ACCEPTED => assert_eq!(body["status"], "running", "{body}"),
            StatusCode::CONFLICT => assert_ne!(done.status, TaskStatus::Cancelled, "{body}"),
            other => panic!("cancel of {id} answered {other}: {body}"),
        }
    }
}

/// The reaper acts only on a current view: a reap statement that runs late (it waited out a
/// stall) reaps nothing, and a task on its last attempt is not failed before the attempt could
/// have ended on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_judges_leases_only_with_a_current_view() {
    let env = TestEnv::new().await;
    let ids = env.insert_tasks("echo", "x", json!({}), 4, true).await;
    // The holder registered before its attempts began and never said it stopped: it may be
    // frozen rather than dead.
    sqlx::query(
        "insert into workers (id, host, version, started_at, last_seen)
         values ('w-gone', 'h', 'v', now() - interval '2 hours', now() - interval '1 minute'),
                ('w-restarted', 'h', 'v', now(), now())",
    )
    .execute(env.db())
    .await
    .unwrap();
    // Four running tasks whose lease expired: one with attempts left; one on its last attempt
    // that started a moment ago (timeout 300 s); one on its last attempt long past its timeout;
    // one on its last attempt whose worker has restarted since (its holder is surely gone).
    sqlx::query(
        "update tasks set status = 'running', attempts = 1,
                worker_id = case when id = $4 then 'w-restarted' else 'w-gone' end,
                lease_until = now() - interval '1 second',
                max_attempts = case when id = $1 then 3 else 1 end,
                started_at = case when id = $3 then now() - interval '1 hour'
                                  else now() - interval '1 minute' end
         where id = any($5)",
    )
    .bind(ids[0])
    .bind(ids[1])
    .bind(ids[2])
    .bind(ids[3])
    .bind(&ids)
    .execute(env.db())
    .await
    .unwrap();

    let db_now = db::now(env.db()).await.unwrap();
    let late = db::runs::reap(env.db(), 30.0, db_now - chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert!(late.is_empty(), "a late statement reaps nothing: {late:?}");

    let db_now = db::now(env.db()).await.unwrap();
    let reaped = db::runs::reap(env.db(), 30.0, db_now + chrono::Duration::seconds(5))
        .await
        .unwrap();
    let mut got: Vec<(Uuid, String)> = reaped.into_iter().map(|r| (r.task_id, r.status)).collect();
    got.sort();
    let mut want = vec![
        (ids[0], "queued".to_owned()),
        (ids[2], "failed".to_owned()),
        (ids[3], "failed".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want, "the recent last attempt keeps running");
    let kept = db::tasks::get(env.db(), ids[1]).await.unwrap().unwrap();
    assert_eq!(kept.status, TaskStatus::Running);
}

/// A holder that reports after the reaper took its task back (it froze past its lease) has its
/// outcome recorded when no newer attempt began, and dropped when one did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_outcome_counts_unless_a_newer_attempt_began() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let _worker = env.spawn_worker(env.worker_options()).await;
    let body =
        |ms| json!({"agent": "sleep", "command": "nap", "meta": {"ms": ms}, "max_attempts": 1});
    let reaped_failed = id_of(&api.enqueue(&body(1500)).await);
    let superseded = id_of(&api.enqueue(&body(1500)).await);
    for id in [reaped_failed, superseded] {
        env.wait_task(id, WAIT, |t| t.status == TaskStatus::Running)
            .await;
    }
    // What the reaper does to a frozen holder's last attempt: failed, "worker lost".
    sqlx::query(
        "update tasks set status = 'failed', finished_at = now(), lease_until = null,
                last_error = 'worker lost while running the task (attempt 1)'
         where id = $1",
    )
    .bind(reaped_failed)
    .execute(env.db())
    .await
    .unwrap();
    sqlx::query(
        "insert into task_attempts (task_id, attempt, agent, worker_id, outcome, error, started_at)
         select id, 1, agent, worker_id, 'failed', last_error, started_at from tasks where id = $1",
    )
    .bind(reaped_failed)
    .execute(env.db())
    .await
    .unwrap();
    // A newer attempt began elsewhere: the late outcome must not overwrite it.
    sqlx::query(
        "update tasks set attempts = 2, max_attempts = 2, worker_id = 'w-other',
                lease_until = now() + interval '1 hour'
         where id = $1",
    )
    .bind(superseded)
    .execute(env.db())
    .await
    .unwrap();

    let done = env
        .wait_task(reaped_failed, WAIT, |t| t.status == TaskStatus::Succeeded)
        .await;
    assert_eq!(done.last_error, None);
    let outcome: String =
        sqlx::query_scalar("select outcome from task_attempts where task_id = $1 and attempt = 1")
            .bind(reaped_failed)
            .fetch_one(env.db())
            .await
            .unwrap();
    assert_eq!(
        outcome, "succeeded",
        "the attempt's record tells what happened"
    );

    // The worker has recorded the superseded attempt by now too (both slept as long); it was
    // dropped: the newer attempt still holds the task.
    let processed = |id: Uuid| {
        let db = env.db().clone();
        async move {
            sqlx::query_scalar::<_, i64>("select count(*) from task_attempts where task_id = $1")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(processed(superseded).await, 0);
    let held = db::tasks::get(env.db(), superseded).await.unwrap().unwrap();
    assert_eq!(
        (held.status, held.attempts, held.worker_id.as_deref()),
        (TaskStatus::Running, 2, Some("w-other"))
    );
}

/// A pause hands back the messages a worker holds without starting them. A quorum queue counts
/// every `nack(requeue)` toward its delivery limit, so the hand-back publishes a fresh copy
/// instead: the message waiting in the queue carries no delivery count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_back_does_not_spend_the_delivery_budget() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let mut options = env.worker_options();
    options.concurrency = 1;
    let _worker = env.spawn_worker(options).await;
    let sleeper = api
        .enqueue(&json!({"agent": "sleep", "command": "hold", "meta": {"ms": 3000}}))
        .await;
    env.wait_task(id_of(&sleeper), WAIT, |t| t.status == TaskStatus::Running)
        .await;
    let waiting = id_of(
        &api.enqueue(&json!({"agent": "echo", "command": "later"}))
            .await,
    );

    // Wait until the worker holds the second message (the queue has nothing ready), then pause.
    let publisher =
        bgagent_shared::queue::rabbit::Publisher::new(&env.broker_config(), "bgagent-test")
            .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while publisher.queue_depths().await.unwrap().0 > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = api.post("/stop", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // Once the sleeper ends, the held message goes back to the queue.
    let conn = env.amqp().await;
    let channel = conn.create_channel().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let message = loop {
        if let Some(message) = channel
            .basic_get(
                env.topology().tasks_queue().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
        {
            break message;
        }
        assert!(tokio::time::Instant::now() < deadline, "not handed back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let count = message
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    assert!(
        matches!(
            count,
            None | Some(
                lapin::types::AMQPValue::LongLongInt(0) | lapin::types::AMQPValue::LongInt(0)
            )
        ),
        "a hand-back spent the delivery budget: x-delivery-count {count:?}"
    );
    assert!(String::from_utf8_lossy(&message.delivery.data).contains(&waiting.to_string()));
    message
        .delivery
        .acker
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    conn.close(200, "done".into()).await.ok();

    let (status, _) = api.post("/start", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let done = env
        .wait_task(waiting, WAIT, |t| t.status.is_terminal())
        .await;
    assert_eq!((done.status, done.attempts), (TaskStatus::Succeeded, 1));
}
