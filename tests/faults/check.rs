//! The invariant checker: accepted ids vs. final rows vs. the agent's receipts, one table row per
//! scenario.

use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::agent::Receipt;
use crate::load::Client;

/// One line of the result table.
#[derive(Debug, Default)]
pub struct Row {
    pub name: String,
    pub accepted: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// Accepted, but no row (or `succeeded` without the agent ever having run it).
    pub lost: usize,
    /// A row that was not terminal by the deadline.
    pub stuck: usize,
    /// Receipts answered 200 beyond the first, per idempotency key.
    pub duplicates: usize,
    /// `failed` rows whose last attempt the agent answered 200: failed for work that was done.
    pub wrong_status: usize,
    /// From the last fault until every accepted task was terminal (None: never).
    pub drain: Option<Duration>,
    /// Length of the whole scenario.
    pub took: Duration,
    /// Facts worth reading.
    pub notes: Vec<String>,
    /// Failed pass criteria.
    pub failures: Vec<String>,
}

impl Row {
    /// `pass`, or `FAIL` when any invariant broke.
    pub fn verdict(&self) -> &'static str {
        if self.failures.is_empty() {
            "pass"
        } else {
            "FAIL"
        }
    }

    pub fn fail(&mut self, why: impl Into<String>) {
        self.failures.push(why.into());
    }
    pub fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }
}

/// Status of every task of this scenario's database.
pub async fn statuses(db: &PgPool, ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, (String, i32)>> {
    let rows: Vec<(Uuid, String, i32)> =
        sqlx::query_as("select id, status, attempts from tasks where id = any($1)")
            .bind(ids)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|(id, s, a)| (id, (s, a))).collect())
}

