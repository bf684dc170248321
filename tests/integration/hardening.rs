//! Hostile clients and settings (issue 13, items 4, 5 and 9): short API keys, slow and silent
//! clients, the connection limit, shutdown within its grace, the MCP transport's errors, bounded
//! request ids, security headers, content types, and the AMQP login at `RUST_LOG=trace`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{ChildGuard, TEST_KEY, TestEnv, assert_error};
use bgagent_api::{Api, ApiConfig};
use reqwest::StatusCode;
use serde_json::json;
use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// An API served in-process whose run can be awaited (the shutdown tests need its end).
struct Served {
    addr: SocketAddr,
    shutdown: CancellationToken,
    run: JoinHandle<Result<(), bgagent_shared::Error>>,
}

impl Served {
    async fn start(config: ApiConfig) -> Self {
        let api = Api::build(&config).await.expect("build the API");
        let addr = api.local_addr().expect("bound address");
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(api.run_until_stopped(shutdown.clone()));
        Self {
            addr,
            shutdown,
            run,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.expect("connect")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Read until the server closes the connection (EOF or reset); panics after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server did not close the connection within {within:?}"
    );
    got
}

/// A complete `GET /health` request.
const HEALTH_REQUEST: &[u8] = b"GET /health HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";

// ---- item 4: the API key ----------------------------------------------------------------

#[tokio::test]
async fn the_api_refuses_an_empty_or_short_key() {
    let env = TestEnv::new().await;
    for key in ["", "   ", "0123456789abcde", " 0123456789abcde \n"] {
        let mut config = env.api_config();
        config.api_key = Some(key.into());
        let err = match Api::build(&config).await {
            Ok(_) => panic!("the API started with the key {key:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("BACKGROUND_AGENT_API_KEY"), "{err}");
    }
    // The same through the _FILE, and the 16-character minimum is enough.
    let file = std::env::temp_dir().join(format!("bgagent-key-{}", uuid::Uuid::new_v4()));
    std::fs::write(&file, "short-key\n").unwrap();
    let mut config = env.api_config();
    config.api_key = None;
    config.api_key_file = Some(file.clone());
    let err = Api::build(&config).await.err().map(|e| e.to_string());
    let _ = std::fs::remove_file(&file);
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("BACKGROUND_AGENT_API_KEY")),
        "{err:?}"
    );
    let mut config = env.api_config();
    config.api_key = Some("0123456789abcdef".into());
    assert!(Api::build(&config).await.is_ok());

    // `bgagent api` exits with one line naming the setting, before touching anything.
    for key in ["", "0123456789abcde"] {
        let env_vars = env.process_env();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_bgagent"))
                .arg("api")
                .envs(env_vars)
                .env("BACKGROUND_AGENT_API_KEY", key)
                .env_remove("BACKGROUND_AGENT_API_KEY_FILE")
                .env("BGAGENT_BIND", "127.0.0.1:0")
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run bgagent api")
        })
        .await
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "bgagent api started with {key:?}");
        assert!(text.contains("BACKGROUND_AGENT_API_KEY"), "{text}");
    }
}

// ---- item 5: slow clients ----------------------------------------------------------------

/// Settings with short timeouts for the slow-client tests.
fn quick(env: &TestEnv) -> ApiConfig {
    let mut config = env.api_config();
    config.header_read_timeout_secs = 1;
    config.idle_timeout_secs = 1;
    config.shutdown_grace_secs = 1;
    config
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    let env = TestEnv::new().await;
    let api = Served::start(quick(&env)).await;
    let started = Instant::now();
    let mut silent = api.connect().await;
    let got = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert!(got.is_empty(), "unexpected answer {got:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A keep-alive connection waiting for its next request is closed the same way.
    let mut kept = api.connect().await;
    kept.write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut kept, Duration::from_secs(10)).await;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
}

