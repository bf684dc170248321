//! Worker registry and heartbeats.

use sqlx::PgExecutor;

use crate::Result;
use crate::domain::WorkerInfo;

/// Workers whose heartbeat is newer than this count as live.
pub const LIVE_WINDOW_SECS: i64 = 30;

/// All workers that have not stopped, plus those seen in the last hour, newest heartbeat first.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<WorkerInfo>> {
    Ok(sqlx::query_as(
        "select id, host, version, started_at, last_seen, paused, in_flight, processed, stopped_at
         from workers
         where stopped_at is null or last_seen > now() - interval '1 hour'
         order by last_seen desc limit 1000",
    )
    .fetch_all(db)
    .await?)
}

/// Workers heart-beating within [`LIVE_WINDOW_SECS`].
pub async fn count_live(db: impl PgExecutor<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from workers
         where stopped_at is null and last_seen > now() - make_interval(secs => $1)",
    )
    .bind(LIVE_WINDOW_SECS as f64)
    .fetch_one(db)
    .await?)
}
