//! The dashboard's pages (GET). Each reads through bounded, indexed store calls only: capped
//! counts, keyset pages, lookups by key. Live parts are re-fetched as fragments: the overview
//! every five seconds, task lists and a task when `/events` reports a change.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use bgagent_shared::domain::{Task, TaskStatus, parse_agent_name};
use bgagent_shared::store::{AgentOutcomes, LIVE_WINDOW, TaskFilter};
use maud::{Markup, html};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

use super::layout::{self, Nav, csrf_field};
use super::session::Session;
use super::{UiError, UiResult};
use crate::state::AppState;

/// Tasks per page of a list.
pub const PAGE: i64 = 50;
/// Where the overview's counts stop: index scans of at most this many entries each.
pub const OVERVIEW_CAP: i64 = 10_000;
/// The window of the agents page's success and failure counts.
pub const AGENT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Where the agents page's counts stop.
pub const AGENT_CAP: i64 = 1_000;
/// Agents whose counts the agents page shows (by name).
pub const AGENT_ROWS: i64 = 200;
/// Attempts shown on a task's page.
pub const ATTEMPTS_SHOWN: i64 = 200;

/// The notice a redirect after an action asks for (`?notice=`): fixed texts only, so a link
/// cannot put words of its choosing on the page.
#[derive(Debug, Default, Deserialize)]
pub struct Notice {
    #[serde(default)]
    notice: Option<String>,
    // Strings: a flattened struct reads every value as text.
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    more: Option<String>,
}

impl Notice {
    fn text(&self) -> Option<String> {
        Some(match self.notice.as_deref()? {
            "paused" => {
                "Fleet paused: workers finish their current tasks and take no new ones.".into()
            }
            "resumed" => "Fleet resumed.".into(),
            "cancelled" => "Task cancelled.".into(),
            "cancel-requested" => {
                "Cancel requested: the worker running the task was asked to stop it.".into()
            }
            "retried" => "Task queued again.".into(),
            "retried-all" => format!(
                "{} tasks queued again.{}",
                self.n
                    .as_deref()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0),
                if self.more.is_some() {
                    " More match: submit again to continue."
                } else {
                    ""
                }
            ),
            "registered" => "Agent registered.".into(),
            "unregistered" => "Agent unregistered.".into(),
            _ => return None,
        })
    }
}

/// `GET /ui`: the overview.
pub async fn overview(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(notice): Query<Notice>,
) -> UiResult<Html<String>> {
    let live = overview_content(&state, &session).await?;
    let body = html! {
        h1 { "Overview" }
        div #overview-live hx-get="/ui/overview/live" hx-trigger="every 5s" hx-swap="innerHTML"
            aria-live="polite" {
            (live)
        }
    };
    Ok(layout::page(
        "Overview",
        Nav::Overview,
        &session,
        notice.text().as_deref(),
        body,
    ))
}

/// `GET /ui/overview/live`: the overview's figures, for its refresh.
pub async fn overview_live(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> UiResult<Html<String>> {
    Ok(Html(
        overview_content(&state, &session).await?.into_string(),
    ))
}

async fn overview_content(state: &AppState, session: &Session) -> UiResult<Markup> {
    let store = &state.store;
    let (counts, backlog, live, paused) = tokio::try_join!(
        store.overview(OVERVIEW_CAP),
        store.backlog(),
        store.live_workers(),
        store.paused()
    )?;
    let cap = bgagent_shared::store::BACKLOG_COUNT_CAP;
    Ok(html! {
        section aria-labelledby="fleet-heading" {
            h2 #fleet-heading { "Fleet" }
            p {
                "Workers are " strong #fleet-state { (if paused { "paused" } else { "running" }) }
                ". " (live) @if live == 1 { " worker" } @else { " workers" } " alive."
            }
            @if paused {
                form #resume method="post" action="/ui/start" {
                    (csrf_field(session))
                    button #resume-button type="submit" { "Resume the fleet" }
                }
            } @else {
                form #pause method="post" action="/ui/stop" {
                    (csrf_field(session))
                    button #pause-button .danger type="submit" { "Pause the fleet" }
                }
            }
        }
        section aria-labelledby="tasks-heading" {
            h2 #tasks-heading { "Tasks by status" }
            div.cards {
                @for (status, n) in TaskStatus::ALL.iter().zip(counts.by_status) {
                    a.card href={ "/ui/tasks?status=" (status.as_str()) } {
                        div.label { (status.as_str()) }
                        div.value { (layout::capped(n, OVERVIEW_CAP)) }
                    }
                }
            }
        }
        section aria-labelledby="hour-heading" {
            h2 #hour-heading { "Last hour" }
            div.cards {
                div.card { div.label { "succeeded" } div.value #succeeded-last-hour { (layout::capped(counts.succeeded_last_hour, OVERVIEW_CAP)) } }
                div.card { div.label { "failed" } div.value #failed-last-hour { (layout::capped(counts.failed_last_hour, OVERVIEW_CAP)) } }
            }
        }
        section aria-labelledby="backlog-heading" {
            h2 #backlog-heading { "Backlog" }
            div.cards {
                div.card { div.label { "due" } div.value { (layout::capped(backlog.due, cap)) } }
                div.card { div.label { "delayed" } div.value { (layout::capped(backlog.delayed, cap)) } }
                div.card { div.label { "running" } div.value { (layout::capped(backlog.running, cap)) } }
                div.card { div.label { "oldest due" } div.value { (layout::age(backlog.oldest_due_age_secs)) } }
            }
        }
    })
}

/// Query of the task lists.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    before: Option<String>,
    #[serde(flatten)]
    notice: Notice,
}

