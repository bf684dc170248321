//! Bounded `agent` label values for metrics.
//!
//! Clients choose agent names, and every label value is a series kept in memory by the process and
//! by Prometheus. So only the built-in agents and the registered ones (at most
//! [`MAX_NAMED_AGENTS`]) are reported by name; every other name is counted under
//! [`OTHER_AGENTS`]. The registered names come from the `agents` table, read again at most every
//! [`REFRESH`] in the background, so the hot paths (enqueue, run, record) never wait for a query.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::TaskStore;

/// The label value of every agent that is neither built in nor registered. Agent names cannot
/// start with `_`, so it never collides with a real name.
pub const OTHER_AGENTS: &str = "_other";

/// Agents the workers run themselves (`worker/src/executor/builtin.rs`).
pub const BUILTIN_AGENTS: [&str; 3] = ["echo", "sleep", "fail"];

/// Most registered agents reported by name (the first by name order); the rest count as
/// [`OTHER_AGENTS`].
pub const MAX_NAMED_AGENTS: usize = 1000;

/// How old the known registered names may get before they are read again.
pub const REFRESH: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    /// Registered names reported by name.
    names: HashSet<String>,
    /// When the latest load started.
    loaded_at: Option<Instant>,
    /// A load is running.
    loading: bool,
    /// Changes this process made while a load was running, replayed over its result (the load
    /// may have read the table before them).
    changes: Vec<(String, bool)>,
}

/// Picks the `agent` label of a name; cheap to clone (one shared set).
#[derive(Clone, Default)]
pub struct AgentLabels {
    store: Option<Arc<dyn TaskStore>>,
    state: Arc<Mutex<State>>,
}

impl AgentLabels {
    /// Labels knowing the agents registered in `store`; the first load starts now (in the
    /// background, when called inside a Tokio runtime).
    pub fn new(store: Arc<dyn TaskStore>) -> Self {
        let labels = Self {
            store: Some(store),
            state: Arc::default(),
        };
        labels.refresh_if_stale();
        labels
    }

    /// The label value for `agent`: its name when it is built in or registered, else
    /// [`OTHER_AGENTS`]. Never waits: a stale set starts a reload in the background.
    pub fn label<'a>(&self, agent: &'a str) -> &'a str {
        if BUILTIN_AGENTS.contains(&agent) {
            return agent;
        }
        self.refresh_if_stale();
        let known = self
            .state
            .lock()
            .is_ok_and(|state| state.names.contains(agent));
        if known { agent } else { OTHER_AGENTS }
    }

    /// `name` was just registered (or found registered): report it by name from now on, within
    /// the cap.
    pub fn registered(&self, name: &str) {
        self.change(name, true);
    }

    /// `name` was just unregistered: count it under [`OTHER_AGENTS`] from now on.
    pub fn unregistered(&self, name: &str) {
        self.change(name, false);
    }

    fn change(&self, name: &str, registered: bool) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        apply(&mut state.names, name, registered);
        if state.loading {
            state.changes.push((name.to_owned(), registered));
        }
    }

    /// Start a background load when the set is older than [`REFRESH`] and none is running.
    fn refresh_if_stale(&self) {
        let Some(store) = &self.store else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            if state.loading || state.loaded_at.is_some_and(|at| at.elapsed() < REFRESH) {
                return;
            }
            state.loading = true;
            state.loaded_at = Some(Instant::now());
        }
        let store = store.clone();
        let guard = Loading(self.state.clone());
        runtime.spawn(async move {
            let limit = i64::try_from(MAX_NAMED_AGENTS).unwrap_or(i64::MAX);
            match store.agent_names(limit).await {
                Ok(names) => guard.finish(names),
                // Keep the names known so far; the next label after REFRESH tries again.
                Err(e) => tracing::debug!(error = %e, "cannot load registered agent names"),
            }
        });
    }
}

impl std::fmt::Debug for AgentLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let named = self.state.lock().map_or(0, |state| state.names.len());
        f.debug_struct("AgentLabels")
            .field("named", &named)
            .finish()
    }
}

fn apply(names: &mut HashSet<String>, name: &str, registered: bool) {
    if !registered {
        names.remove(name);
    } else if names.len() < MAX_NAMED_AGENTS && !names.contains(name) {
        names.insert(name.to_owned());
    }
}

/// Marks the running load; clears the mark however the load ends (also when its task is
/// dropped), so a lost load does not stop later ones.
struct Loading(Arc<Mutex<State>>);

impl Loading {
    fn finish(self, loaded: Vec<String>) {
        if let Ok(mut state) = self.0.lock() {
            let mut names: HashSet<String> = loaded.into_iter().collect();
            for (name, registered) in std::mem::take(&mut state.changes) {
                apply(&mut names, &name, registered);
            }
            state.names = names;
        }
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        if let Ok(mut state) = self.0.lock() {
            state.loading = false;
            state.changes.clear();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn builtins_and_registered_names_keep_their_name() {
        let labels = AgentLabels::default();
        assert_eq!(labels.label("echo"), "echo");
        assert_eq!(labels.label("made-up-1"), OTHER_AGENTS);
        labels.registered("mine");
        assert_eq!(labels.label("mine"), "mine");
        labels.unregistered("mine");
        assert_eq!(labels.label("mine"), OTHER_AGENTS);
    }

    #[test]
    fn named_agents_are_capped() {
        let labels = AgentLabels::default();
        for i in 0..MAX_NAMED_AGENTS + 10 {
            labels.registered(&format!("a{i}"));
        }
        let named = (0..MAX_NAMED_AGENTS + 10)
            .map(|i| format!("a{i}"))
            .filter(|n| labels.label(n) != OTHER_AGENTS)
            .count();
        assert_eq!(named, MAX_NAMED_AGENTS);
    }

    #[test]
    fn changes_during_a_load_survive_its_result() {
        let labels = AgentLabels::default();
        let guard = {
            let mut state = labels.state.lock().unwrap();
            state.loading = true;
            Loading(labels.state.clone())
        };
        // The load read the table before this registration and that unregistration.
        labels.registered("new");
        labels.unregistered("gone");
        guard.finish(vec!["gone".into(), "old".into()]);
        assert_eq!(labels.label("new"), "new");
        assert_eq!(labels.label("old"), "old");
        assert_eq!(labels.label("gone"), OTHER_AGENTS);
        assert!(!labels.state.lock().unwrap().loading);
    }
}
