//! One module per resource; each exposes `router()`.

pub mod agents;
pub mod control;
pub mod events;
pub mod health;
pub mod metrics;
pub mod retry;
pub mod tasks;
pub mod workers;

use crate::error::ApiError;

/// Parse an optional page size: default 50, 1..=500.
pub fn parse_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    const DEFAULT: i64 = 50;
    const MAX: i64 = 500;
    let Some(raw) = raw else { return Ok(DEFAULT) };
    match raw.parse::<i64>() {
        Ok(n) if (1..=MAX).contains(&n) => Ok(n),
        _ => Err(ApiError::unprocessable(
            "limit",
            format!("must be an integer from 1 to {MAX}"),
        )),
    }
}