/// The validated filters of a task list.
struct Filters {
    status: Option<TaskStatus>,
    agent: Option<String>,
    before: Option<Uuid>,
}

impl ListQuery {
    fn filters(&self) -> UiResult<Filters> {
        let non_empty = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let status = non_empty(&self.status)
            .map(|s| {
                s.parse::<TaskStatus>()
                    .map_err(|_| UiError::new(StatusCode::BAD_REQUEST, "Unknown status."))
            })
            .transpose()?;
        let agent = non_empty(&self.agent)
            .map(|a| parse_agent_name("agent", &a))
            .transpose()?;
        let before = non_empty(&self.before)
            .map(|b| {
                b.parse::<Uuid>()
                    .map_err(|_| UiError::new(StatusCode::BAD_REQUEST, "Bad page cursor."))
            })
            .transpose()?;
        Ok(Filters {
            status,
            agent,
            before,
        })
    }
}

/// One page of tasks (newest first) and the cursor of the next, if any.
async fn task_page(state: &AppState, filters: &Filters) -> UiResult<(Vec<Task>, Option<Uuid>)> {
    let mut tasks = state
        .store
        .tasks(&TaskFilter {
            status: filters.status,
            agent: filters.agent.clone(),
            before: filters.before,
            limit: PAGE + 1,
            full: false,
        })
        .await?;
    let more = tasks.len() > usize::try_from(PAGE).unwrap_or(usize::MAX);
    tasks.truncate(usize::try_from(PAGE).unwrap_or(usize::MAX));
    let next = if more {
        tasks.last().map(|t| t.id)
    } else {
        None
    };
    Ok((tasks, next))
}

/// A query string of name/value pairs (empty values left out).
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let kept: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| (*k, v)))
        .collect();
    serde_urlencoded::to_string(kept).unwrap_or_default()
}

/// `GET /ui/tasks`: filters, find, and a page of tasks; the first page updates live.
pub async fn tasks(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(q): Query<ListQuery>,
) -> UiResult<Html<String>> {
    let filters = q.filters()?;
    let ((tasks, next), names) = tokio::try_join!(task_page(&state, &filters), async {
        state
            .store
            .agent_names(AGENT_ROWS)
            .await
            .map_err(UiError::from)
    })?;
    let body = tasks_body(&filters, &tasks, next, &names, None);
    Ok(layout::page(
        "Tasks",
        Nav::Tasks,
        &session,
        q.notice.text().as_deref(),
        body,
    ))
}

