//! Worker registry and heartbeats.

use sqlx::PgExecutor;

use super::rows::{self, WorkerRow};
use crate::Result;
use crate::domain::WorkerInfo;

/// All workers that have not stopped, plus those seen in the last hour, newest heartbeat first.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<WorkerInfo>> {
    let rows: Vec<WorkerRow> = sqlx::query_as(
        "select id, host, version, started_at, last_seen, paused, in_flight, processed, stopped_at
         from workers
         where stopped_at is null or last_seen > now() - interval '1 hour'
         order by last_seen desc limit 1000",
    )
    .fetch_all(db)
    .await?;
    Ok(rows::all(rows))
}

/// Workers heart-beating within [`crate::store::LIVE_WINDOW`].
pub async fn count_live(db: impl PgExecutor<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from workers
         where stopped_at is null and last_seen > now() - make_interval(secs => $1)",
    )
    .bind(crate::store::LIVE_WINDOW.as_secs_f64())
    .fetch_one(db)
    .await?)
}

/// Register a worker at start (or refresh it after a restart with the same id).
pub async fn register(db: impl PgExecutor<'_>, id: &str, host: &str, version: &str) -> Result<()> {
    sqlx::query(
        "insert into workers (id, host, version) values ($1, $2, $3)
         on conflict (id) do update set host = excluded.host, version = excluded.version,
             started_at = now(), last_seen = now(), stopped_at = null, in_flight = 0, processed = 0",
    )
    .bind(id)
    .bind(host)
    .bind(version)
    .execute(db)
    .await?;
    Ok(())
}

/// Record a heartbeat.
pub async fn heartbeat(
    db: impl PgExecutor<'_>,
    id: &str,
    paused: bool,
    in_flight: i32,
    processed: i64,
) -> Result<()> {
    sqlx::query(
        "update workers set last_seen = now(), paused = $2, in_flight = $3, processed = $4
         where id = $1",
    )
    .bind(id)
    .bind(paused)
    .bind(in_flight)
    .bind(processed)
    .execute(db)
    .await?;
    Ok(())
}

/// Mark a worker stopped after a clean shutdown.
pub async fn mark_stopped(db: impl PgExecutor<'_>, id: &str) -> Result<()> {
    sqlx::query(
        "update workers set stopped_at = now(), last_seen = now(), in_flight = 0 where id = $1",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}
