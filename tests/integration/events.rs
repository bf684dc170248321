//! `GET /events` on both engines: every path that changes a task's status announces it (enqueue,
//! delayed enqueue, claim, record, cancel, retry, bulk retry, reaper, dead-letter failing,
//! release on stop); filters, resume with `Last-Event-ID`, `reset`, the task snapshot; another
//! API process sees the changes; a slow consumer is dropped, not buffered for; the stream cap,
//! the key, bad filters, shutdown and the request timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use crate::common::{TEST_KEY, TestApi, TestEnv, assert_error};
use crate::neutral::metric;
use bgagent_shared::domain::{TaskEvent, TaskStatus};
use bgagent_worker::WorkerOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Longest wait for one expected event.
const WAIT: Duration = Duration::from_secs(30);
const STREAMS: &str = "bgagent_api_event_streams";

/// One server-sent event.
#[derive(Clone, Debug)]
struct Frame {
    event: String,
    id: Option<String>,
    data: Value,
}

impl Frame {
    fn task(&self) -> Option<(&str, &str)> {
        (self.event == "task").then(|| {
            (
                self.data["id"].as_str().unwrap_or(""),
                self.data["status"].as_str().unwrap_or(""),
            )
        })
    }
}

/// A client reading `GET /events`.
struct Stream {
    res: reqwest::Response,
    buf: String,
}

/// `GET /events{query}` with the key (and `Last-Event-ID` when given); panics unless it is 200
/// and `text/event-stream`.
async fn open(api: &TestApi, query: &str, last_id: Option<&str>) -> Stream {
    let res = request(api, query, last_id).await;
    assert_eq!(res.status(), StatusCode::OK, "{query}");
    let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    Stream {
        res,
        buf: String::new(),
    }
}

async fn request(api: &TestApi, query: &str, last_id: Option<&str>) -> reqwest::Response {
    // No client timeout: it would count the whole stream.
    let mut req = reqwest::Client::new()
        .get(api.url(&format!("/events{query}")))
        .header("x-api-key", TEST_KEY);
    if let Some(id) = last_id {
        req = req.header("last-event-id", id);
    }
    req.send().await.expect("request")
}