fn tasks_body(
    filters: &Filters,
    tasks: &[Task],
    next: Option<Uuid>,
    names: &[String],
    find_error: Option<&str>,
) -> Markup {
    let status = filters.status.map(TaskStatus::as_str);
    let agent = filters.agent.as_deref();
    let filter_query = query(&[("status", status), ("agent", agent)]);
    let events = format!("/events?{}", query(&[("agent", agent)]));
    let rows_url = format!("/ui/tasks/rows?{filter_query}");
    let table = html! {
        div.table-wrap {
            table #tasks {
                caption.muted { "Newest first" }
                (layout::task_table_head(None))
                @if filters.before.is_none() {
                    tbody #task-rows hx-get=(rows_url) hx-trigger="sse:task throttle:1s"
                        hx-swap="innerHTML" aria-live="polite" aria-relevant="additions text" {
                        (layout::task_rows(tasks, None))
                    }
                } @else {
                    tbody #task-rows { (layout::task_rows(tasks, None)) }
                }
            }
        }
    };
    html! {
        h1 { "Tasks" }
        form #task-filter .bar method="get" action="/ui/tasks" role="search" aria-label="Filter tasks" {
            label for="filter-status" { "Status"
                select #filter-status name="status" {
                    option value="" selected[status.is_none()] { "any" }
                    @for s in TaskStatus::ALL {
                        option value=(s.as_str()) selected[status == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            label for="filter-agent" { "Agent"
                input #filter-agent name="agent" list="agent-names" value=[agent]
                    autocomplete="off" spellcheck="false";
            }
            datalist #agent-names { @for name in names { option value=(name) {} } }
            button type="submit" { "Filter" }
        }
        form #find .bar method="get" action="/ui/find" role="search" aria-label="Find a task" {
            label for="find-q" { "Task id or idempotency key"
                input #find-q name="q" required maxlength="255" spellcheck="false";
            }
            button.secondary type="submit" { "Find" }
        }
        @if let Some(message) = find_error {
            p.alert role="alert" { (message) }
        }
        @if filters.before.is_none() {
            div #tasks-live hx-ext="sse" sse-connect=(events) {
                // The table body refreshes at most once a second while events stream (throttle,
                // which drops the events in between); this one refreshes it once more after the
                // last. htmx lets one element handle an event once, so the two triggers live on
                // two elements.
                div hidden hx-get=(rows_url) hx-trigger="sse:task delay:1500ms, sse:reset"
                    hx-target="#task-rows" hx-swap="innerHTML" {}
                (table)
            }
        } @else {
            (table)
        }
        @if let Some(cursor) = next {
            p.pager {
                a href={ "/ui/tasks?" (query(&[("status", status), ("agent", agent), ("before", Some(&cursor.to_string()))])) } rel="next" { "Older" }
            }
        }
    }
}

/// `GET /ui/tasks/rows`: the rows of a list's first page, for its live refresh.
pub async fn task_rows(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> UiResult<Html<String>> {
    let mut filters = q.filters()?;
    filters.before = None;
    let (tasks, _) = task_page(&state, &filters).await?;
    Ok(Html(layout::task_rows(&tasks, None).into_string()))
}

/// Query of the find form.
#[derive(Debug, Deserialize)]
pub struct FindQuery {
    #[serde(default)]
    q: String,
}

/// `GET /ui/find?q=`: go to the task with this id or idempotency key, or say there is none.
pub async fn find(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(find): Query<FindQuery>,
) -> UiResult<Response> {
    let q = find.q.trim();
    if q.is_empty() {
        return Ok(Redirect::to("/ui/tasks").into_response());
    }
    let by_id = match q.parse::<Uuid>() {
        Ok(id) => state.store.task(id).await?,
        Err(_) => None,
    };
    let found = match by_id {
        Some(task) => Some(task),
        // Keys are at most 255 bytes; a longer text cannot be one.
        None if q.len() <= 255 => state.store.task_by_key(q).await?,
        None => None,
    };
    if let Some(task) = found {
        return Ok(Redirect::to(&format!("/ui/tasks/{}", task.id)).into_response());
    }
    let filters = Filters {
        status: None,
        agent: None,
        before: None,
    };
    let (tasks, next) = task_page(&state, &filters).await?;
    let names = state.store.agent_names(AGENT_ROWS).await?;
    let message = format!(
        "No task has the id or idempotency key “{}”.",
        layout::truncate(q, 100)
    );
    let body = tasks_body(&filters, &tasks, next, &names, Some(&message));
    Ok((
        StatusCode::NOT_FOUND,
        layout::page("Tasks", Nav::Tasks, &session, None, body),
    )
        .into_response())
}

/// A task by the id in the path, or a 404 page.
async fn load_task(state: &AppState, id: &str) -> UiResult<Task> {
    let not_found = || UiError::not_found(format!("No task {}.", layout::truncate(id, 40)));
    let id = id.parse::<Uuid>().map_err(|_| not_found())?;
    state.store.task(id).await?.ok_or_else(not_found)
}

/// `GET /ui/tasks/{id}`: every field, meta, result or error, the attempts; live.
pub async fn task(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Query(notice): Query<Notice>,
) -> UiResult<Html<String>> {
    let task = load_task(&state, &id).await?;
    let content = task_content(&state, &session, &task).await?;
    let body = html! {
        h1 { "Task " span.mono { (task.id) } }
        div #task-events hx-ext="sse" sse-connect={ "/events?task_id=" (task.id) } {
            (task_live_region(&task, content))
        }
    };
    Ok(layout::page(
        &format!("Task {}", task.id),
        Nav::Tasks,
        &session,
        notice.text().as_deref(),
        body,
    ))
}

