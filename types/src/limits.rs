//! Sizes and bounds of request fields: the API enforces them and `/openapi.json` states them.

/// Longest command accepted, in bytes.
pub const MAX_COMMAND_BYTES: usize = 65_536;
/// Largest `meta` object accepted, serialized, in bytes.
pub const MAX_META_BYTES: usize = 256 * 1024;
/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// Upper bound of `max_attempts`.
pub const MAX_ATTEMPTS_LIMIT: i32 = 100;
/// Default `max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 5;
/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT_SECS: i32 = 300;
/// Upper bound of `timeout_secs` (one day).
pub const MAX_TIMEOUT_SECS: i32 = 86_400;
/// Upper bound of `delay_secs` (one year).
pub const MAX_DELAY_SECS: i64 = 366 * 86_400;
/// Longest agent endpoint URL accepted.
pub const MAX_ENDPOINT_BYTES: usize = 2048;
