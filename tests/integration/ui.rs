//! The dashboard at `/ui` over plain HTTP (the browser tests drive Chromium elsewhere): sign-in,
//! sessions, the rate limit, CSRF, the security headers, every page and every action, on both
//! engines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::both_engines;
use crate::common::{TEST_KEY, TestApi};
use bgagent_shared::domain::TaskStatus;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

/// A browser-like client that does not follow redirects (the tests look at them).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A URL-encoded form body.
fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A signed-in (or not) dashboard visitor.
struct Visitor<'a> {
    api: &'a TestApi,
    http: reqwest::Client,
    cookie: Option<String>,
}

impl<'a> Visitor<'a> {
    fn new(api: &'a TestApi) -> Self {
        Self {
            api,
            http: client(),
            cookie: None,
        }
    }

    async fn answer(res: reqwest::Response) -> Answer {
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.text().await.unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        let mut req = self.http.get(self.api.url(path));
        if let Some(cookie) = &self.cookie {
            req = req.header("cookie", cookie);
        }
        Self::answer(req.send().await.unwrap()).await
    }

    async fn post(&self, path: &str, pairs: &[(&str, &str)]) -> Answer {
        let mut req = self
            .http
            .post(self.api.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(pairs));
        if let Some(cookie) = &self.cookie {
            req = req.header("cookie", cookie);
        }
        Self::answer(req.send().await.unwrap()).await
    }

