//! The egress policy end to end: the API refuses endpoints aimed at metadata and link-local
//! addresses, in every spelling; workers refuse the gateway at start and check every address
//! again at connect time (resolved names and stored IP literals alike). On both engines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use crate::common::{TestApi, assert_error};
use crate::fake_agent::FakeAgent;
use bgagent_shared::domain::TaskStatus;
use bgagent_shared::egress::{EgressConfig, Rules};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

fn egress(allow: &str, deny: &str) -> EgressConfig {
    EgressConfig {
        egress_allow: Rules::parse(allow).unwrap(),
        egress_deny: Rules::parse(deny).unwrap(),
    }
}

async fn register(api: &TestApi, name: &str, endpoint: &str) -> (StatusCode, serde_json::Value) {
    api.post(
        "/agents/register",
        &json!({"name": name, "endpoint": endpoint}),
    )
    .await
}

fn assert_endpoint_refused(got: &(StatusCode, serde_json::Value), endpoint: &str) {
    assert_error(got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(got.1["error"]["field"], "endpoint", "{endpoint}: {}", got.1);
    let message = got.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("egress"), "{endpoint}: {message}");
}

both_engines! {
    async fn registration_refuses_metadata_and_link_local_in_every_spelling(env: TestEnv) {
        let api = env.spawn_api().await;
        for endpoint in [
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://2852039166/",
            "http://0xA9FEA9FE/",
            "http://0251.0376.0251.0376/",
            "http://169.254.170.2/v2/credentials",
            "http://[fe80::1]:8080/",
            "http://[fd00:ec2::254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://0.0.0.0:8080/",
            "https://[::]/",
        ] {
            let got = register(&api, "meta", endpoint).await;
            assert_endpoint_refused(&got, endpoint);
            let message = got.1["error"]["message"].as_str().unwrap();
            assert!(!message.contains("security-credentials"), "{message}");
        }
        let (_, agents) = api.get("/agents").await;
        assert_eq!(agents["agents"], json!([]), "nothing refused was stored");

        // Loopback, private ranges and ordinary names stay allowed by default.
        for (name, endpoint) in [
            ("local", "http://127.0.0.1:9/run"),
            ("local6", "http://[::1]:9/run"),
            ("private", "http://10.1.2.3:8080/"),
            ("ula", "http://[fd12:3456::1]/"),
            ("named", "https://agent.example/run"),
        ] {
            let (status, body) = register(&api, name, endpoint).await;
            assert_eq!(status, StatusCode::OK, "{endpoint}: {body}");
        }
    }
}

