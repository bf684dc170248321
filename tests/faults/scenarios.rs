//! The twelve scenarios (thirteen rows: the broker is stopped cleanly and killed). Scenarios 1-11
//! each start a fresh database, broker prefix, API and three workers; scenario 12 one `bgagent dev`
//! process on the embedded engine. Each drives tasks through HTTP (2,000, or 600 in scenario 11)
//! while it injects its faults, then hands accepted ids and receipts to the checker.

use anyhow::{Context, Result};
use rand::Rng;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::check::{self, Row};
use crate::fleet::{Proc, WORKER_IDS};
use crate::load::{Accepted, Client, Spec};
use crate::{Env, ScenarioFn, Suite, step};

/// Tasks per scenario.
const TASKS: usize = 2000;
/// Concurrent enqueue requests of the load.
const IN_FLIGHT: usize = 64;
/// A task not terminal this long after the last fault is stuck.
const SETTLE: Duration = Duration::from_secs(60);

pub fn all() -> Vec<(&'static str, ScenarioFn)> {
    vec![
        ("s1-worker-kills", |s| Box::pin(worker_kills(s))),
        ("s2a-broker-stop", |s| Box::pin(broker_outage(s, false))),
        ("s2b-broker-kill", |s| Box::pin(broker_outage(s, true))),
        ("s3-postgres-restart", |s| Box::pin(postgres_restart(s))),
        ("s4-enqueue-broker-down", |s| {
            Box::pin(enqueue_while_broker_down(s))
        }),
        ("s5-cancels", |s| Box::pin(cancels(s))),
        ("s6-sigterm-drain", |s| Box::pin(sigterm_drain(s))),
        ("s7-poison", |s| Box::pin(poison(s))),
        ("s8-same-key", |s| Box::pin(same_key(s))),
        ("s9-postgres-freeze", |s| Box::pin(postgres_freeze(s))),
        ("s10-worker-freeze", |s| Box::pin(worker_freeze(s))),
        ("s11-broker-data-loss", |s| Box::pin(broker_data_loss(s))),
        ("s12-embedded-kill", |s| Box::pin(embedded_kill(s))),
    ]
}

fn plain(prefix: &str, n: usize) -> Vec<Spec> {
    (0..n)
        .map(|i| Spec::recorder(format!("{prefix}-{i:05}"), json!({})))
        .collect()
}

fn spawn_load(env: &Env, specs: Vec<Spec>, rate: f64) -> tokio::task::JoinHandle<Accepted> {
    let client = env.client.clone();
    tokio::spawn(async move { client.drive(specs, rate, IN_FLIGHT).await })
}

async fn sleep(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Run the checker, add what the load saw, stop the processes; print log tails on failure.
async fn finish(
    name: &str,
    suite: &Suite,
    env: Env,
    accepted: &Accepted,
    last_fault: &(dyn Fn() -> Instant + Sync),
    extra: impl AsyncFnOnce(&mut Row, &sqlx::PgPool),
) -> Row {
    let mut row = check::check(
        name,
        &env.db,
        &accepted.ids,
        || suite.agent.receipts(),
        last_fault,
        SETTLE,
    )
    .await;
    extra(&mut row, &env.db).await;
    // Where workers are SIGKILLed (1, 5, 7) an answer can reach a worker that dies before it
    // records it, so a `failed` row after a 200 is not always wrong there; everywhere else every
    // answer was heard, and a task failed for work its agent did is a defect.
    let kills_workers = ["1.", "5.", "7."].iter().any(|p| name.starts_with(p));
    if row.wrong_status > 0 && !kills_workers {
        row.fail(format!(
            "wrong final status = {} (failed although the agent answered 200 and the worker \
             heard it)",
            row.wrong_status
        ));
    }
    answer_notes(&mut row, accepted);
    let mut guard = env.fleet.lock().await;
    let fleet = &mut *guard;
    for p in std::iter::once(&mut fleet.api).chain(fleet.workers.iter_mut()) {
        if !p.running() {
            row.fail(format!(
                "{} was not running at the end of the scenario",
                p.name
            ));
        }
    }
    log_findings(
        &mut row,
        std::iter::once(&fleet.api).chain(fleet.workers.iter()),
    );
    if !row.failures.is_empty() {
        println!("faults: log tails of {name}:\n{}", fleet.tails(25));
        match suite.mq.ctl(&[
            "list_queues",
            "name",
            "type",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ]) {
            Ok(queues) => println!("faults: broker queues:\n{queues}"),
            Err(e) => println!("faults: cannot list the broker's queues: {e:#}"),
        }
    }
    fleet.stop().await;
    drop(guard);
    env.db.close().await;
    row
}

/// What the load saw: every answer, and the enqueues it gave up.
fn answer_notes(row: &mut Row, accepted: &Accepted) {
    let answers: Vec<String> = accepted
        .answers
        .statuses
        .iter()
        .map(|(s, n)| {
            if *s == 0 {
                format!("conn-error×{n}")
            } else {
                format!("{s}×{n}")
            }
        })
        .collect();
    row.note(format!(
        "enqueue answers (every try): {}",
        answers.join(", ")
    ));
    if !accepted.answers.given_up.is_empty() {
        row.note(format!(
            "{} enqueues given up, first: {}",
            accepted.answers.given_up.len(),
            accepted.answers.given_up[0]
        ));
    }
}

/// Panics (a failure) and ERROR lines (a note) in the processes' logs.
fn log_findings<'a>(row: &mut Row, procs: impl Iterator<Item = &'a Proc>) {
    let mut errors = 0;
    let mut panics = 0;
    for p in procs {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        errors += text.matches("\"level\":\"ERROR\"").count();
        panics += text.matches("panicked").count();
    }
    if panics > 0 {
        row.fail(format!("{panics} panics in the process logs"));
    }
    if errors > 0 {
        row.note(format!("{errors} ERROR lines in the process logs"));
    }
}

