//! Every list filter and every hot-path statement is served by an index, on a table large enough
//! that PostgreSQL would scan it whole if no index served a statement. This stands in for
//! compile-time checked queries: what a missing index or a catch-all filter breaks is the plan,
//! which `query!` cannot see, and the integration tests already run every statement's text.
//!
//! The list statements are checked by the plan a prepared statement keeps (the generic plan,
//! shown here with `plan_cache_mode` set on the test's own connection only); the hot path by
//! running it through `db::*` on one connection and reading the scan counters of the tables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bgagent_shared::db;
use bgagent_shared::domain::{EnqueueRequest, NewTask, TaskStatus};
use bgagent_shared::store::{AttemptOutcome, AttemptRecord, TaskFilter};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::common::TestEnv;

/// Finished tasks in the table: enough that a seq scan or a walk of the wrong index shows.
const ROWS: i64 = 300_000;

/// Run `explain` (an `EXPLAIN (FORMAT JSON) …` statement) on `conn` and return every node of the
/// plan: (node type, relation, index).
pub(crate) async fn explain_nodes(
    conn: &mut sqlx::PgConnection,
    explain: String,
) -> Vec<(String, String, String)> {
    let sqlx::types::Json(plan): sqlx::types::Json<Value> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
            .fetch_one(conn)
            .await
            .unwrap();
    let mut found = Vec::new();
    nodes(&plan[0]["Plan"], &mut found);
    found
}

/// Every node of an EXPLAIN (FORMAT JSON) plan: (node type, relation, index).
fn nodes(plan: &Value, out: &mut Vec<(String, String, String)>) {
    let text = |key: &str| plan[key].as_str().unwrap_or_default().to_owned();
    if plan.get("Node Type").is_some() {
        out.push((text("Node Type"), text("Relation Name"), text("Index Name")));
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        nodes(child, out);
    }
}

/// (seq scans, index scans) of a table, as the statistics show them now.
async fn scans(db: &PgPool, table: &str) -> (i64, i64) {
    sqlx::query_as(
        "select coalesce(seq_scan, 0), coalesce(idx_scan, 0) from pg_stat_user_tables
         where relname = $1",
    )
    .bind(table)
    .fetch_one(db)
    .await
    .unwrap()
}

