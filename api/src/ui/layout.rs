//! The page shell and the markup several pages share. maud escapes every interpolated value, so
//! task data (commands, meta, errors, agent names) is always shown as text.

use axum::http::StatusCode;
use axum::response::Html;
use bgagent_shared::domain::{Task, TaskStatus};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::assets;
use super::session::Session;

/// htmx settings, read from its meta tag: no inline styles (the CSP allows none), no `eval`
/// (nor `hx-on`), no scripts from swapped content, no page copies kept in local storage.
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0,"selfRequestsOnly":true}"#;

/// The pages of the main navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// `/ui`.
    Overview,
    /// `/ui/tasks` and a task.
    Tasks,
    /// `/ui/failed`.
    Failed,
    /// `/ui/agents`.
    Agents,
    /// `/ui/workers`.
    Workers,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="htmx-config" content=(HTMX_CONFIG);
            meta name="referrer" content="no-referrer";
            // No favicon request (an empty data: icon, which the CSP's img-src allows).
            link rel="icon" href="data:,";
            title { (title) " · Background Agent" }
            link rel="stylesheet" href=(assets::url("dashboard.css"));
            script src=(assets::url("htmx-2.0.11.min.js")) defer {}
            script src=(assets::url("htmx-ext-sse-2.2.4.min.js")) defer {}
        }
    }
}

/// A hidden field with the session's CSRF token, for every state-changing form.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name=(super::csrf::FIELD) value=(session.csrf); }
}

/// A signed-in page: navigation, sign-out, an optional notice, then `body`.
pub fn page(
    title: &str,
    nav: Nav,
    session: &Session,
    notice: Option<&str>,
    body: Markup,
) -> Html<String> {
    let link = |href: &str, label: &str, this: Nav| {
        html! {
            li { a href=(href) aria-current=[(nav == this).then_some("page")] { (label) } }
        }
    };
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    a.skip href="#main" { "Skip to content" }
                    header {
                        span.brand { "Background Agent" }
                        nav aria-label="Main" {
                            ul {
                                (link("/ui", "Overview", Nav::Overview))
                                (link("/ui/tasks", "Tasks", Nav::Tasks))
                                (link("/ui/failed", "Failed", Nav::Failed))
                                (link("/ui/agents", "Agents", Nav::Agents))
                                (link("/ui/workers", "Workers", Nav::Workers))
                            }
                        }
                        form #logout method="post" action="/ui/logout" {
                            (csrf_field(session))
                            button.secondary type="submit" { "Sign out" }
                        }
                    }
                    main #main {
                        @if let Some(text) = notice {
                            p.notice role="status" { (text) }
                        }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

/// The sign-in page, with an error when the last attempt failed.
pub fn login_page(error: Option<&str>) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head("Sign in"))
                body {
                    main #main .login {
                        h1 { "Background Agent" }
                        p.muted { "Sign in with the API key (BACKGROUND_AGENT_API_KEY)." }
                        @if let Some(text) = error {
                            p.alert role="alert" { (text) }
                        }
                        form #login .stack method="post" action="/ui/login" {
                            label for="api_key" { "API key" }
                            input #api_key name="api_key" type="password"
                                autocomplete="current-password" required autofocus;
                            button type="submit" { "Sign in" }
                        }
                    }
                }
            }
        }
        .into_string(),
    )
}

/// A page for an error: its status and message, and a way back.
pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    let reason = status.canonical_reason().unwrap_or("Error");
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(reason))
                body {
                    main #main {
                        h1 { (status.as_u16()) " " (reason) }
                        p.alert role="alert" { (message) }
                        p { a href="/ui" { "Back to the dashboard" } }
                    }
                }
            }
        }
        .into_string(),
    )
}

/// A time as `2026-12-07 05:01:02Z`.
pub fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// An optional time, or a dash.
pub fn opt_time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "—".to_owned(), time)
}

/// A duration in seconds as a short age: `4 s`, `3 min`, `2 h 5 min`, `3 d`.
pub fn age(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "0 s".into();
    }
    // Whole seconds; an age of more than 292 billion years is not shown precisely.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = secs as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A count that stopped at `cap` reads "at least".
pub fn capped(n: i64, cap: i64) -> String {
    if n >= cap {
        format!("{}+", thousands(cap))
    } else {
        thousands(n)
    }
}

fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A status as text with its colour class.
pub fn status(status: TaskStatus) -> Markup {
    html! { span class={ "status status-" (status.as_str()) } { (status.as_str()) } }
}

/// At most `max` characters of `text`, with an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The header of a task table; `extra` names a last column (the failed list's retry buttons).
pub fn task_table_head(extra: Option<&str>) -> Markup {
    html! {
        thead {
            tr {
                th scope="col" { "Task" }
                th scope="col" { "Agent" }
                th scope="col" { "Command" }
                th scope="col" { "Status" }
                th scope="col" { "Attempts" }
                th scope="col" { "Created" }
                th scope="col" { "Updated" }
                @if let Some(label) = extra { th scope="col" { (label) } }
            }
        }
    }
}

/// The rows of a task table. With a session, each row gets a retry form (the failed list).
pub fn task_rows(tasks: &[Task], retry: Option<(&Session, &str)>) -> Markup {
    html! {
        @for task in tasks {
            tr data-task-id=(task.id) {
                td.mono { a href={ "/ui/tasks/" (task.id) } { (task.id) } }
                td { (task.agent) }
                td.command title=(truncate(&task.command, 500)) { (truncate(&task.command, 80)) }
                td.status { (status(task.status)) }
                td { (task.attempts) " / " (task.max_attempts) }
                td { (time(task.created_at)) }
                td { (time(task.updated_at)) }
                @if let Some((session, from)) = retry {
                    td {
                        form.retry.inline method="post" action={ "/ui/tasks/" (task.id) "/retry" } {
                            (csrf_field(session))
                            input type="hidden" name="from" value=(from);
                            button.secondary type="submit" aria-label={ "Retry task " (task.id) } { "Retry" }
                        }
                    }
                }
            }
        }
        @if tasks.is_empty() {
            tr { td.muted colspan=(if retry.is_some() { 8 } else { 7 }) { "No tasks." } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_well() {
        assert_eq!(capped(9_999, 10_000), "9,999");
        assert_eq!(capped(10_000, 10_000), "10,000+");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(age(5.2), "5 s");
        assert_eq!(age(3_700.0), "1 h 1 min");
        assert_eq!(age(-1.0), "0 s");
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 2), "hi");
    }

    #[test]
    fn markup_is_escaped() {
        let rendered = error_page(StatusCode::NOT_FOUND, "<script>x</script>").0;
        assert!(rendered.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(!rendered.contains("<script>x"));
    }
}