/// `GET /ui/tasks/{id}/live`: the task's content, for its live refresh.
pub async fn task_live(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Query(seen): Query<Seen>,
) -> UiResult<Response> {
    let task = load_task(&state, &id).await?;
    // The stream opens with the task's current state, and other events may change nothing shown:
    // answering 204 (htmx then swaps nothing) keeps the page, and a button being clicked, in place.
    if seen.seen.as_deref() == Some(seen_stamp(&task).as_str()) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let content = task_content(&state, &session, &task).await?;
    Ok(Html(task_live_region(&task, content).into_string()).into_response())
}

/// `?seen=` of a task's live fragment: the `updated_at` the page shows.
#[derive(Debug, Deserialize)]
pub struct Seen {
    seen: Option<String>,
}

fn seen_stamp(task: &Task) -> String {
    task.updated_at
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The part of a task's page its events refresh, replaced whole, with the version it shows.
fn task_live_region(task: &Task, content: Markup) -> Markup {
    html! {
        div #task-live hx-get={ "/ui/tasks/" (task.id) "/live?seen=" (seen_stamp(task)) }
            hx-trigger="sse:task, sse:reset" hx-swap="outerHTML" aria-live="polite" {
            (content)
        }
    }
}

/// Milliseconds as fractional seconds (precise well past any age shown).
#[allow(clippy::cast_precision_loss)]
fn millis_to_secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

async fn task_content(state: &AppState, session: &Session, task: &Task) -> UiResult<Markup> {
    let attempts = state.store.task_attempts(task.id, ATTEMPTS_SHOWN).await?;
    let cancellable = matches!(task.status, TaskStatus::Queued | TaskStatus::Running);
    let retryable = matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled);
    Ok(html! {
        p {
            "Status: "
            span #task-status class={ "status status-" (task.status.as_str()) } { (task.status.as_str()) }
            @if task.cancel_requested && task.status == TaskStatus::Running { " (cancel requested)" }
        }
        div.actions {
            @if cancellable {
                form #cancel method="post" action={ "/ui/tasks/" (task.id) "/cancel" } {
                    (csrf_field(session))
                    button #cancel-button .danger type="submit" { "Cancel" }
                }
            }
            @if retryable {
                form #retry method="post" action={ "/ui/tasks/" (task.id) "/retry" } {
                    (csrf_field(session))
                    button #retry-button type="submit" { "Retry" }
                }
            }
        }
        dl.fields {
            dt { "ID" } dd.mono { (task.id) }
            dt { "Agent" } dd { a href={ "/ui/tasks?agent=" (task.agent) } { (task.agent) } }
            dt { "Command" } dd { pre { (task.command) } }
            dt { "Attempts" } dd { (task.attempts) " of " (task.max_attempts) }
            dt { "Timeout" } dd { (task.timeout_secs) " s" }
            dt { "Idempotency key" } dd.mono { (task.idempotency_key.as_deref().unwrap_or("—")) }
            dt { "Run at" } dd { (layout::time(task.run_at)) }
            dt { "Published" } dd { (layout::opt_time(task.published_at)) }
            dt { "Worker" } dd.mono { (task.worker_id.as_deref().unwrap_or("—")) }
            dt { "Lease until" } dd { (layout::opt_time(task.lease_until)) }
            dt { "Created" } dd { (layout::time(task.created_at)) }
            dt { "Started" } dd { (layout::opt_time(task.started_at)) }
            dt { "Finished" } dd { (layout::opt_time(task.finished_at)) }
            dt { "Updated" } dd { (layout::time(task.updated_at)) }
        }
        h2 { "Meta" }
        pre #task-meta { (pretty(&task.meta)) }
        @if let Some(result) = &task.result {
            h2 { "Result" }
            pre #task-result { (pretty(result)) }
        }
        @if let Some(error) = &task.last_error {
            h2 { "Last error" }
            pre #task-error { (error) }
        }
        h2 #attempts-heading { "Attempts" }
        @if attempts.is_empty() {
            p.muted { "No attempt has finished yet." }
        }
        ol #attempts .timeline aria-labelledby="attempts-heading" {
            @for a in &attempts {
                li class={ "outcome-" (a.outcome) } {
                    strong { "Attempt " (a.attempt) ": " (a.outcome) }
                    " · " span.mono { (a.worker_id.as_deref().unwrap_or("—")) }
                    br;
                    span.muted {
                        (layout::time(a.started_at)) " → " (layout::time(a.finished_at))
                        " (" (layout::age(millis_to_secs((a.finished_at - a.started_at).num_milliseconds()))) ")"
                    }
                    @if let Some(error) = &a.error { pre { (error) } }
                }
            }
        }
    })
}

