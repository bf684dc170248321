//! `GET /tasks/{id}?wait_secs=N`: answer once the task is final, without the client polling.
//!
//! One watcher per API process holds a registry of the task ids requests wait on. While at least
//! one request waits, it asks the store every [`TICK`] which of those ids are final, in one query
//! on the primary key, and wakes their waiters; with no waiter it queries nothing. The store is
//! the truth, so this works whichever API replica the client reached and adds nothing to the
//! worker's path.
//!
//! Bounds: at most [`MAX_WAITERS`] requests wait at once per process; beyond that a request is
//! answered at once with the task's current state (the client simply asks again). A request whose
//! client goes away is dropped by the server, and its guard leaves the registry. A wait is
//! clamped to end [`TIMEOUT_MARGIN`] before the request timeout (`BGAGENT_REQUEST_TIMEOUT_SECS`),
//! so it answers with the current state rather than being cut with a 408.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bgagent_shared::store::TaskStore;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

/// Longest wait a client may ask for.
pub const MAX_WAIT_SECS: u64 = 60;
/// Requests that may wait at once in one process.
pub const MAX_WAITERS: usize = 10_000;
/// How often the watcher asks the store while someone waits.
pub const TICK: Duration = Duration::from_millis(100);
/// A wait ends this long before the request timeout.
pub const TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// The registry of waiting requests, shared by the handlers and the watcher.
#[derive(Clone)]
pub struct Waits {
    inner: Arc<Inner>,
    /// Longest wait the request timeout leaves room for.
    longest: Duration,
}

struct Inner {
    entries: Mutex<Registry>,
    /// Wakes an idle watcher when the first request registers.
    wake: Notify,
}

#[derive(Default)]
struct Registry {
    by_task: HashMap<Uuid, Entry>,
    waiters: usize,
}

struct Entry {
    done: watch::Sender<bool>,
    waiters: usize,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding this lock leaves counts that are still consistent enough to use.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A registered wait; dropping it (the answer was sent, or the client left) unregisters it.
pub struct Waiter {
    inner: Arc<Inner>,
    id: Uuid,
    done: watch::Receiver<bool>,
}

impl Waits {
    /// A registry and its watcher task on the current runtime; the watcher ends with the registry.
    pub fn start(store: Arc<dyn TaskStore>, request_timeout: Duration) -> Self {
        let inner = Arc::new(Inner {
            entries: Mutex::new(Registry::default()),
            wake: Notify::new(),
        });
        tokio::spawn(watch_loop(Arc::downgrade(&inner), store));
        Self {
            inner,
            longest: request_timeout.saturating_sub(TIMEOUT_MARGIN),
        }
    }

    /// The wait actually served for a requested one.
    pub fn clamp(&self, wanted: Duration) -> Duration {
        wanted.min(self.longest)
    }

    /// Register a wait on `id`, or `None` when [`MAX_WAITERS`] already wait.
    pub fn register(&self, id: Uuid) -> Option<Waiter> {
        let mut registry = self.inner.lock();
        if registry.waiters >= MAX_WAITERS {
            return None;
        }
        registry.waiters += 1;
        let first = registry.waiters == 1;
        let entry = registry.by_task.entry(id).or_insert_with(|| Entry {
            done: watch::channel(false).0,
            waiters: 0,
        });
        entry.waiters += 1;
        let done = entry.done.subscribe();
        drop(registry);
        if first {
            self.inner.wake.notify_one();
        }
        Some(Waiter {
            inner: self.inner.clone(),
            id,
            done,
        })
    }

