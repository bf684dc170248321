//! The request and answer bodies of the Background Agent HTTP API, shared by the API (which
//! serves them) and the Rust client (which sends and reads them), and the retry [`backoff`] that
//! the client and the workers share.
//!
//! This crate carries no server dependencies (no database, broker or CLI crates), so a client
//! builds only what it needs. The rules that turn a request into something storable
//! (`NewTask::parse` and friends) stay in `bgagent-shared`. With the `openapi` feature the types
//! derive `utoipa::ToSchema`, from which the API builds `/openapi.json`.

pub mod agent;
pub mod backoff;
pub mod error;
pub mod event;
pub mod fleet;
pub mod limits;
pub mod retry;
pub mod status;
pub mod task;

pub use agent::{Agent, AgentList, RegisterRequest, UnregisterRequest, Unregistered};
pub use error::{ErrorBody, ErrorDetail};
pub use event::TaskEvent;
pub use fleet::{Health, PausedState, WorkerInfo, WorkerList};
pub use limits::*;
pub use retry::{RetryAllRequest, RetryAllResult, RetryableStatus};
pub use status::{ParseStatusError, TaskStatus};
pub use task::{Attempt, AttemptPage, EnqueueRequest, Task, TaskPage};