#[tokio::test]
async fn headers_sent_a_byte_at_a_time_are_cut_off() {
    let env = TestEnv::new().await;
    let api = Served::start(quick(&env)).await;
    let mut slow = api.connect().await;
    // Long enough that it cannot be complete before the timeout at one byte per 50 ms.
    let request = format!(
        "GET /health HTTP/1.1\r\nhost: test\r\nx-padding: {}\r\n\r\n",
        "a".repeat(400)
    );
    let started = Instant::now();
    let mut cut_off = false;
    for byte in request.as_bytes() {
        if slow.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        // Pace the bytes by waiting for the server's close: a read ends the loop early.
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(50), slow.read(&mut buf)).await {
            Err(_elapsed) => {}
            Ok(Ok(0) | Err(_)) => {
                cut_off = true;
                break;
            }
            Ok(Ok(n)) => panic!("answered a trickled request: {:?}", &buf[..n]),
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "a client trickling its headers was not cut off"
        );
    }
    assert!(
        cut_off,
        "the trickled request was complete before the cut-off"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_dropped_after_the_idle_timeout() {
    let env = TestEnv::new().await;
    // About 15 MB of answer: far more than the socket buffers hold.
    env.insert_tasks("echo", &"x".repeat(60_000), json!({}), 250, true)
        .await;
    let api = Served::start(quick(&env)).await;
    let mut stalled = api.connect().await;
    let request = format!(
        "GET /tasks?limit=500 HTTP/1.1\r\nhost: test\r\nx-api-key: {TEST_KEY}\r\n\
         connection: close\r\n\r\n"
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    // Once the answer has started (the handler is done, however slow the machine is)...
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(30), stalled.read_exact(&mut head))
        .await
        .expect("no answer within 30 s")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // ...the stimulus: this client reads nothing for three idle timeouts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = read_until_closed(&mut stalled, Duration::from_secs(30)).await;
    assert!(
        got.len() + head.len() < 15_000_000,
        "the whole answer ({} bytes) was kept for a client that did not read",
        got.len()
    );
}

#[tokio::test]
async fn half_sent_requests_do_not_hold_shutdown_past_the_grace() {
    let env = TestEnv::new().await;
    let mut config = env.api_config();
    // Long timeouts, so only the shutdown grace (1 s) can end these connections.
    config.header_read_timeout_secs = 60;
    config.idle_timeout_secs = 60;
    config.shutdown_grace_secs = 1;
    let mut api = Served::start(config).await;

    let mut half_head = api.connect().await;
    half_head
        .write_all(b"GET /health HTTP/1.1\r\nhost: te")
        .await
        .unwrap();
    let mut half_body = api.connect().await;
    let head = format!(
        "POST /enqueue HTTP/1.1\r\nhost: test\r\nx-api-key: {TEST_KEY}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"agent\":"
    );
    half_body.write_all(head.as_bytes()).await.unwrap();
    // A request that completes normally proves the server has both connections going.
    let mut whole = api.connect().await;
    whole.write_all(HEALTH_REQUEST).await.unwrap();
    let got = read_until_closed(&mut whole, Duration::from_secs(10)).await;
    assert!(got.starts_with(b"HTTP/1.1 200"));

    let stopping = Instant::now();
    api.shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(6), &mut api.run).await;
    assert!(
        ended.is_ok(),
        "the API was still running 6 s after shutdown with a 1 s grace"
    );
    ended.unwrap().unwrap().unwrap();
    assert!(stopping.elapsed() >= Duration::from_millis(900));
    read_until_closed(&mut half_head, Duration::from_secs(2)).await;
    read_until_closed(&mut half_body, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn the_connection_limit_holds() {
    let env = TestEnv::new().await;
    let mut config = env.api_config();
    config.max_connections = 2;
    config.header_read_timeout_secs = 60;
    let api = Served::start(config).await;
    let first = api.connect().await;
    let _second = api.connect().await;

    let mut third = api.connect().await;
    third.write_all(HEALTH_REQUEST).await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_secs(1), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served beyond a limit of 2: {early:?}"
    );

    // Once a connection closes, the waiting one is served.
    drop(first);
    let got = read_until_closed(&mut third, Duration::from_secs(10)).await;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
}

// ---- item 9: smaller ones ---------------------------------------------------------------

#[tokio::test]
async fn mcp_transport_errors_use_the_json_error_shape() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let url = api.url("/mcp");
    let accept = "application/json, text/event-stream";

    let got = api.send(api.http.get(&url).header("accept", accept)).await;
    assert_error(&got, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    let got = api
        .send(
            api.http
                .post(&url)
                .header("accept", accept)
                .header("content-type", "text/plain")
                .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
        )
        .await;
    assert_error(
        &got,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    // Too deeply nested JSON is a bad request, not a media-type problem.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let got = api
        .send(
            api.http
                .post(&url)
                .header("accept", accept)
                .header("content-type", "application/json")
                .body(deep),
        )
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");

    let got = api
        .send(
            api.http
                .post(&url)
                .header("accept", "text/html")
                .header("content-type", "application/json")
                .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
        )
        .await;
    assert_error(&got, StatusCode::NOT_ACCEPTABLE, "not_acceptable");
}

#[tokio::test]
async fn request_ids_are_echoed_only_when_short_and_printable() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let id_of = |given: &str| {
        let req = api
            .http
            .get(api.url("/health"))
            .header("x-request-id", given);
        async move {
            let res = req.send().await.unwrap();
            res.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    let fine = "a".repeat(128);
    assert_eq!(id_of(&fine).await, fine);
    assert_eq!(id_of("req-42").await, "req-42");
    for bad in ["a".repeat(129), "a".repeat(8000), "two words".into()] {
        let got = id_of(&bad).await;
        assert_ne!(got, bad);
        assert!(
            uuid::Uuid::parse_str(&got).is_ok(),
            "not a generated id: {got}"
        );
    }
}

#[tokio::test]
async fn answers_are_not_sniffed_or_cached() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    for (path, key) in [
        ("/health", None),
        ("/metrics", None),
        ("/tasks", Some(TEST_KEY)),
        ("/tasks", None),
        ("/nope", Some(TEST_KEY)),
    ] {
        let mut req = api.http.get(api.url(path));
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        let res = req.send().await.unwrap();
        let headers = res.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["cache-control"], "no-store", "{path}");
    }
}

#[tokio::test]
async fn only_json_bodies_are_parsed() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let body = r#"{"agent":"echo","command":"hi"}"#;
    let post = |path: &str, content_type: Option<&str>, body: &'static str| {
        let mut req = api.http.post(api.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        api.send(req)
    };
    for refused in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/json",
    ] {
        let got = post("/enqueue", Some(refused), body).await;
        assert_error(
            &got,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    let got = post(
        "/agents/register",
        Some("text/plain"),
        r#"{"name":"a1","endpoint":"http://127.0.0.1:9/"}"#,
    )
    .await;
    assert_error(
        &got,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    for accepted in [
        None,
        Some("application/json"),
        Some("application/json; charset=utf-8"),
    ] {
        let (status, task) = post("/enqueue", accepted, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted:?}: {task}");
    }
}

#[tokio::test]
async fn the_amqp_login_is_not_logged_even_at_trace() {
    let env = TestEnv::new().await;
    // A password seen nowhere else: refused by the broker, but sent in the login all the same.
    let password = format!("pw{}", uuid::Uuid::new_v4().simple());
    let mut amqp = url::Url::parse(&env.amqp_url).unwrap();
    amqp.set_password(Some(&password)).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bgagent"));
    cmd.arg("api")
        .envs(env.process_env())
        .env("AMQP_URL", amqp.as_str())
        .env("RUST_LOG", "trace")
        .env("BACKGROUND_AGENT_API_KEY", TEST_KEY)
        .env_remove("BACKGROUND_AGENT_API_KEY_FILE")
        .env("BGAGENT_BIND", "127.0.0.1:0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("start bgagent api"));
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout: Box<dyn Read + Send> = Box::new(child.0.stdout.take().unwrap());
    let stderr: Box<dyn Read + Send> = Box::new(child.0.stderr.take().unwrap());
    for pipe in [stdout, stderr] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).split(b'\n') {
                let Ok(line) = line else { return };
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    drop(tx);
    // "API listening" comes after the broker login was tried (and refused).
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log.contains("API listening") {
        match lines.try_recv() {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                assert!(Instant::now() < deadline, "the API did not start: {log}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                panic!("the API exited: {log}")
            }
        }
    }
    child.terminate();
    log.extend(lines.iter().map(|line| line + "\n"));
    assert!(log.contains("queue unreachable"), "no login attempt: {log}");
    assert!(
        log.contains("\"level\":\"TRACE\""),
        "trace logging was not on"
    );
    // As text, or as the byte list the AMQP client's frame dump prints (`[0, 103, 117, ...]`).
    let as_bytes = password
        .bytes()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for shown in [password.as_str(), as_bytes.as_str()] {
        assert!(
            !log.contains(shown),
            "the AMQP password appears in the trace log as {shown:?}"
        );
    }
}
