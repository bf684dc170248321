//! What the dashboard's forms do. Each is a POST carrying the session's CSRF token ([`Posted`]),
//! calls the same function as its REST route (so the control broadcast, the cancel message to
//! the worker and the retry's publish happen exactly as through the API), then redirects
//! (303, post/redirect/get) to a page with a fixed notice.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use bgagent_shared::domain::{TaskStatus, parse_agent_name};
use bgagent_shared::store::RetryFilter;
use bgagent_types::RegisterRequest;
use bgagent_types::retry::RETRY_ALL_DEFAULT_LIMIT;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::csrf::Posted;
use super::{UiError, UiResult, pages};
use crate::error::ApiError;
use crate::routes;
use crate::state::AppState;

/// A form with no field but its CSRF token.
#[derive(Debug, Deserialize)]
pub struct Empty {}

/// `POST /ui/stop`: pause the fleet (as `POST /stop`).
pub async fn stop(State(state): State<AppState>, _posted: Posted<Empty>) -> UiResult<Redirect> {
    routes::control::set_paused(&state, true).await?;
    Ok(Redirect::to("/ui?notice=paused"))
}

/// `POST /ui/start`: resume the fleet (as `POST /start`).
pub async fn start(State(state): State<AppState>, _posted: Posted<Empty>) -> UiResult<Redirect> {
    routes::control::set_paused(&state, false).await?;
    Ok(Redirect::to("/ui?notice=resumed"))
}

fn task_id(raw: &str) -> UiResult<Uuid> {
    raw.parse().map_err(|_| UiError::not_found("No such task."))
}

/// `POST /ui/tasks/{id}/cancel` (as `POST /tasks/{id}/cancel`).
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _posted: Posted<Empty>,
) -> UiResult<Redirect> {
    let id = task_id(&id)?;
    let (status, _task) = routes::tasks::cancel(&state, id).await?;
    let notice = if status == StatusCode::ACCEPTED {
        "cancel-requested"
    } else {
        "cancelled"
    };
    Ok(Redirect::to(&format!("/ui/tasks/{id}?notice={notice}")))
}

/// The retry form: `from` names the failed list's tab when the button was in it.
#[derive(Debug, Deserialize)]
pub struct RetryForm {
    #[serde(default)]
    from: Option<String>,
}

/// `POST /ui/tasks/{id}/retry` (as `POST /tasks/{id}/retry`).
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: Posted<RetryForm>,
) -> UiResult<Redirect> {
    let id = task_id(&id)?;
    routes::retry::retry(&state, id).await?;
    Ok(Redirect::to(&match posted.form.from.as_deref() {
        Some(tab @ ("failed" | "cancelled")) => format!("/ui/failed?status={tab}&notice=retried"),
        _ => format!("/ui/tasks/{id}?notice=retried"),
    }))
}

/// The "retry all" form.
#[derive(Debug, Deserialize)]
pub struct RetryAllForm {
    #[serde(default)]
    status: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    finished_after: String,
}

/// A time from the form: RFC 3339, or a `datetime-local` value (`2026-12-07T05:00[:00]`) taken
/// as UTC.
fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
        return Some(at.with_timezone(&Utc));
    }
    [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(raw, format).ok())
    .map(|at| at.and_utc())
}

/// `POST /ui/tasks/retry`: queue again the failed (or cancelled) tasks that match (as
/// `POST /tasks/retry`, with its default limit).
pub async fn retry_all(
    State(state): State<AppState>,
    posted: Posted<RetryAllForm>,
) -> UiResult<Redirect> {
    let form = posted.form;
    let status = match form.status.as_str() {
        "" | "failed" => TaskStatus::Failed,
        "cancelled" => TaskStatus::Cancelled,
        _ => {
            return Err(UiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Only failed or cancelled tasks are retried.",
            ));
        }
    };
    let agent = match form.agent.trim() {
        "" => None,
        name => Some(parse_agent_name("agent", name)?),
    };
    let finished_after = match form.finished_after.trim() {
        "" => None,
        raw => Some(parse_time(raw).ok_or_else(|| {
            UiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Finished after: give a date and time such as 2026-12-07T05:00 (UTC).",
            )
        })?),
    };
    let filter = RetryFilter {
        status,
        agent,
        finished_after,
    };
    let result = routes::retry::retry_matching(&state, &filter, RETRY_ALL_DEFAULT_LIMIT).await?;
    Ok(Redirect::to(&format!(
        "/ui/failed?status={}&notice=retried-all&n={}{}",
        status.as_str(),
        result.retried,
        if result.more { "&more=1" } else { "" }
    )))
}

/// The register form.
#[derive(Debug, Deserialize)]
pub struct RegisterForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    endpoint: String,
}

/// `POST /ui/agents`: register an agent with the rules of `POST /agents/register`; a refused
/// one shows the agents page again with the reason (422) and the values typed.
pub async fn register(State(state): State<AppState>, posted: Posted<RegisterForm>) -> Response {
    let Posted { session, form } = posted;
    let request = RegisterRequest {
        name: form.name.trim().to_owned(),
        endpoint: form.endpoint.trim().to_owned(),
        meta: None,
    };
    match routes::agents::register_agent(&state, request).await {
        Ok(_) => Redirect::to("/ui/agents?notice=registered").into_response(),
        Err(e @ (ApiError::Unprocessable { .. } | ApiError::BadRequest(_))) => {
            let message = e.to_string();
            match pages::agents_page(
                &state,
                &session,
                None,
                Some(&message),
                (&form.name, &form.endpoint),
            )
            .await
            {
                Ok(page) => (StatusCode::UNPROCESSABLE_ENTITY, page).into_response(),
                Err(e) => e.into_response(),
            }
        }
        Err(e) => UiError::from(e).into_response(),
    }
}

/// `POST /ui/agents/{name}/delete` (as `POST /agents/unregister`).
pub async fn unregister(
    State(state): State<AppState>,
    Path(name): Path<String>,
    _posted: Posted<Empty>,
) -> UiResult<Redirect> {
    routes::agents::unregister_agent(&state, &name).await?;
    Ok(Redirect::to("/ui/agents?notice=unregistered"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_times_are_read_as_utc() {
        let expected = "2026-12-07T05:00:00Z".parse::<DateTime<Utc>>().ok();
        assert_eq!(parse_time("2026-12-07T05:00"), expected);
        assert_eq!(parse_time("2026-12-07T05:00:00"), expected);
        assert_eq!(parse_time("2026-12-07T06:00:00+01:00"), expected);
        assert_eq!(parse_time("yesterday"), None);
    }
}
