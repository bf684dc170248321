//! Code shared by the Background Agent API, workers and CLI: configuration pieces, domain types,
//! the task store ([`store`]) and task queue ([`queue`]) seams with their two engines, and
//! telemetry.
//!
//! The API and workers reach rows only through [`store::TaskStore`] and messages only through
//! [`queue::TaskQueue`]; [`engine::Engine`] holds one of each.

pub mod config;
pub mod db;
pub mod domain;
pub mod egress;
pub mod engine;
pub mod error;
pub mod events;
pub mod gather;
pub mod labels;
pub mod queue;
pub mod shutdown;
pub mod store;
pub mod telemetry;

pub use error::{Error, Result};
