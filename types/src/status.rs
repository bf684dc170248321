//! Where a task is in its life.

use serde::{Deserialize, Serialize};

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting for a worker (first run, retry or delay).
    Queued,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Failed terminally (attempts exhausted or a non-retryable error).
    Failed,
    /// Cancelled by a client.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in life order.
    pub const ALL: [TaskStatus; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name stored in PostgreSQL and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// True once the task can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the [`TaskStatus`] names. Its message is the rule, so callers can
/// put it under the field they parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("must be one of queued, running, succeeded, failed, cancelled")]
pub struct ParseStatusError;

impl std::str::FromStr for TaskStatus {
    type Err = ParseStatusError;
    fn from_str(s: &str) -> Result<Self, ParseStatusError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or(ParseStatusError)
    }
}

impl TryFrom<String> for TaskStatus {
    type Error = ParseStatusError;
    fn try_from(s: String) -> Result<Self, ParseStatusError> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_value(status).ok(),
                Some(serde_json::Value::from(status.as_str()))
            );
        }
        assert_eq!("Queued".parse::<TaskStatus>(), Err(ParseStatusError));
        assert_eq!(TaskStatus::try_from(String::new()), Err(ParseStatusError));
        let terminal: Vec<_> = TaskStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                TaskStatus::Succeeded,
                TaskStatus::Failed,
                TaskStatus::Cancelled
            ]
        );
    }
}