both_engines! {
    async fn registration_applies_the_configured_lists(env: TestEnv) {
        let mut config = env.api_config();
        config.egress = egress("169.254.10.0/24", "10.0.0.0/8,agents.internal,169.254.10.1");
        let api = env.spawn_api_with(config).await;
        for endpoint in [
            "http://10.1.2.3/",
            "http://[::ffff:10.1.2.3]/",
            "http://agents.internal/",
            "http://coder.agents.internal:8080/run",
            "http://169.254.10.1/",
            "http://169.254.169.254/",
        ] {
            assert_endpoint_refused(&register(&api, "x", endpoint).await, endpoint);
        }
        // The allow list re-opens part of a range the default refuses.
        let (status, body) = register(&api, "lab", "http://169.254.10.2:8080/").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

both_engines! {
    async fn a_name_resolving_to_a_refused_address_fails_the_task_without_a_request(env: TestEnv) {
        let api = env.spawn_api().await;
        let agent = FakeAgent::start(vec![]).await;
        let port = url::Url::parse(&agent.url).unwrap().port().unwrap();
        // Accepted at registration: the API does not resolve names. The worker resolves `localhost`
        // at connect time and every address it gets is denied.
        let endpoint = format!("http://localhost:{port}/run?token=secret-in-query");
        let (status, body) = register(&api, "near", &endpoint).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let _worker = env
            .spawn_worker_with_egress(env.worker_options(), egress("", "127.0.0.0/8,::1"))
            .await
            .unwrap();

        let task = api
            .enqueue(&json!({"agent": "near", "command": "x", "max_attempts": 3}))
            .await;
        let id = Uuid::parse_str(task["id"].as_str().unwrap()).unwrap();
        let done = env.wait_task(id, WAIT, |t| t.status.is_terminal()).await;
        assert_eq!(done.status, TaskStatus::Failed);
        assert_eq!(done.attempts, 1, "a refused address is not retried");
        let error = done.last_error.unwrap_or_default();
        assert!(error.contains("egress refused"), "{error}");
        assert!(error.contains("BGAGENT_EGRESS_DENY"), "{error}");
        assert!(!error.contains("secret-in-query"), "{error}");
        assert!(agent.receipts().is_empty(), "the agent got a request");
    }
}

both_engines! {
    async fn stored_ip_endpoints_are_checked_at_call_time(env: TestEnv) {
        let api = env.spawn_api().await;
        let agent = FakeAgent::start(vec![]).await;
        // Registered while the policy allowed it (as an endpoint stored before the policy was).
        let (status, body) = register(&api, "stored", &format!("{}/run", agent.url)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let _worker = env
            .spawn_worker_with_egress(env.worker_options(), egress("", "127.0.0.0/8"))
            .await
            .unwrap();

        let task = api
            .enqueue(&json!({"agent": "stored", "command": "x"}))
            .await;
        let id = Uuid::parse_str(task["id"].as_str().unwrap()).unwrap();
        let done = env.wait_task(id, WAIT, |t| t.status.is_terminal()).await;
        assert_eq!(done.status, TaskStatus::Failed);
        let error = done.last_error.unwrap_or_default();
        assert!(
            error.contains("egress refused: address 127.0.0.1"),
            "{error}"
        );
        assert!(agent.receipts().is_empty(), "the agent got a request");
    }
}

both_engines! {
    async fn names_resolving_to_allowed_addresses_still_connect(env: TestEnv) {
        let api = env.spawn_api().await;
        let agent = FakeAgent::start(vec![]).await;
        let port = url::Url::parse(&agent.url).unwrap().port().unwrap();
        let (status, body) = register(&api, "near", &format!("http://localhost:{port}/run")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // Only IPv6 loopback denied: `localhost` still reaches the agent on 127.0.0.1.
        let _worker = env
            .spawn_worker_with_egress(env.worker_options(), egress("", "::1"))
            .await
            .unwrap();

        let task = api.enqueue(&json!({"agent": "near", "command": "x"})).await;
        let id = Uuid::parse_str(task["id"].as_str().unwrap()).unwrap();
        let done = env.wait_task(id, WAIT, |t| t.status.is_terminal()).await;
        assert_eq!(done.status, TaskStatus::Succeeded, "{:?}", done.last_error);
        assert_eq!(agent.receipts().len(), 1);
    }
}

both_engines! {
    async fn the_gateway_url_is_checked_at_worker_start(env: TestEnv) {
        for url in [
            "http://169.254.169.254/",
            "http://[::ffff:169.254.169.254]/",
            "http://0xA9FEA9FE/",
        ] {
            let mut options = env.worker_options();
            options.omni_gateway_url = Some(url.into());
            let err = env
                .spawn_worker_with_egress(options, EgressConfig::default())
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("OMNI_GATEWAY_URL"), "{url}: {err:?}");
            assert!(err.contains("egress refused"), "{url}: {err:?}");
        }
        let mut options = env.worker_options();
        options.omni_gateway_url = Some("http://10.0.0.1/".into());
        let err = env
            .spawn_worker_with_egress(options, egress("", "10.0.0.0/8"))
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("OMNI_GATEWAY_URL"), "{err:?}");

        // The allow list re-opens it (a test double on a link-local address, say).
        let mut options = env.worker_options();
        options.omni_gateway_url = Some("http://169.254.169.254/".into());
        let worker = env
            .spawn_worker_with_egress(options, egress("169.254.169.254", ""))
            .await
            .unwrap();
        worker.stop().await;
    }
}

/// The production overlay's deny list parses, covers the metadata ranges, and leaves agents in the
/// cluster's private ranges reachable.
#[test]
fn the_production_overlay_deny_list_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/k8s/overlays/production/config.yaml"
    );
    let yaml = std::fs::read_to_string(path).unwrap();
    let value = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("BGAGENT_EGRESS_DENY:"))
        .expect("BGAGENT_EGRESS_DENY in the production overlay")
        .trim()
        .trim_matches('"');
    let policy = egress("169.254.0.0/16,fd00::/8,127.0.0.0/8", value).policy();
    for refused in [
        "169.254.169.254",
        "fd00:ec2::254",
        "127.0.0.1",
        "::1",
        "fe80::1",
    ] {
        assert!(
            policy.check_addr(None, refused.parse().unwrap()).is_err(),
            "{refused} is re-opened by an allow entry"
        );
    }
    assert!(policy.check_name("metadata.google.internal").is_err());
    for allowed in ["10.96.0.10", "172.20.1.1", "fd12::1"] {
        assert!(
            policy.check_addr(None, allowed.parse().unwrap()).is_ok(),
            "{allowed}"
        );
    }
}
