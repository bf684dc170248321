//! Integration tests against real PostgreSQL and RabbitMQ. Each test gets its own database and
//! broker prefix (see `common`), so they run in parallel and leave nothing behind.
//!
//! Services come from `DATABASE_URL` / `AMQP_URL`, else the local defaults, else testcontainers
//! when a Docker engine is available.

mod api;
mod api_support;
mod backlog;
mod bench;
mod broker_loss;
mod cli;
mod common;
mod dead_letters;
mod egress;
mod events;
mod fake_agent;
mod hardening;
mod hostile;
mod labels;
mod lists;
mod mcp;
mod messages;
mod metrics;
mod neutral;
mod plans;
mod recovery;
mod retention;
mod retry;
mod stalls;
mod ui;
mod wait;
mod worker;
