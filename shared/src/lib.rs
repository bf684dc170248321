//! Code shared by the Background Agent API, workers and CLI: configuration pieces, domain types,
//! PostgreSQL access (`db`), RabbitMQ topology and publishing (`broker`) and telemetry.
//!
//! The API and workers reach PostgreSQL only through [`db`] and RabbitMQ only through [`broker`],
//! so those two seams stay narrow.

pub mod broker;
pub mod config;
pub mod db;
pub mod domain;
pub mod egress;
pub mod error;
pub mod gather;
pub mod labels;
pub mod queue;
pub mod shutdown;
pub mod store;
pub mod telemetry;

pub use error::{Error, Result};
