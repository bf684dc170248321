//! `bgagent bench --spawn --prefill N`, continued: sign in to the dashboard and time every page
//! and live fragment on the filled table, the same way as the REST lists (server time as a client
//! on the same host sees it: HTTP and HTML included).

use anyhow::{Context, bail};
use std::time::{Duration, Instant};

use super::bench_lists::{ListFigure, RUNS, figure};

/// Sign in with `api_key` and time the first page of each dashboard view.
pub async fn measure(base_url: &str, api_key: &str) -> anyhow::Result<Vec<ListFigure>> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = base_url.trim_end_matches('/');
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("api_key", api_key)
        .finish();
    let signed_in = http
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body(body)
        .send()
        .await
        .context("sign in to the dashboard")?;
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .with_context(|| format!("sign-in answered {} without a session", signed_in.status()))?;
    let get = |path: String| {
        let request = http.get(format!("{base}{path}")).header("cookie", &cookie);
        async move {
            let answer = request.send().await?;
            // `/ui/find` answers with a redirect to the task it found.
            if !(answer.status().is_success() || answer.status().is_redirection()) {
                bail!("{path}: {}", answer.status());
            }
            Ok(answer.bytes().await?.len())
        }
    };
    // A task of the filled table to open.
    let rows = http
        .get(format!("{base}/ui/tasks/rows?status=failed"))
        .header("cookie", &cookie)
        .send()
        .await?
        .text()
        .await?;
    let task_id = rows
        .split("data-task-id=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("no failed task on the filled table")?
        .to_owned();
    let task = format!("/ui/tasks/{task_id}");
    let find = format!("/ui/find?q={task_id}");
    let pages: [(&str, &str); 13] = [
        ("/ui", "/ui"),
        ("/ui/overview/live", "/ui/overview/live"),
        ("/ui/tasks", "/ui/tasks"),
        ("/ui/tasks?status=succeeded", "/ui/tasks?status=succeeded"),
        ("/ui/tasks?agent=echo", "/ui/tasks?agent=echo"),
        ("/ui/tasks?agent=nobody", "/ui/tasks?agent=nobody"),
        ("/ui/tasks/rows", "/ui/tasks/rows"),
        ("/ui/tasks/{id}", &task),
        ("/ui/find?q={id}", &find),
        ("/ui/failed", "/ui/failed"),
        ("/ui/failed?status=cancelled", "/ui/failed?status=cancelled"),
        ("/ui/agents", "/ui/agents"),
        ("/ui/workers", "/ui/workers"),
    ];
    let mut figures = Vec::with_capacity(pages.len());
    for (label, path) in pages {
        // One warm-up, then the timed runs. Pages have no row count: the size stands in the label.
        get(path.to_owned()).await?;
        let mut times = Vec::with_capacity(RUNS);
        let mut bytes = 0;
        for _ in 0..RUNS {
            let started = Instant::now();
            bytes = get(path.to_owned()).await?;
            times.push(started.elapsed());
        }
        figures.push(figure(format!("{label} ({} KiB)", bytes / 1024), 0, times));
    }
    Ok(figures)
}