// ---------------------------------------------------------------------------------------------

/// 1. SIGKILL a random worker every ~1.5 s (≥ 10 kills), restarting it at once.
async fn worker_kills(suite: &mut Suite) -> Result<Row> {
    let t0 = Instant::now();
    let env = suite.env("s1").await?;
    step(t0, "API and 3 workers up; load 2000 tasks at 125/s");
    let load = spawn_load(&env, plain("s1", TASKS), 125.0);
    let mut kills = 0;
    let mut last_fault = Instant::now();
    for _ in 0..11 {
        sleep(1.5).await;
        let id = WORKER_IDS[rand::rng().random_range(0..WORKER_IDS.len())];
        let mut fleet = env.fleet.lock().await;
        let worker = fleet.worker(id).context("worker")?;
        worker.kill9()?;
        kills += 1;
        drop(fleet);
        sleep(0.2).await;
        env.fleet
            .lock()
            .await
            .worker(id)
            .context("worker")?
            .start()?;
        last_fault = Instant::now();
        step(t0, &format!("SIGKILLed and restarted {id}"));
    }
    let accepted = load.await?;
    step(t0, &format!("load done: {} accepted", accepted.ids.len()));
    let row = finish(
        "1. SIGKILL a worker every 1.5 s",
        suite,
        env,
        &accepted,
        &|| last_fault,
        async |row: &mut Row, _db: &sqlx::PgPool| {
            row.note(format!(
                "{kills} worker SIGKILLs, each restarted after 0.2 s"
            ))
        },
    )
    .await;
    Ok(row)
}

/// 2. RabbitMQ stopped (cleanly, or by kill -9) and started again mid-load.
async fn broker_outage(suite: &mut Suite, kill: bool) -> Result<Row> {
    let env = suite.env(if kill { "s2b" } else { "s2a" }).await?;
    let load = spawn_load(&env, plain(if kill { "s2b" } else { "s2a" }, TASKS), 150.0);
    let t0 = Instant::now();
    sleep(4.0).await;
    let down = Instant::now();
    step(
        t0,
        if kill {
            "kill -9 the broker"
        } else {
            "rabbitmqctl stop"
        },
    );
    if kill {
        suite.mq.kill9().await?;
    } else {
        suite.mq.stop_clean().await?;
    }
    let stop_took = down.elapsed();
    step(t0, "broker down");
    sleep(3.0).await;
    suite.mq.spawn()?;
    let boot = suite.mq.wait_ready(Duration::from_secs(90)).await?;
    let last_fault = Instant::now();
    step(t0, "broker up again");
    let outage = down.elapsed();
    let accepted = load.await?;
    step(t0, &format!("load done: {} accepted", accepted.ids.len()));
    let name = if kill {
        "2b. RabbitMQ kill -9, restart"
    } else {
        "2a. RabbitMQ clean stop, restart"
    };
    let row = finish(
        name,
        suite,
        env,
        &accepted,
        &|| last_fault,
        async |row: &mut Row, _db: &sqlx::PgPool| {
            row.note(format!(
                "broker {} in {}, down {} in all (boot {})",
                if kill { "killed" } else { "stopped" },
                secs(stop_took),
                secs(outage),
                secs(boot)
            ));
        },
    )
    .await;
    Ok(row)
}

/// 3. PostgreSQL restarted (`pg_ctl restart -m fast`) mid-load.
async fn postgres_restart(suite: &mut Suite) -> Result<Row> {
    let env = suite.env("s3").await?;
    let load = spawn_load(&env, plain("s3", TASKS), 150.0);
    let t0 = Instant::now();
    sleep(5.0).await;
    let t = Instant::now();
    step(t0, "pg_ctl restart -m fast");
    tokio::task::block_in_place(|| suite.pg.restart_fast())?;
    let restart_took = t.elapsed();
    let last_fault = Instant::now();
    step(t0, "PostgreSQL back");
    let accepted = load.await?;
    step(t0, &format!("load done: {} accepted", accepted.ids.len()));
    let row = finish(
        "3. PostgreSQL restart mid-load",
        suite,
        env,
        &accepted,
        &|| last_fault,
        async |row: &mut Row, _db: &sqlx::PgPool| {
            row.note(format!(
                "pg_ctl restart -m fast took {}",
                secs(restart_took)
            ));
        },
    )
    .await;
    Ok(row)
}

