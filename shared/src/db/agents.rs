//! The agent registry used for routing.

use serde_json::Value;
use sqlx::PgExecutor;

use super::rows::{self, AgentRow};
use crate::Result;
use crate::domain::Agent;

/// Insert or update an agent.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    name: &str,
    endpoint: &str,
    meta: &Value,
) -> Result<Agent> {
    let row: AgentRow = sqlx::query_as(
        "insert into agents (name, endpoint, meta) values ($1, $2, $3)
         on conflict (name) do update set endpoint = excluded.endpoint, meta = excluded.meta,
             updated_at = now()
         returning name, endpoint, meta, created_at, updated_at",
    )
    .bind(name)
    .bind(endpoint)
    .bind(meta)
    .fetch_one(db)
    .await?;
    Ok(row.into())
}

/// Remove an agent; false when it was not registered.
pub async fn delete(db: impl PgExecutor<'_>, name: &str) -> Result<bool> {
    let done = sqlx::query("delete from agents where name = $1")
        .bind(name)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// All agents by name.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<Agent>> {
    let rows: Vec<AgentRow> = sqlx::query_as(
        "select name, endpoint, meta, created_at, updated_at from agents order by name limit 10000",
    )
    .fetch_all(db)
    .await?;
    Ok(rows::all(rows))
}

/// One agent.
pub async fn get(db: impl PgExecutor<'_>, name: &str) -> Result<Option<Agent>> {
    let row: Option<AgentRow> = sqlx::query_as(
        "select name, endpoint, meta, created_at, updated_at from agents where name = $1",
    )
    .bind(name)
    .fetch_optional(db)
    .await?;
    Ok(row.map(Agent::from))
}

/// Up to `limit` registered names, in name order (the metrics' label set).
pub async fn names(db: impl PgExecutor<'_>, limit: i64) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("select name from agents order by name limit $1")
            .bind(limit)
            .fetch_all(db)
            .await?,
    )
}