/// Wait until every accepted task is terminal, or `timeout`; returns when that happened.
pub async fn wait_terminal(db: &PgPool, ids: &[Uuid], timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let open: Option<i64> = sqlx::query_scalar(
            "select count(*) from tasks
             where id = any($1) and status not in ('succeeded', 'failed', 'cancelled')",
        )
        .bind(ids)
        .fetch_one(db)
        .await
        .ok();
        if open == Some(0) {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Compare accepted ids, final rows and receipts; `last_fault` is when the last fault ended.
pub async fn check(
    name: &str,
    db: &PgPool,
    accepted: &HashMap<String, Uuid>,
    receipts: impl Fn() -> Vec<Receipt>,
    last_fault: &(dyn Fn() -> Instant + Sync),
    timeout: Duration,
) -> Row {
    let mut row = Row {
        name: name.to_owned(),
        accepted: accepted.len(),
        ..Row::default()
    };
    let ids: Vec<Uuid> = accepted.values().copied().collect();
    let done_at = wait_terminal(db, &ids, timeout).await;
    row.drain = done_at.map(|at| at.saturating_duration_since(last_fault()));
    // Let receipts of attempts still in flight (stale ones after a lost lease) arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let receipts = receipts();

    let rows = match statuses(db, &ids).await {
        Ok(rows) => rows,
        Err(e) => {
            row.fail(format!("cannot read the tasks: {e}"));
            return row;
        }
    };
    tally(&mut row, &ids, &rows, &receipts, &HashSet::new());
    // Exactly one row per idempotency key, and it is the accepted one.
    let keys: Vec<&str> = accepted.keys().map(String::as_str).collect();
    match sqlx::query_as::<_, (String, i64, Vec<Uuid>)>(
        "select idempotency_key, count(*), array_agg(id) from tasks
         where idempotency_key = any($1) group by idempotency_key",
    )
    .bind(&keys)
    .fetch_all(db)
    .await
    {
        Ok(found) => {
            let by_key: HashMap<String, Vec<Uuid>> =
                found.into_iter().map(|(k, _, ids)| (k, ids)).collect();
            check_keys(&mut row, accepted.iter(), &by_key);
        }
        Err(e) => row.fail(format!("cannot read idempotency keys: {e}")),
    }
    if row.lost > 0 {
        row.fail(format!("lost = {}", row.lost));
    }
    if row.stuck > 0 {
        row.fail(format!(
            "stuck = {} (not terminal {timeout:?} after the last fault)",
            row.stuck
        ));
        describe_stuck(db, &ids, &receipts, &mut row).await;
    }
    if done_at.is_none() && row.stuck == 0 && row.lost == 0 {
        row.fail("tasks were not terminal by the deadline");
    }
    row
}

/// Count final statuses, lost tasks, duplicate executions and wrong final statuses of `ids` from
/// their rows (status, attempts) and the agent's receipts. `builtin` tasks run inside the worker
/// (`echo`, `sleep`): no receipt is expected for them.
pub fn tally(
    row: &mut Row,
    ids: &[Uuid],
    rows: &HashMap<Uuid, (String, i32)>,
    receipts: &[Receipt],
    builtin: &HashSet<Uuid>,
) {
    let wanted: HashSet<Uuid> = ids.iter().copied().collect();
    let mut ok_receipts: HashMap<&str, usize> = HashMap::new();
    // Attempts the agent answered 200, per task.
    let mut ok_attempts: HashSet<(Uuid, i64)> = HashSet::new();
    let mut mismatched = 0;
    for r in receipts {
        let Some(task) = r.task_id.filter(|id| wanted.contains(id)) else {
            continue;
        };
        if r.key != task.to_string() {
            mismatched += 1;
        }
        if r.status == 200 {
            *ok_receipts.entry(r.key.as_str()).or_default() += 1;
            ok_attempts.insert((task, r.attempt));
        }
    }
    if mismatched > 0 {
        row.fail(format!(
            "{mismatched} receipts whose Idempotency-Key is not the task id"
        ));
    }
    for id in ids {
        match rows.get(id) {
            None => row.lost += 1,
            Some((status, attempts)) => match status.as_str() {
                "succeeded" => {
                    row.succeeded += 1;
                    if !builtin.contains(id) && !ok_receipts.contains_key(id.to_string().as_str()) {
                        // Recorded as done, yet the agent never ran it.
                        row.lost += 1;
                    }
                }
                "failed" => {
                    row.failed += 1;
                    if ok_attempts.contains(&(*id, i64::from(*attempts))) {
                        row.wrong_status += 1;
                    }
                }
                "cancelled" => row.cancelled += 1,
                _ => row.stuck += 1,
            },
        }
        if let Some(n) = ok_receipts.get(id.to_string().as_str()) {
            row.duplicates += n.saturating_sub(1);
        }
    }
}

/// Exactly one row per accepted idempotency key, and it is the accepted id. `by_key`: the ids of
/// the rows holding each key.
pub fn check_keys<'a>(
    row: &mut Row,
    accepted: impl Iterator<Item = (&'a String, &'a Uuid)>,
    by_key: &HashMap<String, Vec<Uuid>>,
) {
    let bad = accepted
        .filter(|(k, id)| {
            by_key
                .get(*k)
                .is_none_or(|ids| ids.len() != 1 || ids[0] != **id)
        })
        .count();
    if bad > 0 {
        row.fail(format!(
            "{bad} idempotency keys without exactly one row holding the accepted id"
        ));
    }
}

/// A task as `GET /tasks/{id}` shows it (the fields the checker reads).
#[derive(Clone, Debug)]
pub struct TaskView {
    pub status: String,
    pub attempts: i32,
    pub agent: String,
    pub worker_id: Option<String>,
    pub last_error: Option<String>,
}

impl TaskView {
    fn terminal(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

/// `GET /tasks/{id}` of every id, 32 at a time: the task, `None` on 404. A request that fails
/// otherwise is tried again (up to 5 times), then reported as an error.
pub async fn fetch_tasks(
    client: &Client,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Option<TaskView>>, String> {
    use futures_util::StreamExt;
    let results: Vec<Result<(Uuid, Option<TaskView>), String>> =
        futures_util::stream::iter(ids.iter().copied())
            .map(|id| async move {
                let mut last = String::new();
                for _ in 0..5 {
                    match client.get(&format!("/tasks/{id}")).await {
                        Ok((status, _)) if status == reqwest::StatusCode::NOT_FOUND => {
                            return Ok((id, None));
                        }
                        Ok((status, body)) if status.is_success() => {
                            let view = TaskView {
                                status: body["status"].as_str().unwrap_or_default().to_owned(),
                                attempts: body["attempts"]
                                    .as_i64()
                                    .and_then(|a| i32::try_from(a).ok())
                                    .unwrap_or(-1),
                                agent: body["agent"].as_str().unwrap_or_default().to_owned(),
                                worker_id: body["worker_id"].as_str().map(str::to_owned),
                                last_error: body["last_error"].as_str().map(str::to_owned),
                            };
                            return Ok((id, Some(view)));
                        }
                        Ok((status, body)) => last = format!("GET /tasks/{id}: {status} {body}"),
                        Err(e) => last = format!("GET /tasks/{id}: {e:#}"),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(last)
            })
            .buffer_unordered(32)
            .collect()
            .await;
    results.into_iter().collect()
}

/// Poll `GET /tasks/{id}` until every id is terminal (or has no row: lost, it never will be), or
/// `timeout`; returns when that happened.
pub async fn wait_terminal_http(
    client: &Client,
    ids: &[Uuid],
    timeout: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    let mut open: Vec<Uuid> = ids.to_vec();
    loop {
        if let Ok(tasks) = fetch_tasks(client, &open).await {
            open.retain(|id| {
                tasks
                    .get(id)
                    .is_some_and(|t| t.as_ref().is_some_and(|t| !t.terminal()))
            });
        }
        if open.is_empty() {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every task's idempotency key through `GET /tasks` (all pages): key → ids of its rows.
async fn rows_by_key(client: &Client) -> Result<HashMap<String, Vec<Uuid>>, String> {
    let mut by_key: HashMap<String, Vec<Uuid>> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/tasks?limit=500&cursor={c}"),
            None => "/tasks?limit=500".to_owned(),
        };
        let (status, body) = client
            .get(&path)
            .await
            .map_err(|e| format!("GET {path}: {e:#}"))?;
        if !status.is_success() {
            return Err(format!("GET {path}: {status} {body}"));
        }
        for task in body["tasks"].as_array().into_iter().flatten() {
            if let (Some(key), Some(id)) = (
                task["idempotency_key"].as_str(),
                task["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()),
            ) {
                by_key.entry(key.to_owned()).or_default().push(id);
            }
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(by_key),
        }
    }
}

/// The checker over HTTP, for an engine whose rows only its process can read (the embedded
/// engine): `GET /tasks/{id}` is the truth. `accepted`: label → id; `keyed`: the labels that were
/// sent as idempotency keys (the rest were enqueued without one). Returns the row and the final
/// view of every accepted task that has one.
pub async fn check_http(
    name: &str,
    client: &Client,
    accepted: &HashMap<String, Uuid>,
    keyed: &HashSet<String>,
    receipts: impl Fn() -> Vec<Receipt>,
    last_fault: &(dyn Fn() -> Instant + Sync),
    timeout: Duration,
) -> (Row, HashMap<Uuid, TaskView>) {
    let mut row = Row {
        name: name.to_owned(),
        accepted: accepted.len(),
        ..Row::default()
    };
    let ids: Vec<Uuid> = accepted.values().copied().collect();
    let done_at = wait_terminal_http(client, &ids, timeout).await;
    row.drain = done_at.map(|at| at.saturating_duration_since(last_fault()));
    // Let receipts of attempts still in flight arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let receipts = receipts();
    let tasks: HashMap<Uuid, TaskView> = match fetch_tasks(client, &ids).await {
        Ok(tasks) => tasks
            .into_iter()
            .filter_map(|(id, t)| t.map(|t| (id, t)))
            .collect(),
        Err(e) => {
            row.fail(format!("cannot read the tasks: {e}"));
            return (row, HashMap::new());
        }
    };
    let rows: HashMap<Uuid, (String, i32)> = tasks
        .iter()
        .map(|(id, t)| (*id, (t.status.clone(), t.attempts)))
        .collect();
    let builtin: HashSet<Uuid> = tasks
        .iter()
        .filter(|(_, t)| t.agent != "recorder")
        .map(|(id, _)| *id)
        .collect();
    tally(&mut row, &ids, &rows, &receipts, &builtin);
    match rows_by_key(client).await {
        Ok(by_key) => check_keys(
            &mut row,
            accepted.iter().filter(|(k, _)| keyed.contains(*k)),
            &by_key,
        ),
        Err(e) => row.fail(format!("cannot read idempotency keys: {e}")),
    }
    if row.lost > 0 {
        row.fail(format!("lost = {}", row.lost));
    }
    if row.stuck > 0 {
        row.fail(format!(
            "stuck = {} (not terminal {timeout:?} after the last fault)",
            row.stuck
        ));
        let mut groups: HashMap<(String, i32, Option<String>), (usize, Uuid)> = HashMap::new();
        for (id, t) in tasks.iter().filter(|(_, t)| !t.terminal()) {
            groups
                .entry((t.status.clone(), t.attempts, t.worker_id.clone()))
                .or_insert((0, *id))
                .0 += 1;
        }
        let stuck: HashSet<Uuid> = tasks
            .iter()
            .filter(|(_, t)| !t.terminal())
            .map(|(id, _)| *id)
            .collect();
        let reached: HashSet<Uuid> = receipts
            .iter()
            .filter_map(|r| r.task_id)
            .filter(|id| stuck.contains(id))
            .collect();
        row.note(format!(
            "stuck: {} of the {} stuck tasks reached the agent (ran, then were never recorded)",
            reached.len(),
            stuck.len()
        ));
        for ((status, attempts, worker), (n, sample)) in groups {
            row.note(format!(
                "stuck: {n} × status={status} attempts={attempts} worker={} (e.g. {sample})",
                worker.as_deref().unwrap_or("-")
            ));
        }
    }
    if done_at.is_none() && row.stuck == 0 && row.lost == 0 {
        row.fail("tasks were not terminal by the deadline");
    }
    (row, tasks)
}

/// status, attempts, worker, published, lease valid, cancel requested, count, a sample id.
type StuckGroup = (String, i32, Option<String>, bool, bool, bool, i64, Uuid);

/// What the stuck rows look like, for the report.
async fn describe_stuck(db: &PgPool, ids: &[Uuid], receipts: &[Receipt], row: &mut Row) {
    let groups: Vec<StuckGroup> = sqlx::query_as(
        "select status, attempts, worker_id, published_at is not null,
                coalesce(lease_until > now(), false), cancel_requested, count(*), min(id::text)::uuid
         from tasks
         where id = any($1) and status not in ('succeeded', 'failed', 'cancelled')
         group by 1, 2, 3, 4, 5, 6 order by 7 desc limit 10",
    )
    .bind(ids)
    .fetch_all(db)
    .await
    .unwrap_or_default();
    let stuck: Vec<Uuid> = sqlx::query_scalar(
        "select id from tasks
         where id = any($1) and status not in ('succeeded', 'failed', 'cancelled')",
    )
    .bind(ids)
    .fetch_all(db)
    .await
    .unwrap_or_default();
    let stuck: HashSet<Uuid> = stuck.into_iter().collect();
    let reached: HashSet<Uuid> = receipts
        .iter()
        .filter_map(|r| r.task_id)
        .filter(|id| stuck.contains(id))
        .collect();
    row.note(format!(
        "stuck: {} of the {} stuck tasks reached the agent (ran, then were never recorded)",
        reached.len(),
        stuck.len()
    ));
    for (status, attempts, worker, published, leased, cancel, n, sample) in groups {
        row.note(format!(
            "stuck: {n} × status={status} attempts={attempts} worker={} published={published} \
             lease_valid={leased} cancel_requested={cancel} (e.g. {sample})",
            worker.as_deref().unwrap_or("-")
        ));
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_owned(),
        |d| format!("{:.1} s", d.as_secs_f64()),
    )
}

/// The table, aligned for a terminal.
pub fn text_table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<34} {:>8} {:>9} {:>6} {:>9} {:>5} {:>5} {:>5} {:>5} {:>9} {:>7}  {}\n",
        "scenario",
        "accepted",
        "succeeded",
        "failed",
        "cancelled",
        "lost",
        "stuck",
        "dups",
        "wrong",
        "drain",
        "took",
        "result"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<34} {:>8} {:>9} {:>6} {:>9} {:>5} {:>5} {:>5} {:>5} {:>9} {:>7}  {}\n",
            r.name,
            r.accepted,
            r.succeeded,
            r.failed,
            r.cancelled,
            r.lost,
            r.stuck,
            r.duplicates,
            r.wrong_status,
            secs(r.drain),
            format!("{:.0} s", r.took.as_secs_f64()),
            r.verdict()
        ));
    }
    out
}

/// The table as Markdown (for docs/FAULTS.md).
pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | accepted | succeeded | failed | cancelled | lost | stuck | duplicate executions | wrong final status | drain after last fault | result |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.accepted,
            r.succeeded,
            r.failed,
            r.cancelled,
            r.lost,
            r.stuck,
            r.duplicates,
            r.wrong_status,
            secs(r.drain),
            r.verdict()
        ));
    }
    out
}