/// Query of the failed list.
#[derive(Debug, Default, Deserialize)]
pub struct FailedQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(flatten)]
    list: ListQuery,
}

/// `GET /ui/failed`: failed (or cancelled) tasks, retry one, retry all that match.
pub async fn failed(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(q): Query<FailedQuery>,
) -> UiResult<Html<String>> {
    let status = match q.status.as_deref().unwrap_or("failed") {
        "" | "failed" => TaskStatus::Failed,
        "cancelled" => TaskStatus::Cancelled,
        _ => {
            return Err(UiError::new(
                StatusCode::BAD_REQUEST,
                "The list shows failed or cancelled tasks.",
            ));
        }
    };
    let mut filters = q.list.filters()?;
    filters.status = Some(status);
    let (tasks, next) = task_page(&state, &filters).await?;
    let agent = filters.agent.as_deref();
    let tab = |s: TaskStatus, label: &str| {
        html! {
            a href={ "/ui/failed?status=" (s.as_str()) } aria-current=[(s == status).then_some("page")] { (label) }
        }
    };
    let body = html! {
        h1 { "Failed tasks" }
        nav.tabs aria-label="Which tasks" { (tab(TaskStatus::Failed, "Failed")) (tab(TaskStatus::Cancelled, "Cancelled")) }
        form #failed-filter .bar method="get" action="/ui/failed" role="search" aria-label="Filter by agent" {
            input type="hidden" name="status" value=(status.as_str());
            label for="failed-agent" { "Agent"
                input #failed-agent name="agent" value=[agent] autocomplete="off" spellcheck="false";
            }
            button.secondary type="submit" { "Filter" }
        }
        h2 #retry-all-heading { "Retry all that match" }
        form #retry-all .bar method="post" action="/ui/tasks/retry" aria-labelledby="retry-all-heading" {
            (csrf_field(&session))
            input type="hidden" name="status" value=(status.as_str());
            label for="retry-agent" { "Agent (empty: all)"
                input #retry-agent name="agent" value=[agent] autocomplete="off" spellcheck="false";
            }
            label for="retry-after" { "Finished after (UTC)"
                input #retry-after name="finished_after" type="datetime-local" step="1";
            }
            button type="submit" { "Retry all " (status.as_str()) " tasks that match" }
        }
        h2 { "Tasks, newest first" }
        div.table-wrap {
            table #tasks {
                (layout::task_table_head(Some("Retry")))
                tbody #task-rows { (layout::task_rows(&tasks, Some((&session, status.as_str())))) }
            }
        }
        @if let Some(cursor) = next {
            p.pager {
                a href={ "/ui/failed?" (query(&[("status", Some(status.as_str())), ("agent", agent), ("before", Some(&cursor.to_string()))])) } rel="next" { "Older" }
            }
        }
    };
    Ok(layout::page(
        "Failed tasks",
        Nav::Failed,
        &session,
        q.list.notice.text().as_deref(),
        body,
    ))
}

/// `GET /ui/agents`.
pub async fn agents(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(notice): Query<Notice>,
) -> UiResult<Html<String>> {
    agents_page(&state, &session, notice.text().as_deref(), None, ("", "")).await
}

