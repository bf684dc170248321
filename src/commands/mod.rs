//! Subcommands.

pub mod dev;
pub mod migrate;
pub mod run;