/// 4. Enqueue while RabbitMQ is down for 20 s: every 202 has a row, and all run after it returns.
async fn enqueue_while_broker_down(suite: &mut Suite) -> Result<Row> {
    let t0 = Instant::now();
    let env = suite.env("s4").await?;
    step(t0, "rabbitmqctl stop");
    suite.mq.stop_clean().await?;
    let down = Instant::now();
    step(t0, "broker down; load 2000 tasks at 110/s");
    let accepted = env.client.drive(plain("s4", TASKS), 110.0, IN_FLIGHT).await;
    step(
        t0,
        &format!(
            "load done: {} accepted ({:?})",
            accepted.ids.len(),
            accepted.answers.statuses
        ),
    );
    let elapsed = down.elapsed();
    if elapsed < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_secs(20) - elapsed).await;
    }
    // Before the broker returns: every accepted task has its row, and none ran.
    let ids: Vec<Uuid> = accepted.ids.values().copied().collect();
    let rows = check::statuses(&env.db, &ids).await?;
    let missing = ids.iter().filter(|id| !rows.contains_key(id)).count();
    let ran_early = {
        let wanted: std::collections::HashSet<Uuid> = ids.iter().copied().collect();
        suite
            .agent
            .receipts()
            .iter()
            .filter(|r| r.task_id.is_some_and(|id| wanted.contains(&id)))
            .count()
    };
    let unpublished: i64 = sqlx::query_scalar(
        "select count(*) from tasks where id = any($1) and published_at is null",
    )
    .bind(&ids)
    .fetch_one(&env.db)
    .await?;
    let up_start = Instant::now();
    step(t0, "starting the broker");
    suite.mq.spawn()?;
    suite.mq.wait_ready(Duration::from_secs(90)).await?;
    let last_fault = Instant::now();
    step(t0, "broker up again");
    let outage = down.elapsed();
    let row = finish(
        "4. enqueue while RabbitMQ is down 20 s",
        suite,
        env,
        &accepted,
        &|| last_fault,
        async |row: &mut Row, _db: &sqlx::PgPool| {
            let twos: usize = accepted
                .answers
                .statuses
                .iter()
                .filter(|(s, _)| (200..300).contains(*s))
                .map(|(_, n)| n)
                .sum();
            row.note(format!(
                "{twos} 2xx answers while the broker was down; {unpublished} rows unpublished \
                 before it returned; broker down {}",
                secs(outage)
            ));
            if missing > 0 {
                row.fail(format!("{missing} accepted tasks had no row"));
            }
            if ran_early > 0 {
                row.fail(format!("{ran_early} tasks ran while the broker was down"));
            }
            let late = suite
                .agent
                .receipts()
                .iter()
                .filter(|r| r.task_id.is_some_and(|id| ids.contains(&id)) && r.at < up_start)
                .count();
            if late > 0 {
                row.fail(format!("{late} receipts before the broker came back"));
            }
        },
    )
    .await;
    Ok(row)
}

/// One cancel request and what it answered.
struct Cancel {
    id: Uuid,
    category: &'static str,
    status: u16,
    /// The attempt running when a 202 was answered.
    attempt: i64,
    answered: Instant,
}