    /// Requests waiting now (the `bgagent_api_task_waiters` figure and tests).
    pub fn waiting(&self) -> usize {
        self.inner.lock().waiters
    }
}

impl Waiter {
    /// Resolves when the watcher saw the task final (never, if it is not).
    pub async fn finished(&mut self) {
        // An error means the sender was dropped, which cannot happen while we are registered.
        if self.done.wait_for(|done| *done).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut registry = self.inner.lock();
        registry.waiters = registry.waiters.saturating_sub(1);
        if let Some(entry) = registry.by_task.get_mut(&self.id) {
            entry.waiters = entry.waiters.saturating_sub(1);
            if entry.waiters == 0 {
                registry.by_task.remove(&self.id);
            }
        }
    }
}

async fn watch_loop(inner: Weak<Inner>, store: Arc<dyn TaskStore>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let ids: Vec<Uuid> = {
            let registry = strong.lock();
            registry
                .by_task
                .iter()
                .filter(|(_, entry)| !*entry.done.borrow())
                .map(|(id, _)| *id)
                .collect()
        };
        if ids.is_empty() {
            // Idle: sleep until a request registers. The timeout only lets the loop notice that
            // the registry is gone (the API stopped).
            let _ = tokio::time::timeout(Duration::from_secs(1), strong.wake.notified()).await;
            continue;
        }
        drop(strong);
        tokio::time::sleep(TICK).await;
        let final_ids = match store.final_among(&ids).await {
            Ok(final_ids) => final_ids,
            Err(e) => {
                // Waiters still answer at their deadline with what the store then says.
                tracing::warn!(error = %e, waiting = ids.len(), "wait watcher: store query failed");
                continue;
            }
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let registry = strong.lock();
        for id in final_ids {
            if let Some(entry) = registry.by_task.get(&id) {
                entry.done.send_replace(true);
            }
        }
    }
}

/// Parse `wait_secs`: an integer from 0 to [`MAX_WAIT_SECS`].
pub fn parse_wait_secs(raw: Option<&str>) -> Result<Option<u64>, crate::error::ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    match raw.parse::<u64>() {
        Ok(n) if n <= MAX_WAIT_SECS => Ok(Some(n)),
        _ => Err(crate::error::ApiError::unprocessable(
            "wait_secs",
            format!("must be an integer from 0 to {MAX_WAIT_SECS}"),
        )),
    }
}

/// The task once it is final, or its current state after `wait` (clamped to the request
/// timeout); 404 at once for an unknown id (`GET /tasks/{id}?wait_secs=` and the MCP
/// `wait_task` tool).
pub async fn wait_task(
    state: &crate::state::AppState,
    id: Uuid,
    wait: Duration,
) -> crate::error::ApiResult<bgagent_shared::domain::Task> {
    use crate::routes::tasks::find_task;
    let wait = state.waits.clamp(wait);
    // Register before reading, so a task finishing in between is still seen by the watcher.
    let waiter = if wait.is_zero() {
        None
    } else {
        state.waits.register(id)
    };
    let task = find_task(state, id).await?;
    let Some(mut waiter) = waiter else {
        return Ok(task);
    };
    if task.status.is_terminal() {
        return Ok(task);
    }
    if tokio::time::timeout(wait, waiter.finished()).await.is_err() {
        // The deadline: answer with the current state.
    }
    drop(waiter);
    find_task(state, id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unstarted() -> Waits {
        Waits {
            inner: Arc::new(Inner {
                entries: Mutex::new(Registry::default()),
                wake: Notify::new(),
            }),
            longest: Duration::from_secs(29),
        }
    }

    #[test]
    fn waiters_are_bounded_and_leave_on_drop() {
        let waits = unstarted();
        let id = Uuid::now_v7();
        let held: Vec<Waiter> = (0..MAX_WAITERS)
            .filter_map(|_| waits.register(id))
            .collect();
        assert_eq!(held.len(), MAX_WAITERS);
        assert!(waits.register(Uuid::now_v7()).is_none(), "beyond the bound");
        drop(held);
        assert_eq!(waits.waiting(), 0);
        assert!(waits.inner.lock().by_task.is_empty());
        assert!(waits.register(id).is_some());
    }

    #[test]
    fn waits_are_clamped_to_the_request_timeout() {
        let waits = unstarted();
        assert_eq!(
            waits.clamp(Duration::from_secs(60)),
            Duration::from_secs(29)
        );
        assert_eq!(waits.clamp(Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[test]
    fn wait_secs_range() {
        assert_eq!(parse_wait_secs(None).ok(), Some(None));
        assert_eq!(parse_wait_secs(Some("0")).ok(), Some(Some(0)));
        assert_eq!(parse_wait_secs(Some("60")).ok(), Some(Some(60)));
        for bad in ["61", "-1", "x", "", "1.5"] {
            assert!(parse_wait_secs(Some(bad)).is_err(), "{bad}");
        }
    }
}
