//! Domain types that cross the HTTP API, PostgreSQL and the broker, and the rules that turn raw
//! requests into them ("parse, don't validate": invalid input never reaches I/O).
//!
//! The wire types (what the API answers and the client reads) live in `bgagent-types` and are
//! re-exported here; this crate adds the validation rules and [`NewTask`].

mod new_task;
mod validate;

pub use bgagent_types::{
    Agent, Attempt, DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_SECS, EnqueueRequest, MAX_ATTEMPTS_LIMIT,
    MAX_COMMAND_BYTES, MAX_DELAY_SECS, MAX_ENDPOINT_BYTES, MAX_IDEMPOTENCY_KEY_BYTES,
    MAX_META_BYTES, MAX_TIMEOUT_SECS, ParseStatusError, Task, TaskEvent, TaskStatus, WorkerInfo,
};
pub use new_task::NewTask;
pub use validate::{
    parse_agent_name, parse_endpoint, parse_json_text, parse_meta, parse_text, storable_json,
    storable_text,
};
