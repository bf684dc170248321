//! Finished tasks made in bulk inside the database, for benchmarks and plan tests: a table that
//! has run for a while, so list pages and hot-path statements are measured where a missing
//! index would show (`bgagent bench --prefill`, `tests/integration/plans.rs`).

use sqlx::PgPool;

use crate::Result;

/// Rows per statement: bounded, so a fill of millions is many moderate transactions.
const CHUNK: i64 = 250_000;

/// Insert `rows` finished tasks (90 % succeeded with a small result, 8 % failed, 2 % cancelled;
/// agents `echo` and `agent-1` … `agent-9`), each with its attempt record, older than every task
/// already there (UUID v7 ids 10 ms apart ending one hour ago), then vacuum and analyze both
/// tables as autovacuum would and checkpoint (so neither starts in the middle of a measurement).
pub async fn finished_tasks(db: &PgPool, rows: i64) -> Result<()> {
    let mut done = 0;
    while done < rows {
        let upto = (done + CHUNK).min(rows);
        sqlx::query(
            "with made as (
                 insert into tasks (id, agent, command, meta, status, attempts, run_at,
                                    published_at, worker_id, result, last_error, created_at,
                                    started_at, finished_at, updated_at)
                 select (lpad(to_hex(ms), 12, '0') || '7' || substr(h, 1, 3) || '8'
                         || substr(h, 4, 15))::uuid,
                        case when g % 2 = 0 then 'echo' else 'agent-' || (g % 10) end,
                        'prefill', jsonb_build_object('n', g), st, 1, at, at, 'prefill',
                        case when st = 'succeeded'
                             then jsonb_build_object('echo', repeat('x', 100)) end,
                        case st when 'failed' then 'prefilled failure'
                                when 'cancelled' then 'cancelled by request' end,
                        at, at, at, at
                 from (select g, md5(g::text) as h,
                              (extract(epoch from now()) * 1000)::bigint - 3600000
                                  - ($3 - g) * 10 as ms,
                              now() - interval '1 hour' - make_interval(secs => ($3 - g) / 100.0)
                                  as at,
                              case when g % 100 < 90 then 'succeeded'
                                   when g % 100 < 98 then 'failed'
                                   else 'cancelled' end as st
                       from generate_series($1, $2) g) s
                 returning id, agent, worker_id, status, last_error, started_at, finished_at
             )
             insert into task_attempts (task_id, attempt, agent, worker_id, outcome, error,
                                        started_at, finished_at)
             select id, 1, agent, worker_id, status, last_error, started_at, finished_at
             from made order by id",
        )
        .bind(done + 1)
        .bind(upto)
        .bind(rows)
        .execute(db)
        .await?;
        done = upto;
    }
    sqlx::query("vacuum (analyze) tasks, task_attempts")
        .execute(db)
        .await?;
    // The fill wrote gigabytes of WAL: flush it now, or the checkpoint it calls for lands in the
    // middle of the measurement. Needs superuser or pg_checkpoint; without them it is skipped.
    if let Err(e) = sqlx::query("checkpoint").execute(db).await {
        tracing::warn!(error = %e, "no checkpoint after the fill; the measurement may include one");
    }
    Ok(())
}