/// 5. 500 cancels spread over queued, running and retrying tasks, one worker SIGKILLed meanwhile.
async fn cancels(suite: &mut Suite) -> Result<Row> {
    let t0 = Instant::now();
    let env = suite.env("s5").await?;
    // Retrying: the first answer is 500 with Retry-After 10 s. Slow: 8 s at the agent, so they
    // fill every worker slot and the plain ones behind them stay queued.
    let mut specs = Vec::new();
    for i in 0..300 {
        specs.push(Spec::recorder(
            format!("s5-retry-{i:05}"),
            json!({"fail_first": 1, "retry_after": 10}),
        ));
    }
    for i in 0..150 {
        specs.push(Spec::recorder(
            format!("s5-slow-{i:05}"),
            json!({"delay_ms": 8000}),
        ));
    }
    specs.extend(plain("s5", TASKS - 450));
    let accepted = env.client.drive(specs, 600.0, IN_FLIGHT).await;
    step(t0, &format!("load done: {} accepted", accepted.ids.len()));
    sleep(0.5).await;

    // Pick the targets from what the rows say now.
    let ids: Vec<Uuid> = accepted.ids.values().copied().collect();
    let rows = check::statuses(&env.db, &ids).await?;
    let mut running = Vec::new();
    let mut retrying = Vec::new();
    let mut queued = Vec::new();
    for (id, (status, attempts)) in &rows {
        match (status.as_str(), *attempts) {
            ("running", _) => running.push(*id),
            ("queued", a) if a > 0 => retrying.push(*id),
            ("queued", _) => queued.push(*id),
            _ => {}
        }
    }
    let (n_running, n_retrying) = (running.len().min(120), retrying.len().min(190));
    let n_queued = (500 - n_running - n_retrying).min(queued.len());
    let mut targets: Vec<(Uuid, &'static str)> = Vec::new();
    targets.extend(running[..n_running].iter().map(|id| (*id, "running")));
    targets.extend(retrying[..n_retrying].iter().map(|id| (*id, "retrying")));
    targets.extend(queued[..n_queued].iter().map(|id| (*id, "queued")));
    if targets.len() < 500 {
        anyhow::bail!(
            "only {} cancel targets (running {}, retrying {}, queued {})",
            targets.len(),
            running.len(),
            retrying.len(),
            queued.len()
        );
    }

    // One worker down while the cancels land.
    let victim = WORKER_IDS[rand::rng().random_range(0..WORKER_IDS.len())];
    env.fleet
        .lock()
        .await
        .worker(victim)
        .context("worker")?
        .kill9()?;
    let killed_at = Instant::now();
    step(t0, &format!("SIGKILLed {victim}; sending 500 cancels"));
    let mut set = JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    for (id, category) in targets {
        let client = env.client.clone();
        let permit = permits.clone().acquire_owned().await?;
        set.spawn(async move {
            let mut tries = 0;
            let answer = loop {
                tries += 1;
                match client
                    .post(&format!("/tasks/{id}/cancel"), &json!({}))
                    .await
                {
                    Ok((status, body)) if status.as_u16() < 500 || tries >= 5 => {
                        break (status.as_u16(), body);
                    }
                    _ => sleep(0.2).await,
                }
            };
            drop(permit);
            Cancel {
                id,
                category,
                status: answer.0,
                attempt: answer.1["attempts"].as_i64().unwrap_or(0),
                answered: Instant::now(),
            }
        });
    }
    let mut done: Vec<Cancel> = Vec::new();
    while let Some(c) = set.join_next().await {
        done.push(c?);
    }
    env.fleet
        .lock()
        .await
        .worker(victim)
        .context("worker")?
        .start()?;
    let last_fault = Instant::now();
    let down_for = killed_at.elapsed();
    step(t0, &format!("cancels answered; restarted {victim}"));

    let row = finish(
        "5. 500 cancels, a worker SIGKILLed",
        suite,
        env,
        &accepted,
        &|| last_fault,
        async |row: &mut Row, db: &sqlx::PgPool| {
            let mut answers: HashMap<(&str, u16), usize> = HashMap::new();
            for c in &done {
                *answers.entry((c.category, c.status)).or_default() += 1;
            }
            let mut summary: Vec<String> = answers
                .iter()
                .map(|((cat, s), n)| format!("{cat} {s}×{n}"))
                .collect();
            summary.sort();
            row.note(format!(
                "{} cancels: {}; {victim} down {} meanwhile",
                done.len(),
                summary.join(", "),
                secs(down_for)
            ));
            let receipts = suite.agent.receipts();
            let confirmed: HashMap<Uuid, &Cancel> = done
                .iter()
                .filter(|c| c.status == 200 || c.status == 202)
                .map(|c| (c.id, c))
                .collect();
            let ids: Vec<Uuid> = confirmed.keys().copied().collect();
            match check::statuses(db, &ids).await {
                Ok(finals) => {
                    let wrong: Vec<String> = ids
                        .iter()
                        .filter_map(|id| match finals.get(id) {
                            Some((s, _)) if s == "cancelled" => None,
                            Some((s, _)) => Some(format!("{id} {s}")),
                            None => Some(format!("{id} missing")),
                        })
                        .collect();
                    if !wrong.is_empty() {
                        row.fail(format!(
                            "{} cancels answered 200/202 did not end cancelled, e.g. {}",
                            wrong.len(),
                            wrong[0]
                        ));
                    }
                }
                Err(e) => row.fail(format!("cannot read cancelled tasks: {e}")),
            }
            let succeeded: i64 = sqlx::query_scalar(
                "select count(*) from task_attempts where task_id = any($1) and outcome = 'succeeded'",
            )
            .bind(&ids)
            .fetch_one(db)
            .await
            .unwrap_or(-1);
            if succeeded != 0 {
                row.fail(format!("{succeeded} succeeded attempts recorded for cancelled tasks"));
            }
            // Nothing new may start after the cancel was answered: no receipt at all after a 200,
            // none of a later attempt after a 202 (the attempt running then may still reach
            // the agent).
            let mut late = 0;
            let mut same_attempt = 0;
            for r in &receipts {
                let Some(c) = r.task_id.and_then(|id| confirmed.get(&id)) else {
                    continue;
                };
                if r.at > c.answered {
                    if c.status == 200 || r.attempt > c.attempt {
                        late += 1;
                    } else {
                        same_attempt += 1;
                    }
                }
            }
            if late > 0 {
                row.fail(format!("{late} executions started after their cancel was answered"));
            }
            if same_attempt > 0 {
                row.note(format!(
                    "{same_attempt} attempts already running at a 202 cancel reached the agent afterwards"
                ));
            }
        },
    )
    .await;
    Ok(row)
}

/// 6. SIGTERM drain of every worker under load, then restart them.
async fn sigterm_drain(suite: &mut Suite) -> Result<Row> {
    let t0 = Instant::now();
    let env = suite.env("s6").await?;
    let load = spawn_load(&env, plain("s6", TASKS), 150.0);
    sleep(5.0).await;
    step(t0, "SIGTERM to every worker");
    let t = Instant::now();
    let mut exits = Vec::new();
    {
        let mut fleet = env.fleet.lock().await;
        for w in &mut fleet.workers {
            w.sigterm()?;
        }
        for w in &mut fleet.workers {
            exits.push((w.name.clone(), w.wait_exit(Duration::from_secs(30)).await));
        }
    }
    let drained_in = t.elapsed();
    let running: i64 = sqlx::query_scalar("select count(*) from tasks where status = 'running'")
        .fetch_one(&env.db)
        .await?;
    {
        let mut fleet = env.fleet.lock().await;
        for w in &mut fleet.workers {
            w.start()?;
        }
    }
    let last_fault = Instant::now();
    step(t0, "workers exited; restarted them");
    let accepted = load.await?;
    step(t0, &format!("load done: {} accepted", accepted.ids.len()));
    let row = finish(
        "6. SIGTERM drain of every worker",
        suite,
        env,
        &accepted,
        &|| last_fault,
        async |row: &mut Row, _db: &sqlx::PgPool| {
            row.note(format!(
                "3 workers drained and exited in {}; restarted at once",
                secs(drained_in)
            ));
            for (name, exit) in &exits {
                match exit {
                    Ok(status) if status.success() => {}
                    Ok(status) => row.fail(format!("{name} exited with {status} after SIGTERM")),
                    Err(e) => row.fail(format!("{name}: {e:#}")),
                }
            }
            if running > 0 {
                row.fail(format!(
                    "{running} tasks left `running` after every worker stopped cleanly"
                ));
            }
        },
    )
    .await;
    Ok(row)
}

/// 7. A poison task: every attempt kills the worker that runs it (the agent SIGKILLs it).
async fn poison(suite: &mut Suite) -> Result<Row> {
    let t0 = Instant::now();
    let env = suite.env("s7").await?;
    let kills: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let (hook, mut events) = tokio::sync::mpsc::unbounded_channel();
    suite.agent.set_poison_hook(Some(hook));
    let killer = {
        let fleet = env.fleet.clone();
        let db = env.db.clone();
        let kills = kills.clone();
        tokio::spawn(async move {
            while let Some((task_id, done)) = events.recv().await {
                let worker: Option<String> =
                    sqlx::query_scalar("select worker_id from tasks where id = $1")
                        .bind(task_id)
                        .fetch_one(&db)
                        .await
                        .ok()
                        .flatten();
                if let Some(id) = worker {
                    let mut guard = fleet.lock().await;
                    if let Some(w) = guard.worker(&id)
                        && w.kill9().is_ok()
                    {
                        kills.lock().unwrap().push((id.clone(), Instant::now()));
                        step(
                            t0,
                            &format!("poison task {task_id}: SIGKILLed {id}, its worker"),
                        );
                    }
                    drop(guard);
                    let _ = done.send(());
                    sleep(0.3).await;
                    if let Some(w) = fleet_worker_start(&fleet, &id).await {
                        eprintln!("faults: cannot restart {id}: {w}");
                    }
                }
            }
        })
    };
    let load = spawn_load(&env, plain("s7", TASKS), 150.0);
    sleep(1.0).await;
    let poison = env
        .client
        .enqueue(
            &Spec::keyed(
                "s7-poison".into(),
                json!({"agent": "recorder", "command": "poison", "meta": {"poison": true},
                       "max_attempts": 3}),
            ),
            &Mutex::default(),
        )
        .await?;
    let mut accepted = load.await?;
    step(t0, &format!("load done: {} accepted", accepted.ids.len()));
    accepted.ids.insert("s7-poison".into(), poison.id);
    let kills_at_end = kills.clone();
    let row = finish(
        "7. poison task kills its worker",
        suite,
        env,
        &accepted,
        &|| {
            kills_at_end
                .lock()
                .unwrap()
                .last()
                .map_or_else(Instant::now, |k| k.1)
        },
        async |row: &mut Row, _db: &sqlx::PgPool| {
            let kills = kills.lock().unwrap().clone();
            row.note(format!(
                "poison attempts killed {} workers: {}",
                kills.len(),
                kills
                    .iter()
                    .map(|k| k.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        },
    )
    .await;
    suite.agent.set_poison_hook(None);
    killer.abort();
    Ok(row)
}

async fn fleet_worker_start(
    fleet: &Arc<tokio::sync::Mutex<crate::fleet::Fleet>>,
    id: &str,
) -> Option<String> {
    let mut fleet = fleet.lock().await;
    let w = fleet.worker(id)?;
    if w.running() {
        return None;
    }
    w.start().err().map(|e| format!("{e:#}"))
}

/// 8. The same idempotency key enqueued 100 times concurrently (five keys), during a load.
async fn same_key(suite: &mut Suite) -> Result<Row> {
    let env = suite.env("s8").await?;
    let load = spawn_load(&env, plain("s8", TASKS), 300.0);
    sleep(2.0).await;
    let mut set = JoinSet::new();
    for k in 0..5 {
        for _ in 0..100 {
            let client = env.client.clone();
            set.spawn(async move {
                let key = format!("s8-same-{k}");
                let spec = Spec::recorder(key.clone(), json!({}));
                (key, client.enqueue(&spec, &Mutex::default()).await)
            });
        }
    }
    let mut answers: HashMap<String, Vec<(u16, Uuid)>> = HashMap::new();
    let mut errors = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (key, result) = joined?;
        match result {
            Ok(e) => answers.entry(key).or_default().push((e.status, e.id)),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let last_fault = Instant::now();
    let mut accepted = load.await?;
    for (key, list) in &answers {
        accepted.ids.insert(key.clone(), list[0].1);
    }
    let row = finish(
        "8. same key ×100 concurrently",
        suite,
        env,
        &accepted,
        &|| last_fault,
        async |row: &mut Row, _db: &sqlx::PgPool| {
            let mut created = 0;
            for (key, list) in &answers {
                let first = list[0].1;
                if list.iter().any(|(_, id)| *id != first) {
                    row.fail(format!("answers for {key} name different ids"));
                }
                if list.len() != 100 {
                    row.fail(format!("{key}: {} of 100 enqueues answered", list.len()));
                }
                let new = list.iter().filter(|(s, _)| *s == 202).count();
                created += new;
                if new != 1 {
                    row.note(format!("{key}: {new} answers were 202 (expected 1)"));
                }
            }
            row.note(format!(
                "5 keys × 100 concurrent enqueues: {created} answered 202, the rest 200"
            ));
            for e in errors.iter().take(3) {
                row.fail(format!("same-key enqueue failed: {e}"));
            }
        },
    )
    .await;
    Ok(row)
}

/// Slow tasks that fill every worker slot: half on their only attempt, half with retries left.
fn slow(prefix: &str, n: usize, delay_ms: u64) -> Vec<Spec> {
    (0..n)
        .map(|i| {
            let key = format!("{prefix}-slow-{i:03}");
            let mut spec = Spec::recorder(key, json!({"delay_ms": delay_ms}));
            spec.body["max_attempts"] = json!(if i % 2 == 0 { 1 } else { 3 });
            spec.body["timeout_secs"] = json!(120);
            spec
        })
        .collect()
}

/// Scenario 9: PostgreSQL frozen (SIGSTOP of every server process) for twice the lease while every
/// worker slot holds a slow task: a stall of the database is not the death of the workers. No
/// task may be re-run, failed or reported lost because nobody could renew a lease meanwhile.
async fn postgres_freeze(suite: &mut Suite) -> Result<Row> {
    let t0 = Instant::now();
    let env = suite.env("s9").await?;
    let mut specs = slow("s9", 96, 20_000);
    specs.extend(plain("s9", TASKS - 96));
    let load = spawn_load(&env, specs, 150.0);
    sleep(4.0).await;
    step(t0, "SIGSTOP PostgreSQL for 20 s (twice the lease)");
    let frozen =
        tokio::task::block_in_place(|| suite.pg.signal_all(nix::sys::signal::Signal::SIGSTOP))?;
    sleep(20.0).await;
    tokio::task::block_in_place(|| suite.pg.signal_all(nix::sys::signal::Signal::SIGCONT))?;
    let last_fault = Instant::now();
    step(t0, "PostgreSQL thawed");
    let accepted = load.await?;
    step(t0, &format!("load done: {} accepted", accepted.ids.len()));
    let row = finish(
        "9. PostgreSQL frozen 20 s (2 leases)",
        suite,
        env,
        &accepted,
        &|| last_fault,
        async |row: &mut Row, _db: &sqlx::PgPool| {
            row.note(format!("{frozen} PostgreSQL processes frozen for 20 s"));
            if row.failed > 0 {
                row.fail(format!(
                    "{} tasks failed after a database stall",
                    row.failed
                ));
            }
            if row.duplicates > 0 {
                row.fail(format!(
                    "{} duplicate executions after a database stall",
                    row.duplicates
                ));
            }
        },
    )
    .await;
    Ok(row)
}

/// Scenario 10: one worker frozen (SIGSTOP) for 2.5 leases while it holds slow tasks: its tasks
/// with attempts left may run again elsewhere (reported as duplicates), but none that it finishes
/// after it thaws may end `failed`.
async fn worker_freeze(suite: &mut Suite) -> Result<Row> {
    let t0 = Instant::now();
    let env = suite.env("s10").await?;
    let mut specs = slow("s10", 96, 8_000);
    specs.extend(plain("s10", TASKS - 96));
    let load = spawn_load(&env, specs, 150.0);
    sleep(3.0).await;
    step(t0, "SIGSTOP w1 for 25 s (lease 10 s)");
    env.fleet
        .lock()
        .await
        .worker("w1")
        .context("worker")?
        .freeze(true)?;
    sleep(25.0).await;
    env.fleet
        .lock()
        .await
        .worker("w1")
        .context("worker")?
        .freeze(false)?;
    let last_fault = Instant::now();
    step(t0, "w1 thawed");
    let accepted = load.await?;
    step(t0, &format!("load done: {} accepted", accepted.ids.len()));
    let row = finish(
        "10. a worker frozen 25 s (2.5 leases)",
        suite,
        env,
        &accepted,
        &|| last_fault,
        async |row: &mut Row, _db: &sqlx::PgPool| {
            if row.failed > 0 {
                row.fail(format!("{} tasks failed after a worker froze", row.failed));
            }
        },
    )
    .await;
    Ok(row)
}

/// Scenario 11: RabbitMQ loses its data: pause the fleet, enqueue 600 (all published), stop the broker,
/// delete its data directory, start it, resume. Every task must still run, and within a minute
/// of the broker's return.
async fn broker_data_loss(suite: &mut Suite) -> Result<Row> {
    const LOSS_TASKS: usize = 600;
    let t0 = Instant::now();
    let env = suite.env("s11").await?;
    // The workers store the first epoch marker when they connect; the loss must come after it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, Option<Uuid>>("select broker_epoch from control where id")
        .fetch_one(&env.db)
        .await?
        .is_none()
    {
        anyhow::ensure!(Instant::now() < deadline, "no epoch marker after 30 s");
        sleep(0.2).await;
    }
    let (status, _) = env.client.post("/stop", &json!({})).await?;
    anyhow::ensure!(status.is_success(), "pause the fleet: {status}");
    step(t0, "fleet paused; enqueue 600 tasks");
    let accepted = env
        .client
        .drive(plain("s11", LOSS_TASKS), 200.0, IN_FLIGHT)
        .await;
    let ids: Vec<Uuid> = accepted.ids.values().copied().collect();
    // The API marks a row published a moment after the broker's confirm: wait for every mark, so
    // the database says the broker holds them all when it loses them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let published = loop {
        let published: i64 = sqlx::query_scalar(
            "select count(*) from tasks where id = any($1) and published_at is not null",
        )
        .bind(&ids)
        .fetch_one(&env.db)
        .await?;
        if published as usize == ids.len() || Instant::now() > deadline {
            break published;
        }
        sleep(0.2).await;
    };
    step(t0, &format!("{published} published; rabbitmqctl stop"));
    suite.mq.stop_clean().await?;
    suite.mq.wipe_data()?;
    step(t0, "broker data directory deleted; starting it");
    suite.mq.spawn()?;
    suite.mq.wait_ready(Duration::from_secs(90)).await?;
    let back = Instant::now();
    step(t0, "broker up, empty; resuming the fleet");
    let (status, _) = env.client.post("/start", &json!({})).await?;
    anyhow::ensure!(status.is_success(), "resume the fleet: {status}");
    let row = finish(
        "11. RabbitMQ loses its data (600 published)",
        suite,
        env,
        &accepted,
        &|| back,
        async |row: &mut Row, _db: &sqlx::PgPool| {
            row.note(format!(
                "{published} of {} tasks published when the broker lost its data directory",
                ids.len()
            ));
            if row.drain.is_some_and(|d| d > Duration::from_secs(60)) {
                row.fail("the tasks took over a minute after the broker's return".to_owned());
            }
        },
    )
    .await;
    Ok(row)
}

/// The tasks of scenario 12, interleaved: per 20, one slow recorder task (1.5 s at the agent, so
/// some are running at the kill), one `sleep` of 1 s, one `echo` sent without an idempotency key,
/// one keyed `echo` and 16 plain recorder tasks.
fn embedded_specs(n: usize) -> Vec<Spec> {
    (0..n)
        .map(|i| match i % 20 {
            0 => Spec::recorder(format!("s12-slow-{i:05}"), json!({"delay_ms": 1500})),
            5 => Spec::keyed(
                format!("s12-sleep-{i:05}"),
                json!({"agent": "sleep", "command": "nap", "meta": {"ms": 1000}}),
            ),
            10 => Spec::keyless(
                format!("s12-keyless-echo-{i:05}"),
                json!({"agent": "echo", "command": format!("keyless {i}")}),
            ),
            15 => Spec::keyed(
                format!("s12-echo-{i:05}"),
                json!({"agent": "echo", "command": format!("keyed {i}")}),
            ),
            _ => Spec::recorder(format!("s12-{i:05}"), json!({})),
        })
        .collect()
}

/// Wait until the `bgagent dev` process answers `/health` and shows two live worker loops.
async fn embedded_ready(client: &Client, dev: &mut Proc, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        anyhow::ensure!(
            dev.running(),
            "bgagent dev exited while starting\n{}",
            dev.tail(25)
        );
        if let Ok((status, body)) = client.get("/workers").await
            && status.is_success()
        {
            let live = body["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|w| w["stopped_at"].is_null())
                .count();
            if live == 2 {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "bgagent dev not ready in {timeout:?}\n{}",
            dev.tail(25)
        );
        sleep(0.1).await;
    }
}

/// Ids of the tasks `GET /tasks?status=…` lists now (every page).
async fn listed(client: &Client, status: &str) -> Result<Vec<Uuid>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/tasks?status={status}&limit=500");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (code, body) = client.get(&path).await?;
        anyhow::ensure!(code.is_success(), "GET {path}: {code} {body}");
        ids.extend(
            body["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["id"].as_str().and_then(|s| Uuid::parse_str(s).ok())),
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(ids),
        }
    }
}

/// Scenario 12: the embedded engine. One `bgagent dev` process — the API and two worker loops on a
/// SQLite file with an in-process queue — is SIGKILLed under load and started again at once on the
/// same data dir. Its rows are reachable only through its API, so the checker reads
/// `GET /tasks/{id}`. Every accepted task must exist and finish `succeeded` (one kill takes one
/// attempt at most, every task has three); a task may run twice only if it was at the agent when
/// the process died (once before the kill, once after the restart).
async fn embedded_kill(suite: &mut Suite) -> Result<Row> {
    const NAME: &str = "12. embedded: kill -9 bgagent dev under load, restart";
    let t0 = Instant::now();
    let dir = suite.root.path().join("s12");
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    *suite.current_logs.lock().unwrap() = Some(dir.clone());
    let port = crate::services::spare_ports(1)?[0];
    let mut dev = crate::fleet::embedded_dev(&data_dir, &suite.api_key, port, &dir);
    dev.start()?;
    let client = Client::new(&format!("http://127.0.0.1:{port}"), &suite.api_key)?;
    embedded_ready(&client, &mut dev, Duration::from_secs(60)).await?;
    let (status, body) = client
        .post(
            "/agents/register",
            &json!({"name": "recorder", "endpoint": suite.agent.url}),
        )
        .await?;
    anyhow::ensure!(status.is_success(), "register the agent: {status} {body}");
    step(
        t0,
        "bgagent dev up (embedded, 2 worker loops); load 2000 tasks at 125/s",
    );
    let specs = embedded_specs(TASKS);
    let keyed: std::collections::HashSet<String> = specs
        .iter()
        .filter(|s| s.send_key)
        .map(|s| s.key.clone())
        .collect();
    let load = {
        let client = client.clone();
        tokio::spawn(async move { client.drive(specs, 125.0, IN_FLIGHT).await })
    };
    sleep(6.0).await;
    let running_at_kill = listed(&client, "running").await?;
    dev.kill9()?;
    let killed = Instant::now();
    step(
        t0,
        &format!(
            "SIGKILLed bgagent dev ({} tasks running); starting it again on the same data dir",
            running_at_kill.len()
        ),
    );
    dev.start()?;
    let restarted = Instant::now();
    embedded_ready(&client, &mut dev, Duration::from_secs(60)).await?;
    let boot = restarted.elapsed();
    step(t0, &format!("bgagent dev up again ({})", secs(boot)));
    let accepted = load.await?;
    step(t0, &format!("load done: {} accepted", accepted.ids.len()));
    let (mut row, tasks) = check::check_http(
        NAME,
        &client,
        &accepted.ids,
        &keyed,
        || suite.agent.receipts(),
        &|| restarted,
        SETTLE,
    )
    .await;
    let last_accepted = accepted.at.values().max().copied().unwrap_or(restarted);
    row.note(format!(
        "killed with {} tasks running; restarted {} after the kill, ready {} later; the load \
         went on for {} after the restart (the drain includes it)",
        running_at_kill.len(),
        secs(restarted - killed),
        secs(boot),
        secs(last_accepted.saturating_duration_since(restarted))
    ));
    if row.failed > 0 {
        let sample = tasks
            .values()
            .find(|t| t.status == "failed")
            .and_then(|t| t.last_error.clone())
            .unwrap_or_default();
        row.fail(format!(
            "{} tasks failed (one kill takes one of three attempts at most); e.g. {sample}",
            row.failed
        ));
    }
    if row.wrong_status > 0 {
        row.fail(format!(
            "wrong final status = {} (failed although the agent answered 200)",
            row.wrong_status
        ));
    }
    // At least once: a task may run again only if the process died while it was at the agent.
    let ids: std::collections::HashSet<Uuid> = accepted.ids.values().copied().collect();
    let mut runs: HashMap<Uuid, (usize, usize)> = HashMap::new();
    for r in suite.agent.receipts() {
        if let Some(id) = r.task_id.filter(|id| ids.contains(id))
            && r.status == 200
        {
            let (before, after) = runs.entry(id).or_default();
            if r.at < restarted {
                *before += 1;
            } else {
                *after += 1;
            }
        }
    }
    let across_kill = runs.values().filter(|(b, a)| *b == 1 && *a == 1).count();
    let unexplained = runs.values().filter(|(b, a)| *b > 1 || *a > 1).count();
    if row.duplicates > 0 {
        row.note(format!(
            "{} duplicate executions: {across_kill} tasks ran before the kill and again after \
             the restart (at least once)",
            row.duplicates
        ));
    }
    if unexplained > 0 {
        row.fail(format!(
            "{unexplained} tasks ran twice within one life of the process (not explained by the kill)"
        ));
    }
    let rerun_builtins = tasks
        .values()
        .filter(|t| t.agent != "recorder" && t.attempts > 1)
        .count();
    let rerun = tasks.values().filter(|t| t.attempts > 1).count();
    row.note(format!(
        "{rerun} tasks took a second attempt ({rerun_builtins} of them `sleep`/`echo`, which no \
         agent records)"
    ));
    // Tasks the load does not know of (sent without a key, the answer lost at the kill) must not
    // be left behind either: nothing in the data dir may stay queued or running.
    let mut open = listed(&client, "queued").await?;
    open.extend(listed(&client, "running").await?);
    let unknown = open.iter().filter(|id| !ids.contains(id)).count();
    if unknown > 0 {
        row.fail(format!(
            "{unknown} tasks the load never saw accepted are still queued or running"
        ));
    }
    let log = std::fs::read_to_string(&dev.log).unwrap_or_default();
    let recovered: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("recovered the tasks a stopped process left running"))
        .collect();
    match recovered.as_slice() {
        [line] => {
            let n: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            row.note(format!(
                "at the restart the store recovered {} tasks the killed process left running",
                n["fields"]["tasks"]
            ));
        }
        lines => row.note(format!(
            "{} recovery lines in the log (expected 1)",
            lines.len()
        )),
    }
    let keyless = accepted.ids.len()
        - keyed
            .iter()
            .filter(|k| accepted.ids.contains_key(*k))
            .count();
    row.note(format!(
        "{keyless} accepted tasks were sent without an idempotency key"
    ));
    answer_notes(&mut row, &accepted);
    if !dev.running() {
        row.fail("bgagent dev was not running at the end of the scenario");
    }
    log_findings(&mut row, std::iter::once(&dev));
    if !row.failures.is_empty() {
        println!("faults: log tail of {NAME}:\n{}", dev.tail(25));
    }
    if dev.running() {
        dev.sigterm()?;
        match dev.wait_exit(Duration::from_secs(20)).await {
            Ok(status) if status.success() => {}
            Ok(status) => row.fail(format!("bgagent dev exited with {status} after SIGTERM")),
            Err(e) => row.fail(format!("{e:#}")),
        }
    }
    Ok(row)
}