/// The JSON answer of a refused `GET /events{query}`.
async fn refused(api: &TestApi, query: &str) -> (StatusCode, Value) {
    let res = request(api, query, None).await;
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

impl Stream {
    /// The next event (comments skipped); None at the end of the stream.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                if let Some(frame) = parse(&raw) {
                    return Some(frame);
                }
            }
            match self.res.chunk().await {
                Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// The first event matching `want`, skipping others; panics after [`WAIT`] or at the end.
    async fn until(&mut self, what: &str, want: impl Fn(&Frame) -> bool) -> Frame {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(frame) = self.next().await {
                if want(&frame) {
                    return Some(frame);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("the stream ended before {what}"),
            Err(_) => panic!("no {what} within {WAIT:?}"),
        }
    }

    /// Wait for task `id` to reach `status`; returns its event.
    async fn status(&mut self, id: &str, status: &str) -> Frame {
        self.until(&format!("{id} {status}"), |f| {
            f.task() == Some((id, status))
        })
        .await
    }
}

fn parse(raw: &str) -> Option<Frame> {
    let (mut event, mut id, mut data) = (None, None, String::new());
    for line in raw.lines() {
        let field = |name: &str| {
            line.strip_prefix(name)
                .map(|v| v.strip_prefix(' ').unwrap_or(v).to_owned())
        };
        if let Some(v) = field("event:") {
            event = Some(v);
        } else if let Some(v) = field("id:") {
            id = Some(v);
        } else if let Some(v) = field("data:") {
            data.push_str(&v);
        }
    }
    Some(Frame {
        event: event?,
        id,
        data: serde_json::from_str(&data).expect("event data is JSON"),
    })
}

/// Wait until this process's event subscription is live, so no event of the test is published
/// before it listens: probe events are published until one comes through `stream`.
async fn warm_up(env: &TestEnv, stream: &mut Stream) {
    let queue = env.event_queue();
    let probe = Uuid::now_v7();
    let event = TaskEvent {
        id: probe,
        agent: "probe".into(),
        status: TaskStatus::Queued,
        attempts: 0,
        updated_at: chrono::Utc::now(),
    };
    let publisher = tokio::spawn(async move {
        loop {
            let _ = queue.publish_events(std::slice::from_ref(&event)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let probe = probe.to_string();
    stream
        .until("the probe event", |f| {
            f.task().is_some_and(|(id, _)| id == probe)
        })
        .await;
    publisher.abort();
}

fn id_of(task: &Value) -> String {
    task["id"].as_str().unwrap().to_owned()
}

both_engines! {
    async fn events_follow_enqueue_claim_record_and_cancel(env: TestEnv) {
        let api = env.spawn_api().await;
        let mut stream = open(&api, "", None).await;
        warm_up(&env, &mut stream).await;
        let _worker = env.spawn_worker(env.worker_options()).await;
        let task = api.enqueue(&json!({"agent": "echo", "command": "hi"})).await;
        let id = id_of(&task);
        let queued = stream.status(&id, "queued").await;
        assert_eq!(queued.data["agent"], "echo");
        assert_eq!(queued.data["attempts"], 0);
        assert!(queued.data["updated_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().is_ok());
        let running = stream.status(&id, "running").await;
        assert_eq!(running.data["attempts"], 1);
        let done = stream.status(&id, "succeeded").await;
        assert_eq!(done.data["attempts"], 1);
        // Ids are opaque but distinct and ordered within the stream.
        assert_ne!(queued.id, done.id);
        let keys: Vec<&str> = done.data.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 5, "{keys:?}");

        // A delayed enqueue is announced when accepted, and its cancel (queued: at once).
        let later = api
            .enqueue(&json!({"agent": "echo", "command": "later", "delay_secs": 3600}))
            .await;
        let later = id_of(&later);
        stream.status(&later, "queued").await;
        let (status, _) = api.post(&format!("/tasks/{later}/cancel"), &json!({})).await;
        assert_eq!(status, StatusCode::OK);
        stream.status(&later, "cancelled").await;
    }
}

both_engines! {
    async fn events_follow_retries_failures_and_bulk_retry(env: TestEnv) {
        let api = env.spawn_api().await;
        let mut stream = open(&api, "", None).await;
        warm_up(&env, &mut stream).await;
        let worker = env.spawn_worker(env.worker_options()).await;
        let task = api
            .enqueue(&json!({"agent": "fail", "command": "x", "max_attempts": 2,
                             "meta": {"retryable": true}}))
            .await;
        let id = id_of(&task);
        stream.status(&id, "running").await;
        // The retryable failure goes back to the queue, then the last attempt fails.
        let retry = stream.status(&id, "queued").await;
        assert_eq!(retry.data["attempts"], 1);
        stream.status(&id, "running").await;
        let failed = stream.status(&id, "failed").await;
        assert_eq!(failed.data["attempts"], 2);
        worker.stop().await;

        // One retry, a cancel of the queued task, then a bulk retry of the cancelled ones.
        let (status, body) = api.post(&format!("/tasks/{id}/retry"), &json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        stream.status(&id, "queued").await;
        let (status, _) = api.post(&format!("/tasks/{id}/cancel"), &json!({})).await;
        assert_eq!(status, StatusCode::OK);
        stream.status(&id, "cancelled").await;
        let (status, body) = api.post("/tasks/retry", &json!({"status": "cancelled"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["retried"], 1, "{body}");
        stream.status(&id, "queued").await;
    }
}

both_engines! {
    async fn events_follow_a_running_cancel_and_a_release_on_stop(env: TestEnv) {
        let api = env.spawn_api().await;
        let mut stream = open(&api, "", None).await;
        warm_up(&env, &mut stream).await;
        let worker = env
            .spawn_worker(WorkerOptions { shutdown_grace_secs: 1, ..env.worker_options() })
            .await;
        let long = json!({"agent": "sleep", "command": "nap", "meta": {"ms": 60_000}});
        let cancelled = id_of(&api.enqueue(&long).await);
        stream.status(&cancelled, "running").await;
        let (status, _) = api.post(&format!("/tasks/{cancelled}/cancel"), &json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        // The worker stops the task and records it: that record is the change.
        stream.status(&cancelled, "cancelled").await;

        let released = id_of(&api.enqueue(&long).await);
        stream.status(&released, "running").await;
        worker.stop().await;
        let back = stream.status(&released, "queued").await;
        assert_eq!(back.data["attempts"], 0, "a hand-back does not count the attempt");
    }
}

both_engines! {
    async fn events_follow_the_reaper(env: TestEnv) {
        let api = env.spawn_api().await;
        let mut stream = open(&api, "", None).await;
        warm_up(&env, &mut stream).await;
        let task = api.enqueue(&json!({"agent": "echo", "command": "orphan"})).await;
        let id = id_of(&task);
        stream.status(&id, "queued").await;
        env.claim_as_dead_worker("w-dead", &[Uuid::parse_str(&id).unwrap()], Duration::from_secs(2))
            .await;
        let _worker = env
            .spawn_worker(WorkerOptions { lease_secs: 3, ..env.worker_options() })
            .await;
        // The reaper hands the lost attempt back (counted), then the task runs again.
        let reaped = stream
            .until("the reaper's hand-back", |f| {
                f.task() == Some((id.as_str(), "queued")) && f.data["attempts"] == 1
            })
            .await;
        assert_eq!(reaped.data["agent"], "echo");
        let done = stream.status(&id, "succeeded").await;
        assert_eq!(done.data["attempts"], 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_a_dead_lettered_task() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let mut stream = open(&api, "", None).await;
    warm_up(&env, &mut stream).await;
    // Paused: the worker consumes no tasks, but still watches the dead-letter events.
    api.post("/stop", &json!({})).await;
    let _worker = env.spawn_worker(env.worker_options()).await;
    let id = id_of(
        &api.enqueue(&json!({"agent": "echo", "command": "poison"}))
            .await,
    );
    env.nack_until_dead_lettered().await;
    stream.status(&id, "failed").await;
}

both_engines! {
    async fn events_filter_by_task_and_agent_and_snapshot_the_task(env: TestEnv) {
        let api = env.spawn_api().await;
        let mut all = open(&api, "", None).await;
        warm_up(&env, &mut all).await;
        let first = id_of(&api.enqueue(&json!({"agent": "echo", "command": "1"})).await);

        // With task_id the stream opens with the task as it is.
        let mut one = open(&api, &format!("?task_id={first}"), None).await;
        let snapshot = one.next().await.unwrap();
        assert_eq!(snapshot.task(), Some((first.as_str(), "queued")), "{snapshot:?}");
        let mut sleepers = open(&api, "?agent=sleep", None).await;

        let echo = id_of(&api.enqueue(&json!({"agent": "echo", "command": "2"})).await);
        let sleep = id_of(
            &api.enqueue(&json!({"agent": "sleep", "command": "3", "delay_secs": 3600})).await,
        );
        let (status, _) = api.post(&format!("/tasks/{first}/cancel"), &json!({})).await;
        assert_eq!(status, StatusCode::OK);
        all.status(&first, "cancelled").await;

        let next = sleepers.next().await.unwrap();
        assert_eq!(next.task(), Some((sleep.as_str(), "queued")), "not {echo}: {next:?}");
        let next = one.next().await.unwrap();
        assert_eq!(next.task(), Some((first.as_str(), "cancelled")), "{next:?}");
    }
}

both_engines! {
    async fn events_resume_from_the_ring_or_reset(env: TestEnv) {
        let api = env.spawn_api().await;
        let mut stream = open(&api, "", None).await;
        warm_up(&env, &mut stream).await;
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(id_of(&api.enqueue(&json!({"agent": "echo", "command": n.to_string()})).await));
        }
        let mut seen = Vec::new();
        for id in &ids {
            seen.push(stream.status(id, "queued").await);
        }
        drop(stream);
        ids.push(id_of(&api.enqueue(&json!({"agent": "echo", "command": "3"})).await));

        // Resumed after the first: the two it already had after it, then the one it missed.
        let mut resumed = open(&api, "", seen[0].id.as_deref()).await;
        for (n, id) in ids.iter().enumerate().skip(1) {
            let frame = resumed.next().await.unwrap();
            assert_eq!(frame.task(), Some((id.as_str(), "queued")), "{frame:?}");
            if n < 3 {
                assert_eq!(frame.id, seen[n].id, "the same ids again");
            }
        }

        // An id this process cannot resume: reset first, then the live events.
        for unknown in ["0123456789ab-5", "junk"] {
            let mut fresh = open(&api, "", Some(unknown)).await;
            let first = fresh.next().await.unwrap();
            assert_eq!(first.event, "reset", "{first:?}");
            assert_eq!(first.data, json!({}));
        }
    }
}

both_engines! {
    async fn events_reach_every_api_process(env: TestEnv) {
        let writer = env.spawn_api().await;
        let reader = env.spawn_api().await;
        let mut stream = open(&reader, "", None).await;
        warm_up(&env, &mut stream).await;
        let id = id_of(&writer.enqueue(&json!({"agent": "echo", "command": "far"})).await);
        stream.status(&id, "queued").await;
        let (status, _) = writer.post(&format!("/tasks/{id}/cancel"), &json!({})).await;
        assert_eq!(status, StatusCode::OK);
        stream.status(&id, "cancelled").await;
    }
}

both_engines! {
    async fn events_drop_a_slow_consumer(env: TestEnv) {
        let api = env.spawn_api().await;
        let mut stream = open(&api, "", None).await;
        warm_up(&env, &mut stream).await;
        // Far more than the socket buffers and the stream's lag allowance hold, while the client
        // reads nothing.
        const BATCHES: usize = 100;
        const PER_BATCH: usize = 2_000;
        let queue = env.event_queue();
        let now = chrono::Utc::now();
        for b in 0..BATCHES {
            let batch: Vec<TaskEvent> = (0..PER_BATCH)
                .map(|n| TaskEvent {
                    id: Uuid::from_u128((b * PER_BATCH + n) as u128),
                    agent: "flood".into(),
                    status: TaskStatus::Queued,
                    attempts: 0,
                    updated_at: now,
                })
                .collect();
            queue.publish_events(&batch).await.unwrap();
        }
        // Reading now, the client finds the stream ended before the flood did.
        let mut got = 0;
        let ended = tokio::time::timeout(Duration::from_secs(120), async {
            while stream.next().await.is_some() {
                got += 1;
            }
        })
        .await;
        assert!(ended.is_ok(), "the stream did not end ({got} events read)");
        assert!(got < BATCHES * PER_BATCH, "every event was delivered: nothing dropped the stream");
        wait_streams(&api, 0).await;
        // The client reconnects and carries on.
        let _again = open(&api, "", None).await;
    }
}

both_engines! {
    async fn events_refuse_bad_requests_and_cap_streams(env: TestEnv) {
        let mut config = env.api_config();
        config.max_event_streams = 1;
        let api = env.spawn_api_with(config).await;
        let none = reqwest::Client::new().get(api.url("/events")).send().await.unwrap();
        assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
        let got = refused(&api, "?task_id=junk").await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(got.1["error"]["field"], "task_id");
        let got = refused(&api, "?agent=Not%20An%20Agent").await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(got.1["error"]["field"], "agent");
        let got = refused(&api, &format!("?task_id={}", Uuid::now_v7())).await;
        assert_error(&got, StatusCode::NOT_FOUND, "not_found");

        let open_one = open(&api, "", None).await;
        wait_streams(&api, 1).await;
        let (status, body) = refused(&api, "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("BGAGENT_MAX_EVENT_STREAMS"), "{body}");
        drop(open_one);
        wait_streams(&api, 0).await;
        let _next = open(&api, "", None).await;

        // The document describes the route.
        let (_, doc) = api.get("/openapi.json").await;
        let op = &doc["paths"]["/events"]["get"];
        assert!(op["responses"]["200"]["content"]["text/event-stream"].is_object(), "{op}");
        for status in ["401", "422", "503"] {
            assert!(op["responses"][status].is_object(), "{status}: {op}");
        }
        assert!(doc["components"]["schemas"]["TaskEvent"].is_object());
    }
}

both_engines! {
    async fn events_outlive_the_request_timeout_and_end_at_shutdown(env: TestEnv) {
        let mut config = env.api_config();
        config.request_timeout_secs = 1;
        config.shutdown_grace_secs = 30;
        let api = env.spawn_api_with(config).await;
        let mut stream = open(&api, "", None).await;
        warm_up(&env, &mut stream).await;
        // Past the request timeout, the stream still carries events.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let id = id_of(&api.enqueue(&json!({"agent": "echo", "command": "late"})).await);
        stream.status(&id, "queued").await;
        // Shutdown ends it at once, not after the 30 s grace.
        let started = Instant::now();
        drop(api);
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while stream.next().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the stream outlived the shutdown");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

/// Wait until the open-streams gauge reads `want`.
async fn wait_streams(api: &TestApi, want: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = metric(api, STREAMS).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{STREAMS} stuck at {n}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
