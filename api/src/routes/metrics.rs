//! The HTTP side of the metrics: the request-counting middleware and `GET /metrics`, which
//! samples the system-wide gauges at scrape time.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::{Duration, Instant};

use crate::state::AppState;

/// Middleware counting requests and timing them by matched route (not raw path, which would
/// explode label cardinality with task ids).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [method, route.as_str(), status.as_str()];
    state.metrics.http_requests.with_label_values(&labels).inc();
    state
        .metrics
        .http_duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The `method` label: clients may send any token as a method, so only the standard ones are
/// reported by name.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn serve(State(state): State<AppState>) -> impl IntoResponse {
    sample_system_gauges(&state).await;
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The backlog gauges are refreshed at most this often: every API replica is scraped, and each
/// refresh is a few index scans of up to [`bgagent_shared::store::BACKLOG_COUNT_CAP`] rows.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// How long a scrape waits for the backlog figure.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(2);

/// Refresh the backlog gauges when the last refresh is older than [`BACKLOG_EVERY`]. A scrape
/// that finds another one refreshing serves the current values without waiting. A refresh that
/// fails or takes longer than [`BACKLOG_TIMEOUT`] removes the gauges until the next one
/// succeeds: an absent series is honest, a stale one would keep scaling the workers on a figure
/// nobody measured.
async fn refresh_backlog(state: &AppState) {
    let m = &state.metrics;
    let Ok(mut refreshed) = m.backlog_refreshed.try_lock() else {
        return;
    };
    if refreshed.is_some_and(|at| at.elapsed() < BACKLOG_EVERY) {
        return;
    }
    *refreshed = Some(Instant::now());
    match tokio::time::timeout(BACKLOG_TIMEOUT, state.store.backlog()).await {
        Ok(Ok(backlog)) => {
            for (label, value) in [
                ("due", backlog.due),
                ("delayed", backlog.delayed),
                ("running", backlog.running),
            ] {
                m.backlog_tasks.with_label_values(&[label]).set(value);
            }
            m.oldest_due_age
                .with_label_values::<&str>(&[])
                .set(backlog.oldest_due_age_secs);
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "backlog gauges omitted: the store refused the count");
            m.backlog_tasks.reset();
            m.oldest_due_age.reset();
        }
        Err(_) => {
            tracing::debug!("backlog gauges omitted: the store did not answer in time");
            m.backlog_tasks.reset();
            m.oldest_due_age.reset();
        }
    }
}

/// Refresh the gauges that describe the whole system (queue depths, paused state, live workers,
/// and the backlog when its last count is old enough) at scrape time, each with a short timeout
/// so a dead dependency does not stall the scrape.
async fn sample_system_gauges(state: &AppState) {
    state
        .metrics
        .task_waiters
        .set(i64::try_from(state.waits.waiting()).unwrap_or(i64::MAX));
    state
        .metrics
        .event_streams
        .set(i64::try_from(state.events.open_streams()).unwrap_or(i64::MAX));
    let dropped = bgagent_shared::events::dropped_total();
    let counted = state.metrics.events_dropped.get();
    if dropped > counted {
        state.metrics.events_dropped.inc_by(dropped - counted);
    }
    let timeout = Duration::from_secs(1);
    let (depths, paused, live, ()) = tokio::join!(
        tokio::time::timeout(timeout, state.queue.depths()),
        tokio::time::timeout(timeout, state.store.paused()),
        tokio::time::timeout(timeout, state.store.live_workers()),
        refresh_backlog(state),
    );
    let m = &state.metrics;
    if let Ok(Ok(depths)) = depths {
        m.queue_messages
            .with_label_values(&["tasks"])
            .set(i64::from(depths.ready));
        m.queue_messages
            .with_label_values(&["dead"])
            .set(i64::from(depths.dead));
    }
    if let Ok(Ok(paused)) = paused {
        m.fleet_paused.set(i64::from(paused));
    }
    if let Ok(Ok(live)) = live {
        m.workers_live.set(live);
    }
}
