//! Subcommands.

pub mod agents;
pub mod bench;
mod bench_lists;
mod bench_pages;
mod bench_spawn;
pub mod completions;
pub mod control;
pub mod dev;
pub mod enqueue;
pub mod health;
pub mod migrate;
pub mod processed;
pub mod run;
pub mod tasks;
pub mod workers;
