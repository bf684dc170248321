//! The reaper: recovery of the running tasks of lost workers, judged only by the lease each
//! holder took and only with a current view of the store.

use bgagent_shared::domain::TaskStatus;
use bgagent_shared::store::Reaped;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::WorkerOptions;
use crate::dead_letters::dead_letter;
use crate::state::Shared;

/// Time a last-attempt task gets past its own timeout before the reaper fails it: the attempt
/// cannot legitimately run longer, so a holder that was frozen still gets to report it.
const LAST_ATTEMPT_GRACE: Duration = Duration::from_secs(30);

/// Recover the running tasks of workers that died or lost their lease.
pub(crate) async fn reaper_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let period = shared.options.heartbeat() * 2;
    let mut tick = tokio::time::interval(period);
    let mut view = DatabaseView::new(&shared.options);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match reap_once(&shared, &mut view).await {
            Ok(reaped) => {
                for task in reaped {
                    shared.metrics.recovered.inc();
                    tracing::warn!(task_id = %task.task_id, agent = %task.agent, status = task.status.as_str(), "recovered task of a lost worker");
                    if task.status == TaskStatus::Failed {
                        dead_letter(
                            &shared,
                            task.task_id,
                            &task.agent,
                            task.attempts,
                            Some("worker lost on the last attempt"),
                        );
                    }
                }
            }
            Err(e) => {
                view.lost();
                tracing::warn!(error = %e, "reaper pass failed");
            }
        }
    }
}

/// What the reaper knows about its own view of the database. A lease expires when its holder
/// stops renewing it; but while the database (or this process) stalls, nobody can renew, and
/// right after the stall every lease looks expired. So the reaper acts only once its view has
/// been current for a whole lease period, in which every live holder has renewed.
struct DatabaseView {
    /// Since when every round trip was prompt; None after a failure or stall.
    current_since: Option<Instant>,
    /// When the previous pass ran (a late pass means this process itself stalled).
    last_pass: Option<Instant>,
    /// A round trip slower than this is a stall.
    stall: Duration,
    /// How long the view must be current before leases are judged.
    settle: Duration,
    /// A pass later than this after the previous one means this process stalled.
    late_pass: Duration,
}

impl DatabaseView {
    fn new(options: &WorkerOptions) -> Self {
        let lease = Duration::from_secs(options.lease_secs.max(1));
        Self {
            current_since: None,
            last_pass: None,
            stall: (lease / 4).max(Duration::from_secs(1)),
            settle: lease + options.heartbeat(),
            late_pass: options.heartbeat() * 4 + lease / 4,
        }
    }

    fn lost(&mut self) {
        self.current_since = None;
    }
}

/// One reaper pass: reap only with a view that is current and has been for a lease period.
async fn reap_once(
    shared: &Shared,
    view: &mut DatabaseView,
) -> bgagent_shared::Result<Vec<Reaped>> {
    let sent = Instant::now();
    let late = view
        .last_pass
        .replace(sent)
        .is_some_and(|last| sent - last > view.late_pass);
    let db_now = shared.store.now().await?;
    let answered = Instant::now();
    if late || answered - sent > view.stall {
        tracing::info!(
            round_trip_ms = (answered - sent).as_millis() as u64,
            late,
            "database or worker stalled; leases are judged again once every holder could renew"
        );
        view.current_since = Some(answered);
        return Ok(Vec::new());
    }
    let current_since = *view.current_since.get_or_insert(answered);
    if answered - current_since < view.settle {
        return Ok(Vec::new());
    }
    // The reap must run promptly too: one that waits out a stall in the connection or the server
    // would judge leases nobody could renew.
    let run_before = chrono::Duration::from_std(answered.elapsed() + view.stall)
        .ok()
        .and_then(|slack| db_now.checked_add_signed(slack))
        .unwrap_or(db_now);
    shared.store.reap(LAST_ATTEMPT_GRACE, run_before).await
}