    /// Sign in with the test key; keeps the cookie and returns the sign-in answer.
    async fn sign_in(&mut self) -> Answer {
        let answer = self.post("/ui/login", &[("api_key", TEST_KEY)]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        assert_eq!(answer.location(), "/ui");
        let set = answer.headers.get(SET_COOKIE).unwrap().to_str().unwrap();
        self.cookie = Some(set.split(';').next().unwrap().to_owned());
        answer
    }

    /// The session's CSRF token, read from a page's sign-out form.
    async fn csrf(&self) -> String {
        let page = self.get("/ui/workers").await;
        token_in(&page.body)
    }
}

fn token_in(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    body[at..at + 64].to_owned()
}

fn assert_security_headers(answer: &Answer, what: &str) {
    let csp = answer
        .headers
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no CSP"))
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'"), "{what}: {csp}");
    assert!(csp.contains("script-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(
        answer.headers["x-content-type-options"], "nosniff",
        "{what}"
    );
    assert_eq!(answer.headers["referrer-policy"], "no-referrer", "{what}");
}

fn id_of(task: &Value) -> Uuid {
    task["id"].as_str().unwrap().parse().unwrap()
}

both_engines! {
    async fn ui_signs_in_with_the_key_and_shows_every_page(env: TestEnv) {
        let api = env.spawn_api().await;
        let mut visitor = Visitor::new(&api);

        // No session: every page sends the visitor to the sign-in page.
        for path in ["/ui", "/ui/tasks", "/ui/workers", "/ui/nope"] {
            let answer = visitor.get(path).await;
            assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
            assert_eq!(answer.location(), "/ui/login", "{path}");
        }
        let login = visitor.get("/ui/login").await;
        assert_eq!(login.status, StatusCode::OK);
        assert!(login.body.contains("id=\"login\"") && login.body.contains("action=\"/ui/login\""));
        assert!(login.body.contains("autocomplete=\"current-password\""));
        assert_security_headers(&login, "login");
        assert_eq!(login.headers["cache-control"], "no-store");

        let answer = visitor.sign_in().await;
        let cookie = answer.headers[SET_COOKIE].to_str().unwrap();
        assert!(cookie.starts_with("bgagent_session="), "{cookie}");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
        }
        assert!(!cookie.contains("Secure"), "{cookie}");
        assert!(!cookie.contains(TEST_KEY));

        // Some data to show.
        let task = api
            .enqueue(&json!({"agent": "echo", "command": "hello <b>world</b>",
                             "idempotency_key": "ui-key-1", "meta": {"note": "<script>"}}))
            .await;
        let id = id_of(&task);
        let (status, _) = api
            .post("/agents/register", &json!({"name": "ui-agent", "endpoint": "https://agent.example.com/run"}))
            .await;
        assert_eq!(status, StatusCode::OK);

        let row = format!("data-task-id=\"{id}\"");
        let task_path = format!("/ui/tasks/{id}");
        let pages: [(&str, &[&str]); 7] = [
            ("/ui", &["id=\"fleet-state\"", ">running<", "id=\"pause\"", "<nav"]),
            ("/ui/tasks", &["id=\"task-filter\"", "id=\"find\"", "<table id=\"tasks\"",
                            &row, "class=\"status\"", "sse-connect=\"/events"]),
            (&task_path, &["id=\"task-status\"", "id=\"attempts\"", "id=\"cancel\"",
                           "hello &lt;b&gt;world&lt;/b&gt;", "&lt;script&gt;", "ui-key-1"]),
            ("/ui/failed", &["id=\"retry-all\"", "<table id=\"tasks\""]),
            ("/ui/agents", &["<table id=\"agents\"", "ui-agent", "https://agent.example.com/run", "id=\"register\""]),
            ("/ui/workers", &["<table id=\"workers\""]),
            ("/ui/tasks?status=queued&agent=echo", &[&row]),
        ];
        for (path, expected) in pages {
            let answer = visitor.get(path).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
            for text in expected {
                assert!(answer.body.contains(text), "{path} lacks {text}");
            }
            assert!(!answer.body.contains("<b>world"), "{path} shows unescaped text");
            assert!(!answer.body.contains(TEST_KEY), "{path} shows the key");
            assert_security_headers(&answer, path);
            assert_eq!(answer.headers["cache-control"], "no-store", "{path}");
            // No inline script or style anywhere.
            assert!(!answer.body.contains("<script>"), "{path}");
            assert!(!answer.body.contains("style="), "{path}");
            assert!(!answer.body.contains("<style"), "{path}");
        }
        // Live fragments.
        let rows = visitor.get("/ui/tasks/rows").await;
        assert!(rows.body.contains(&format!("data-task-id=\"{id}\"")));
        assert!(visitor.get("/ui/overview/live").await.body.contains("fleet-state"));
        let live = visitor.get(&format!("/ui/tasks/{id}/live")).await;
        assert!(live.body.contains("task-status"));
        // The fragment names the version it shows; asked again with it, nothing changed: 204, so
        // htmx swaps nothing (a button being clicked stays in place).
        let seen = live
            .body
            .split("live?seen=")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the live fragment names the version it shows")
            .to_owned();
        let again = visitor.get(&format!("/ui/tasks/{id}/live?seen={seen}")).await;
        assert_eq!(again.status, StatusCode::NO_CONTENT);
        let older = visitor
            .get(&format!("/ui/tasks/{id}/live?seen=2000-01-01T00:00:00.000000Z"))
            .await;
        assert!(older.body.contains("task-status"));

        // Find by id and by idempotency key; an unknown one says so.
        for q in [id.to_string(), "ui-key-1".to_owned()] {
            let answer = visitor.get(&format!("/ui/find?q={q}")).await;
            assert_eq!(answer.status, StatusCode::SEE_OTHER);
            assert_eq!(answer.location(), format!("/ui/tasks/{id}"));
        }
        let missing = visitor.get("/ui/find?q=nothing-here").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert!(missing.body.contains("role=\"alert\""));
        assert_eq!(visitor.get(&format!("/ui/tasks/{}", Uuid::now_v7())).await.status, StatusCode::NOT_FOUND);
        assert_eq!(visitor.get("/ui/tasks/not-a-uuid").await.status, StatusCode::NOT_FOUND);
        assert_eq!(visitor.get("/ui/nope").await.status, StatusCode::NOT_FOUND);

        // The REST API does not take the cookie.
        let rest = visitor.get("/tasks").await;
        assert_eq!(rest.status, StatusCode::UNAUTHORIZED);
        let rest = visitor.post("/stop", &[]).await;
        assert_eq!(rest.status, StatusCode::UNAUTHORIZED);

        // Signing out ends the session on the server: the old cookie no longer works.
        let csrf = visitor.csrf().await;
        let out = visitor.post("/ui/logout", &[("csrf", &csrf)]).await;
        assert_eq!(out.status, StatusCode::SEE_OTHER);
        assert_eq!(out.location(), "/ui/login");
        assert!(out.headers[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
        let after = visitor.get("/ui").await;
        assert_eq!(after.status, StatusCode::SEE_OTHER);
        assert_eq!(after.location(), "/ui/login");
    }
}

both_engines! {
    async fn ui_wrong_keys_are_refused_and_rate_limited(env: TestEnv) {
        let api = env.spawn_api().await;
        let visitor = Visitor::new(&api);
        let wrong = "not-the-key-but-long-enough";
        for _ in 0..5 {
            let answer = visitor.post("/ui/login", &[("api_key", wrong)]).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
            assert!(answer.body.contains("role=\"alert\""));
            assert!(!answer.body.contains(wrong), "the typed key is echoed");
            assert!(answer.headers.get(SET_COOKIE).is_none());
        }
        // The sixth within the minute is refused without looking at the key, even a right one.
        let answer = visitor.post("/ui/login", &[("api_key", TEST_KEY)]).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = answer.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        assert!(answer.headers.get(SET_COOKIE).is_none());

        // A sign-in posted from another site is refused.
        let other = client()
            .post(api.url("/ui/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", "https://evil.example")
            .header("sec-fetch-site", "cross-site")
            .body(form(&[("api_key", TEST_KEY)]))
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::FORBIDDEN);
    }
}

both_engines! {
    async fn ui_actions_need_the_csrf_token_and_do_what_rest_does(env: TestEnv) {
        let api = env.spawn_api().await;
        let mut visitor = Visitor::new(&api);
        visitor.sign_in().await;
        let csrf = visitor.csrf().await;

        // Pause: refused without the token or with another one, and nothing changes.
        for pairs in [vec![], vec![("csrf", "0".repeat(64))]] {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let answer = visitor.post("/ui/stop", &pairs).await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
            assert!(!env.store.paused().await.unwrap());
        }
        let answer = visitor.post("/ui/stop", &[("csrf", &csrf)]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert_eq!(answer.location(), "/ui?notice=paused");
        assert!(env.store.paused().await.unwrap());
        let overview = visitor.get(answer.location()).await;
        assert!(overview.body.contains("Fleet paused"));
        assert!(overview.body.contains("<strong id=\"fleet-state\">paused</strong>"));
        assert!(overview.body.contains("id=\"resume\""));
        let answer = visitor.post("/ui/start", &[("csrf", &csrf)]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert!(!env.store.paused().await.unwrap());

        // Cancel a queued task (no worker runs here), then retry it.
        let id = id_of(&api.enqueue(&json!({"agent": "echo", "command": "x"})).await);
        let refused = visitor.post(&format!("/ui/tasks/{id}/cancel"), &[]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(env.store.task(id).await.unwrap().unwrap().status, TaskStatus::Queued);
        let answer = visitor.post(&format!("/ui/tasks/{id}/cancel"), &[("csrf", &csrf)]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        assert_eq!(answer.location(), format!("/ui/tasks/{id}?notice=cancelled"));
        assert_eq!(env.store.task(id).await.unwrap().unwrap().status, TaskStatus::Cancelled);
        let page = visitor.get(&format!("/ui/tasks/{id}")).await;
        assert!(page.body.contains("id=\"retry\""));
        assert!(!page.body.contains("id=\"cancel\""));
        // Cancelling it again is a conflict, shown as a page.
        let again = visitor.post(&format!("/ui/tasks/{id}/cancel"), &[("csrf", &csrf)]).await;
        assert_eq!(again.status, StatusCode::CONFLICT);

        let refused = visitor.post(&format!("/ui/tasks/{id}/retry"), &[("csrf", "nope")]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(env.store.task(id).await.unwrap().unwrap().status, TaskStatus::Cancelled);
        let answer = visitor
            .post(&format!("/ui/tasks/{id}/retry"), &[("csrf", &csrf), ("from", "cancelled")])
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        assert_eq!(answer.location(), "/ui/failed?status=cancelled&notice=retried");
        assert_eq!(env.store.task(id).await.unwrap().unwrap().status, TaskStatus::Queued);

        // Retry all cancelled tasks of an agent.
        let a = id_of(&api.enqueue(&json!({"agent": "echo", "command": "a"})).await);
        let b = id_of(&api.enqueue(&json!({"agent": "sleep", "command": "b"})).await);
        for t in [a, b] {
            api.post(&format!("/tasks/{t}/cancel"), &json!({})).await;
        }
        let listed = visitor.get("/ui/failed?status=cancelled").await;
        assert!(listed.body.contains(&format!("data-task-id=\"{a}\"")));
        assert!(listed.body.contains("class=\"retry inline\""));
        let refused = visitor.post("/ui/tasks/retry", &[("status", "cancelled")]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(env.store.task(a).await.unwrap().unwrap().status, TaskStatus::Cancelled);
        let answer = visitor
            .post("/ui/tasks/retry", &[("csrf", &csrf), ("status", "cancelled"), ("agent", "echo"),
                                       ("finished_after", "2000-01-01T00:00")])
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        assert_eq!(answer.location(), "/ui/failed?status=cancelled&notice=retried-all&n=1");
        assert!(visitor.get(answer.location()).await.body.contains("1 tasks queued again."));
        assert_eq!(env.store.task(a).await.unwrap().unwrap().status, TaskStatus::Queued);
        assert_eq!(env.store.task(b).await.unwrap().unwrap().status, TaskStatus::Cancelled);

        // Register: refused without the token; the endpoint rules' refusal shows on the page.
        let refused = visitor
            .post("/ui/agents", &[("name", "web"), ("endpoint", "https://agent.example.com/run")])
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(env.store.agent("web").await.unwrap().is_none());
        let bad = visitor
            .post("/ui/agents", &[("csrf", &csrf), ("name", "web"), ("endpoint", "ftp://agent.example.com/run")])
            .await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.body.contains("role=\"alert\"") && bad.body.contains("endpoint"), "{}", bad.body);
        assert!(bad.body.contains("value=\"ftp://agent.example.com/run\""), "the typed values are kept");
        assert!(env.store.agent("web").await.unwrap().is_none());
        let bad_name = visitor
            .post("/ui/agents", &[("csrf", &csrf), ("name", "Bad Name"), ("endpoint", "https://a.example.com")])
            .await;
        assert_eq!(bad_name.status, StatusCode::UNPROCESSABLE_ENTITY);
        let answer = visitor
            .post("/ui/agents", &[("csrf", &csrf), ("name", "web"), ("endpoint", "https://agent.example.com/run")])
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        assert_eq!(env.store.agent("web").await.unwrap().unwrap().endpoint, "https://agent.example.com/run");
        let refused = visitor.post("/ui/agents/web/delete", &[]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(env.store.agent("web").await.unwrap().is_some());
        let answer = visitor.post("/ui/agents/web/delete", &[("csrf", &csrf)]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert!(env.store.agent("web").await.unwrap().is_none());

        // Sign-out needs the token too.
        let refused = visitor.post("/ui/logout", &[]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(visitor.get("/ui").await.status, StatusCode::OK);
    }
}

both_engines! {
    async fn ui_sessions_expire_and_the_secure_setting_marks_the_cookie(env: TestEnv) {
        let mut config = env.api_config();
        config.ui_session_ttl = Duration::from_secs(1);
        config.ui_secure_cookie = true;
        let api = env.spawn_api_with(config).await;
        let mut visitor = Visitor::new(&api);
        let answer = visitor.sign_in().await;
        let cookie = answer.headers[SET_COOKIE].to_str().unwrap();
        assert!(cookie.starts_with("__Host-bgagent_session="), "{cookie}");
        assert!(cookie.contains("; Secure"), "{cookie}");
        assert_eq!(visitor.get("/ui").await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = visitor.get("/ui").await;
        assert_eq!(after.status, StatusCode::SEE_OTHER);
        assert_eq!(after.location(), "/ui/login");
        // A live fragment asks htmx to load the sign-in page instead of swapping in a fragment.
        let res = client()
            .get(api.url("/ui/overview/live"))
            .header("cookie", visitor.cookie.as_deref().unwrap())
            .header("hx-request", "true")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["hx-redirect"], "/ui/login");
    }
}

both_engines! {
    async fn ui_assets_are_served_cached_and_small(env: TestEnv) {
        let api = env.spawn_api().await;
        let visitor = Visitor::new(&api);
        let login = visitor.get("/ui/login").await;
        let mut urls: Vec<String> = login
            .body
            .match_indices("/ui/assets/")
            .map(|(at, _)| {
                let rest = &login.body[at..];
                rest[..rest.find('"').unwrap()].to_owned()
            })
            .collect();
        urls.sort();
        urls.dedup();
        assert_eq!(urls.len(), 3, "{urls:?}");
        let mut total = 0;
        for url in &urls {
            let answer = visitor.get(url).await;
            assert_eq!(answer.status, StatusCode::OK, "{url}");
            assert!(answer.headers["cache-control"].to_str().unwrap().contains("immutable"));
            assert_eq!(answer.headers["x-content-type-options"], "nosniff");
            total += answer.body.len();
        }
        assert!(total <= 300 * 1024, "assets weigh {total} bytes");
        assert!(visitor.get(&urls[0]).await.body.len() > 100);
        // An old version or an unknown file is not served.
        assert_eq!(visitor.get("/ui/assets/000000000000/dashboard.css").await.status, StatusCode::NOT_FOUND);
        assert_eq!(visitor.get("/ui/assets/x/passwd").await.status, StatusCode::NOT_FOUND);
    }
}
