//! The fleet's paused state.

use sqlx::PgExecutor;

use crate::Result;

/// Whether the fleet is paused.
pub async fn paused(db: impl PgExecutor<'_>) -> Result<bool> {
    Ok(sqlx::query_scalar("select paused from control where id")
        .fetch_one(db)
        .await?)
}

/// Store the paused state; repeating the same value is harmless.
pub async fn set_paused(db: impl PgExecutor<'_>, paused: bool, changed_by: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "update control set paused = $1, changed_by = $2, changed_at = now() where id returning paused",
    )
    .bind(paused)
    .bind(changed_by)
    .fetch_one(db)
    .await?)
}