fn new_task(agent: &str, key: Option<String>) -> NewTask {
    NewTask::parse(
        EnqueueRequest {
            agent: agent.into(),
            command: "plan".into(),
            meta: Some(json!({"n": 1})),
            idempotency_key: key,
            ..Default::default()
        },
        None,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_filter_and_hot_statement_uses_an_index() {
    let env = TestEnv::new().await;
    db::prefill::finished_tasks(env.db(), ROWS).await.unwrap();

    // The generic plan of each list statement, for every filter combination and both forms.
    let mut conn = env.db().acquire().await.unwrap();
    let cases = [
        (None, None, "tasks_pkey"),
        (Some(TaskStatus::Queued), None, "tasks_status_id_idx"),
        (None, Some("echo"), "tasks_agent_id_idx"),
        (
            Some(TaskStatus::Running),
            Some("echo"),
            "tasks_agent_status_id_idx",
        ),
    ];
    let mut n = 0;
    for (status, agent, index) in cases {
        for (full, mode) in [
            (false, "force_generic_plan"),
            (true, "force_generic_plan"),
            (false, "force_custom_plan"),
        ] {
            // The plan a prepared statement keeps, and the plan for these values.
            sqlx::query(sqlx::AssertSqlSafe(format!("set plan_cache_mode = {mode}")))
                .execute(&mut *conn)
                .await
                .unwrap();
            let filter = TaskFilter {
                status,
                agent: agent.map(str::to_owned),
                before: None,
                limit: 50,
                full,
            };
            let sql = db::tasks::list_statement(&filter);
            n += 1;
            sqlx::query(sqlx::AssertSqlSafe(format!("prepare list_{n} as {sql}")))
                .execute(&mut *conn)
                .await
                .unwrap();
            let mut args: Vec<String> = Vec::new();
            args.extend(agent.map(|a| format!("'{a}'")));
            args.extend(status.map(|s| format!("'{}'", s.as_str())));
            args.push(format!("'{}'", Uuid::max()));
            args.push("50".into());
            let explain = format!(
                "explain (format json) execute list_{n}({})",
                args.join(", ")
            );
            let found = explain_nodes(&mut conn, explain).await;
            assert!(
                !found.iter().any(|(node, _, _)| node.contains("Seq Scan")),
                "{status:?} {agent:?}: {found:?}"
            );
            // A custom plan may take another index for a value the statistics say is rare.
            assert!(
                mode == "force_custom_plan" || found.iter().any(|(_, _, used)| used == index),
                "{status:?} {agent:?} should use {index}: {found:?}"
            );
        }
    }
    // Not back to the pool with that setting and those statements.
    sqlx::Connection::close(conn.detach()).await.unwrap();

    // Each first page, through the store, well within a page's budget (a walk of the primary
    // key through every finished task to find none queued takes far longer).
    for status in [None, Some(TaskStatus::Queued), Some(TaskStatus::Failed)] {
        for agent in [None, Some("echo"), Some("agent-3")] {
            let filter = TaskFilter {
                status,
                agent: agent.map(str::to_owned),
                before: None,
                limit: 501,
                full: false,
            };
            let mut times = Vec::new();
            for _ in 0..5 {
                let started = Instant::now();
                env.store.tasks(&filter).await.unwrap();
                times.push(started.elapsed());
            }
            times.sort();
            assert!(
                times[2] < Duration::from_millis(200),
                "{status:?} {agent:?}: median {:?}",
                times[2]
            );
        }
    }

    // The hot path, on one connection whose scans the statistics then show.
    let mut config = env.database_config();
    config.db_pool_size = 1;
    let hot = db::pool(&config, "bgagent-plans").unwrap();
    let before_tasks = scans(env.db(), "tasks").await;
    let before_attempts = scans(env.db(), "task_attempts").await;
    let worker = "plans-worker";
    // Six rounds: prepared statements switch to their generic plan after five executions.
    for round in 0..6 {
        let batch: Vec<NewTask> = (0..20)
            .map(|i| new_task("echo", (i % 5 == 0).then(|| format!("key-{round}-{i}"))))
            .chain([new_task("echo", Some(format!("key-{round}-0")))])
            .collect();
        let inserted = db::tasks::insert_each(&hot, &batch).await;
        let ids: Vec<Uuid> = inserted
            .iter()
            .map(|r| r.as_ref().unwrap().task.id)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        db::tasks::mark_published(&hot, &ids).await.unwrap();
        db::runs::unpublish_queued(&hot, &ids[..2]).await.unwrap();
        {
            let mut tx = hot.begin().await.unwrap();
            let due = db::runs::lock_unpublished(&mut tx, 100, 0.0).await.unwrap();
            db::runs::mark_relayed(&mut *tx, &due).await.unwrap();
            tx.commit().await.unwrap();
        }
        let claimed = db::runs::claim(&hot, &ids, worker, 60).await.unwrap();
        assert!(!claimed.is_empty());
        let held: Vec<Uuid> = claimed.iter().map(|t| t.id).collect();
        db::runs::renew_leases(&hot, worker, 60, &held)
            .await
            .unwrap();
        let (back, done) = claimed.split_at(2);
        let back: Vec<(Uuid, i32)> = back.iter().map(|t| (t.id, t.attempts)).collect();
        db::runs::release(&hot, worker, &back).await.unwrap();
        let records: Vec<AttemptRecord> = done
            .iter()
            .map(|t| AttemptRecord {
                task_id: t.id,
                attempt: t.attempts,
                status: TaskStatus::Succeeded,
                outcome: AttemptOutcome::Succeeded,
                result: Some(json!({"ok": true})),
                error: None,
                retry_delay: Duration::ZERO,
                started_at: t.started_at.unwrap_or_else(chrono::Utc::now),
            })
            .collect();
        db::runs::record(&hot, worker, &records).await.unwrap();
        db::runs::reap(&hot, 10.0, chrono::Utc::now() + chrono::Duration::hours(1))
            .await
            .unwrap();
        db::runs::stale_published_exists(&hot, 60.0).await.unwrap();
        db::runs::unpublish_published(&hot, Some(60.0), 100)
            .await
            .unwrap();
        db::runs::fail_dead_lettered(&hot, back[0].0, "plans")
            .await
            .unwrap();
        db::tasks::get(&hot, ids[0]).await.unwrap();
        db::tasks::cancel(&hot, back[1].0).await.unwrap();
        let attempts = db::tasks::list_attempts(&hot, None, 50).await.unwrap();
        db::tasks::list_attempts(&hot, attempts.last().map(|a| a.id), 50)
            .await
            .unwrap();
        // The dashboard's reads (/ui): capped counts over 300,000 finished tasks, a task's
        // attempts, the task of an idempotency key, the agents' recent outcomes.
        db::ui::overview(&hot, 10_000).await.unwrap();
        db::ui::task_attempts(&hot, ids[0], 200).await.unwrap();
        db::ui::by_key(&hot, &format!("key-{round}-0"))
            .await
            .unwrap();
        db::agents::upsert(&hot, "echo", "https://agent.example.com/run", &json!({}))
            .await
            .unwrap();
        db::ui::agent_outcomes(&hot, Duration::from_secs(24 * 3600), 1_000, 200)
            .await
            .unwrap();
    }
    // Make the connection report its counts now instead of within 10 s, then wait for them.
    sqlx::query("select pg_stat_force_next_flush()")
        .execute(&hot)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (after_tasks, after_attempts) = loop {
        let after = (
            scans(env.db(), "tasks").await,
            scans(env.db(), "task_attempts").await,
        );
        if after.0.1 > before_tasks.1 || Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(after_tasks.1 > before_tasks.1, "the hot path used no index");
    assert_eq!(
        after_tasks.0, before_tasks.0,
        "seq scans of tasks on the hot path"
    );
    assert_eq!(
        after_attempts.0, before_attempts.0,
        "seq scans of task_attempts on the hot path"
    );
    hot.close().await;

    // The dashboard's reads through the store: medians printed as figures (not asserted beyond
    // a generous bound: the page budget is 100 ms at 3 million tasks, docs/DASHBOARD.md).
    let probe = env
        .store
        .tasks(&TaskFilter {
            status: None,
            agent: None,
            before: None,
            limit: 1,
            full: false,
        })
        .await
        .unwrap()[0]
        .id;
    let mut figures = Vec::new();
    for what in [
        "overview",
        "agent_outcomes",
        "task_attempts",
        "task_by_key",
        "backlog",
    ] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            // Each answer is kept from the optimiser and dropped.
            match what {
                "overview" => {
                    std::hint::black_box(env.store.overview(10_000).await.unwrap());
                }
                "agent_outcomes" => {
                    std::hint::black_box(
                        env.store
                            .agent_outcomes(Duration::from_secs(24 * 3600), 1_000, 200)
                            .await
                            .unwrap(),
                    );
                }
                "task_attempts" => {
                    std::hint::black_box(env.store.task_attempts(probe, 200).await.unwrap());
                }
                "task_by_key" => {
                    std::hint::black_box(env.store.task_by_key("key-0-0").await.unwrap());
                }
                _ => {
                    std::hint::black_box(env.store.backlog().await.unwrap());
                }
            }
            times.push(started.elapsed());
        }
        times.sort();
        figures.push(format!("{what} {:?}", times[2]));
        assert!(
            times[2] < Duration::from_millis(500),
            "{what}: median {:?}",
            times[2]
        );
    }
    eprintln!(
        "dashboard reads at {ROWS} finished tasks (median of 5): {}",
        figures.join(", ")
    );
}
