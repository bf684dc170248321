//! Retry and redrive: `POST /tasks/{id}/retry` answers the task; `POST /tasks/retry` takes a
//! filter and answers a count.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::TaskStatus;

/// Default of [`RetryAllRequest::limit`].
pub const RETRY_ALL_DEFAULT_LIMIT: i64 = 10_000;
/// Largest [`RetryAllRequest::limit`].
pub const RETRY_ALL_MAX_LIMIT: i64 = 100_000;

/// The statuses a task can be retried from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RetryableStatus {
    /// Failed tasks (the default).
    #[default]
    Failed,
    /// Cancelled tasks.
    Cancelled,
}

impl From<RetryableStatus> for TaskStatus {
    fn from(status: RetryableStatus) -> Self {
        match status {
            RetryableStatus::Failed => TaskStatus::Failed,
            RetryableStatus::Cancelled => TaskStatus::Cancelled,
        }
    }
}

/// Body of `POST /tasks/retry`: which finished tasks to queue again. An empty object retries up
/// to 10,000 failed tasks.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RetryAllRequest {
    /// `failed` (the default) or `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RetryableStatus>,
    /// Only tasks of this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Only tasks that finished after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_after: Option<DateTime<Utc>>,
    /// Most tasks to retry: 1 to 100,000, default 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100000))]
    pub limit: Option<i64>,
}

/// Answer of `POST /tasks/retry`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetryAllResult {
    /// Tasks queued again.
    pub retried: u64,
    /// True when the limit was reached: more tasks may match (send the request again).
    pub more: bool,
}
