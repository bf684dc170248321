//! PostgreSQL access: the pool, migrations and one module of free functions per table.
//! Queries are runtime-checked (`sqlx::query_as`) so building needs no database; the integration
//! tests run every query against a real server.
//!
//! Statements that address rows by id wrap their other conditions in `(…) is true`. The planner
//! cannot use an index for such a test, so it looks the ids up in the primary key. Without it,
//! statistics taken while the table was small (or a burst of new rows) make it scan the whole
//! `status` index or a partial index for every batch: measured at 15-25 ms per 40-row batch
//! instead of 2 ms while 30,000 tasks were queued.

pub mod agents;
pub mod backlog;
pub mod control;
pub mod json;
pub mod prefill;
pub mod retention;
pub mod retry;
mod rows;
pub mod runs;
pub mod tasks;
pub mod ui;
pub mod workers;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

use crate::config::DatabaseConfig;
use crate::{Error, Result};

/// Migrations embedded from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

fn options(url: &str, application_name: &str) -> Result<PgConnectOptions> {
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| Error::Config(format!("DATABASE_URL is not a valid PostgreSQL URL: {e}")))?;
    // The application name shows in pg_stat_activity, so operators see who holds connections.
    // No planner settings: every statement is written so that its generic plan (which a prepared
    // statement keeps) uses an index whatever the statistics say (one statement per list filter,
    // `(…) is true` on batches by id); `tests/integration/plans.rs` checks the plans.
    Ok(opts
        .application_name(application_name)
        .log_statements(tracing::log::LevelFilter::Trace))
}

/// A pool that connects lazily: the process starts (and answers `/health`) while PostgreSQL is
/// down, and requests fail fast with 503 until it is back.
pub fn pool(config: &DatabaseConfig, application_name: &str) -> Result<PgPool> {
    let opts = options(config.url()?, application_name)?;
    Ok(PgPoolOptions::new()
        .max_connections(config.db_pool_size.max(1))
        .acquire_timeout(config.acquire_timeout())
        // Drop idle connections so a restarted server is not met with dead sockets for long.
        .idle_timeout(Some(Duration::from_secs(60)))
        .connect_lazy_with(opts))
}

/// Create the database named in `url` when it does not exist (dev mode and tests), by connecting
/// to the server's `postgres` database.
pub async fn ensure_database(url: &str) -> Result<()> {
    let opts = options(url, "bgagent-setup")?;
    let name = opts
        .get_database()
        .ok_or_else(|| Error::Config("DATABASE_URL names no database".into()))?
        .to_owned();
    let mut conn = opts.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // Identifiers cannot be bound; the name is quoted with doubled quotes instead.
        let sql = format!("create database \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            Ok(_) => {}
            // Another process created it between our check and our create.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}

/// Drop the database named in `url` (test clean-up).
pub async fn drop_database(url: &str) -> Result<()> {
    let opts = options(url, "bgagent-setup")?;
    let name = opts
        .get_database()
        .ok_or_else(|| Error::Config("DATABASE_URL names no database".into()))?
        .to_owned();
    let mut conn = opts.clone().database("postgres").connect().await?;
    let sql = format!(
        "drop database if exists \"{}\" with (force)",
        name.replace('"', "\"\"")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Apply pending migrations (serialized across processes by sqlx's advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The database's clock: every time decision is made on it, never on a host's clock.
pub async fn now(pool: &PgPool) -> Result<chrono::DateTime<chrono::Utc>> {
    Ok(sqlx::query_scalar("select now()").fetch_one(pool).await?)
}

/// Round-trip to the server within `timeout`.
pub async fn ping(pool: &PgPool, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, sqlx::query("select 1").execute(pool)).await,
        Ok(Ok(_))
    )
}
