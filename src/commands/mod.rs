//! Subcommands.

pub mod dev;
pub mod migrate;