/// The agents page; `error` and the posted `values` when a registration was refused.
pub async fn agents_page(
    state: &AppState,
    session: &Session,
    notice: Option<&str>,
    error: Option<&str>,
    values: (&str, &str),
) -> UiResult<Html<String>> {
    let (agents, outcomes) = tokio::try_join!(
        state.store.agents(),
        state
            .store
            .agent_outcomes(AGENT_WINDOW, AGENT_CAP, AGENT_ROWS)
    )?;
    let outcomes: HashMap<&str, &AgentOutcomes> =
        outcomes.iter().map(|o| (o.agent.as_str(), o)).collect();
    let body = html! {
        h1 { "Agents" }
        div.table-wrap {
            table #agents {
                caption.muted { "Succeeded and failed: tasks created in the last 24 hours" }
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Endpoint" }
                    th scope="col" { "Succeeded" } th scope="col" { "Failed" }
                    th scope="col" { "Registered" } th scope="col" { "Unregister" }
                } }
                tbody {
                    @for agent in &agents {
                        tr data-agent=(agent.name) {
                            td { a href={ "/ui/tasks?agent=" (agent.name) } { (agent.name) } }
                            td.mono { (agent.endpoint) }
                            @match outcomes.get(agent.name.as_str()) {
                                Some(o) => {
                                    td { (layout::capped(o.succeeded, AGENT_CAP)) }
                                    td { (layout::capped(o.failed, AGENT_CAP)) }
                                }
                                None => { td.muted { "—" } td.muted { "—" } }
                            }
                            td { (layout::time(agent.created_at)) }
                            td {
                                form.unregister.inline method="post" action={ "/ui/agents/" (agent.name) "/delete" } {
                                    (csrf_field(session))
                                    button.secondary type="submit" aria-label={ "Unregister " (agent.name) } { "Unregister" }
                                }
                            }
                        }
                    }
                    @if agents.is_empty() {
                        tr { td.muted colspan="6" { "No agent is registered." } }
                    }
                }
            }
        }
        h2 #register-heading { "Register an agent" }
        @if let Some(message) = error {
            p.alert role="alert" { (message) }
        }
        form #register .stack method="post" action="/ui/agents" aria-labelledby="register-heading" {
            (csrf_field(session))
            label for="agent-name" { "Name" }
            input #agent-name name="name" required maxlength="64"
                autocomplete="off" spellcheck="false" value=(values.0);
            label for="agent-endpoint" { "Endpoint (workers POST its tasks here)" }
            input #agent-endpoint name="endpoint" type="url" required maxlength="2048"
                placeholder="https://agent.example/run" value=(values.1);
            button type="submit" { "Register" }
        }
    };
    Ok(layout::page("Agents", Nav::Agents, session, notice, body))
}

/// `GET /ui/workers`.
pub async fn workers(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> UiResult<Html<String>> {
    let (workers, now) = tokio::try_join!(state.store.workers(), state.store.now())?;
    let body = html! {
        h1 { "Workers" }
        div.table-wrap {
            table #workers {
                caption.muted { "Running workers and those seen in the last hour" }
                thead { tr {
                    th scope="col" { "ID" } th scope="col" { "Host" } th scope="col" { "Version" }
                    th scope="col" { "Heartbeat" } th scope="col" { "In flight" }
                    th scope="col" { "Paused" } th scope="col" { "Live" } th scope="col" { "Started" }
                } }
                tbody {
                    @for w in &workers {
                        @let age = millis_to_secs((now - w.last_seen).num_milliseconds());
                        @let live = w.stopped_at.is_none() && age < LIVE_WINDOW.as_secs_f64();
                        tr data-worker-id=(w.id) {
                            td.mono { (w.id) }
                            td { (w.host) }
                            td { (w.version) }
                            td { (layout::age(age)) " ago" }
                            td { (w.in_flight) }
                            td { (if w.paused { "yes" } else { "no" }) }
                            td { @if live { "live" } @else if w.stopped_at.is_some() { "stopped" } @else { "lost" } }
                            td { (layout::time(w.started_at)) }
                        }
                    }
                    @if workers.is_empty() {
                        tr { td.muted colspan="8" { "No worker has reported." } }
                    }
                }
            }
        }
    };
    Ok(layout::page("Workers", Nav::Workers, &session, None, body))
}

/// Any other `/ui/…` path.
pub async fn not_found() -> UiError {
    UiError::not_found("No such page.")
}
