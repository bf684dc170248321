//! The event fan-in of one API process, behind `GET /events`.
//!
//! One subscriber task reads the queue's task events (every process's status changes, see
//! [`bgagent_shared::events`]) and numbers them: each gets the id `<epoch>-<sequence>`, where the
//! epoch is drawn when the process starts. The last [`RING`] events stay in a ring buffer, and a
//! `broadcast` channel hands each one to the open streams. A stream that resumes with
//! `Last-Event-ID` from this process, while its sequence is still in the ring, gets what it
//! missed first; any other id (another replica, a restart, too old, or a gap in the feed) starts
//! the stream with `event: reset`, so the client re-reads state from the REST API.
//!
//! Memory stays bounded whatever the clients do: the ring and the channel are shared by every
//! stream, a stream keeps only its cursor and a few events, and a stream that falls more than
//! [`CHANNEL`] events behind the others is ended (the browser's EventSource reconnects with its
//! `Last-Event-ID` and resumes from the ring). Open streams are capped per process
//! (`BGAGENT_MAX_EVENT_STREAMS`); every stream ends when the API shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::response::sse::Event;
use bgagent_shared::domain::{Task, TaskEvent};
use bgagent_shared::queue::{EventFeed, TaskQueue};
use futures_util::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events kept for resuming streams.
pub const RING: usize = 10_000;
/// Events a stream may fall behind the newest before it is ended.
pub const CHANNEL: usize = 1024;
/// A comment line keeps idle streams (and the proxies in front) open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events a resuming stream takes from the ring at a time.
const REPLAY_CHUNK: usize = 64;

/// What a stream forwards: a numbered event, or "you may have missed events".
#[derive(Clone, Debug)]
enum Item {
    Event(u64, Arc<TaskEvent>),
    Reset,
}

/// The process's event fan-in; cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Hub>,
}

struct Hub {
    /// Names this process's ids: an id from elsewhere cannot be resumed here.
    epoch: String,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Item>,
    streams: AtomicUsize,
    max_streams: usize,
    /// Fired at shutdown: every stream ends and the subscriber stops.
    closing: CancellationToken,
}

struct Ring {
    entries: VecDeque<(u64, Arc<TaskEvent>)>,
    /// Sequence of the next event (sequences start at 1; 0 means "none yet").
    next: u64,
    /// Lowest sequence a stream can resume after: older ones were evicted or precede a gap.
    floor: u64,
}

impl Ring {
    /// Whether a stream whose last event was `last` can be given everything after it.
    fn can_resume(&self, last: u64) -> bool {
        last < self.next && last.saturating_add(1) >= self.floor
    }
}

/// Which events a stream wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this task's.
    pub task_id: Option<Uuid>,
    /// Only this agent's.
    pub agent: Option<String>,
}

impl Filter {
    fn matches(&self, event: &TaskEvent) -> bool {
        self.task_id.is_none_or(|id| id == event.id)
            && self.agent.as_deref().is_none_or(|a| a == event.agent)
    }
}

impl EventHub {
    /// A hub fed by `queue`'s event subscription (started on the current runtime), allowing
    /// `max_streams` open streams.
    pub fn start(queue: Arc<dyn TaskQueue>, max_streams: usize) -> Self {
        let hub = Self::new(max_streams);
        let (feed, received) = mpsc::channel(256);
        let stopping = hub.inner.closing.clone();
        tokio::spawn(async move { queue.subscribe_events(feed, stopping).await });
        tokio::spawn(fan_in(Arc::downgrade(&hub.inner), received));
        hub
    }

    fn new(max_streams: usize) -> Self {
        Self {
            inner: Arc::new(Hub {
                epoch: Uuid::new_v4().simple().to_string()[..12].to_owned(),
                ring: Mutex::new(Ring {
                    entries: VecDeque::new(),
                    next: 1,
                    floor: 1,
                }),
                live: broadcast::channel(CHANNEL).0,
                streams: AtomicUsize::new(0),
                max_streams,
                closing: CancellationToken::new(),
            }),
        }
    }

    /// End every stream and the subscription (API shutdown).
    pub fn close(&self) {
        self.inner.closing.cancel();
    }

    /// Streams open now (the `bgagent_api_event_streams` gauge).
    pub fn open_streams(&self) -> usize {
        self.inner.streams.load(Ordering::Relaxed)
    }

    /// Take a stream slot; None when [`Hub::max_streams`] are open.
    pub fn admit(&self) -> Option<StreamSlot> {
        let open = self.inner.streams.fetch_add(1, Ordering::Relaxed);
        let slot = StreamSlot(self.inner.clone());
        if open >= self.inner.max_streams {
            return None; // dropping the slot gives the count back
        }
        Some(slot)
    }

    /// Subscribe a stream: events after `last_event_id` when this process can resume it, a
    /// `reset` first otherwise (a client that sent no id starts fresh, without one). Call
    /// [`Subscription::stream`] once the snapshot (if any) is read, so nothing falls between.
    pub fn subscribe(
        &self,
        slot: StreamSlot,
        filter: Filter,
        last_event_id: Option<&str>,
    ) -> Subscription {
        let ring = lock(&self.inner.ring);
        // Under the ring lock: every event numbered from `ring.next` on reaches this receiver.
        let live = self.inner.live.subscribe();
        let live_from = ring.next;
        let resume_after = last_event_id.and_then(|id| self.parse_id(id));
        let (replay_from, reset) = match (last_event_id, resume_after) {
            (None, _) => (live_from, false),
            (Some(_), Some(last)) if ring.can_resume(last) => (last + 1, false),
            (Some(_), _) => (live_from, true),
        };
        drop(ring);
        Subscription {
            state: StreamState {
                hub: self.inner.clone(),
                filter,
                live,
                pending: VecDeque::new(),
                replay_from,
                live_from,
                _slot: slot,
            },
            reset,
        }
    }

    fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.inner.epoch)
    }

    /// The sequence of one of this process's ids.
    fn parse_id(&self, id: &str) -> Option<u64> {
        let (epoch, seq) = id.trim().rsplit_once('-')?;
        (epoch == self.inner.epoch).then_some(())?;
        seq.parse().ok()
    }

    fn push(&self, batch: Vec<TaskEvent>) {
        let mut ring = lock(&self.inner.ring);
        for event in batch {
            let seq = ring.next;
            ring.next += 1;
            let event = Arc::new(event);
            ring.entries.push_back((seq, event.clone()));
            if ring.entries.len() > RING
                && let Some((evicted, _)) = ring.entries.pop_front()
            {
                ring.floor = ring.floor.max(evicted + 1);
            }
            // No receiver is fine: nobody is watching.
            let _ = self.inner.live.send(Item::Event(seq, event));
        }
    }

    fn gap(&self) {
        let mut ring = lock(&self.inner.ring);
        // A sequence is skipped, so the newest id before the gap cannot resume either.
        ring.next += 1;
        ring.floor = ring.next;
        ring.entries.clear();
        let _ = self.inner.live.send(Item::Reset);
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // The API is gone (built but never served, or stopped): stop the subscription.
        self.closing.cancel();
    }
}

fn lock(ring: &Mutex<Ring>) -> MutexGuard<'_, Ring> {
    // The ring is consistent after every statement; a panic elsewhere cannot break it.
    ring.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn fan_in(hub: std::sync::Weak<Hub>, mut received: mpsc::Receiver<EventFeed>) {
    while let Some(item) = received.recv().await {
        let Some(inner) = hub.upgrade() else { return };
        let hub = EventHub { inner };
        match item {
            EventFeed::Events(batch) => hub.push(batch),
            EventFeed::Gap => {
                tracing::info!("task event feed had a gap; open streams are told to re-read");
                hub.gap();
            }
        }
    }
}

/// An open stream's place under the cap; dropping it frees the place.
pub struct StreamSlot(Arc<Hub>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A subscribed stream, before it starts.
pub struct Subscription {
    state: StreamState,
    reset: bool,
}

struct StreamState {
    hub: Arc<Hub>,
    filter: Filter,
    live: broadcast::Receiver<Item>,
    /// Events ready to send (the opening ones, or a chunk of the replay).
    pending: VecDeque<Event>,
    /// Next sequence to replay from the ring; replay ends at `live_from`.
    replay_from: u64,
    /// First sequence the live receiver delivers.
    live_from: u64,
    _slot: StreamSlot,
}

impl Subscription {
    /// Whether the stream starts with `reset` (its `Last-Event-ID` cannot be resumed here).
    pub fn resets(&self) -> bool {
        self.reset
    }

    /// Whether the stream resumes a previous one from the ring.
    pub fn resumes(&self) -> bool {
        self.state.replay_from < self.state.live_from
    }

    /// The SSE events: `reset` when due, then `snapshot` (a task's current state), then the
    /// replay and the live events.
    pub fn stream(
        mut self,
        snapshot: Option<&Task>,
    ) -> impl Stream<Item = Result<Event, Infallible>> + use<> {
        let hub = EventHub {
            inner: self.state.hub.clone(),
        };
        // The opening events carry the id of the newest event before the stream, so a client
        // that reconnects resumes right after them.
        let opening_id = hub.id(self.state.live_from.saturating_sub(1));
        if self.reset {
            self.state.pending.push_back(
                Event::default()
                    .event("reset")
                    .id(opening_id.clone())
                    .data("{}"),
            );
        }
        if let Some(task) = snapshot {
            self.state
                .pending
                .push_back(task_event(&opening_id, &TaskEvent::of(task)));
        }
        futures_util::stream::unfold(self.state, next_event)
    }
}

fn task_event(id: &str, event: &TaskEvent) -> Event {
    // A `TaskEvent` always serializes (string keys, no maps); an empty object never reaches
    // a client in practice.
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    Event::default().event("task").id(id).data(data)
}

async fn next_event(mut state: StreamState) -> Option<(Result<Event, Infallible>, StreamState)> {
    loop {
        if state.hub.closing.is_cancelled() {
            return None;
        }
        if let Some(event) = state.pending.pop_front() {
            return Some((Ok(event), state));
        }
        if state.replay_from < state.live_from {
            let ring = lock(&state.hub.ring);
            // Evicted while this stream replayed: end it; the reconnect gets `reset`.
            if state.replay_from < ring.floor {
                return None;
            }
            let hub = EventHub {
                inner: state.hub.clone(),
            };
            let start = ring
                .entries
                .front()
                .map_or(0, |(first, _)| state.replay_from.saturating_sub(*first));
            let start = usize::try_from(start).unwrap_or(usize::MAX);
            let mut taken = 0;
            for (seq, event) in ring.entries.iter().skip(start) {
                if *seq >= state.live_from || taken == REPLAY_CHUNK {
                    break;
                }
                state.replay_from = seq + 1;
                taken += 1;
                if state.filter.matches(event) {
                    state.pending.push_back(task_event(&hub.id(*seq), event));
                }
            }
            if taken == 0 {
                state.replay_from = state.live_from;
            }
            continue;
        }
        let received = tokio::select! {
            () = state.hub.closing.cancelled() => return None,
            received = state.live.recv() => received,
        };
        match received {
            Ok(Item::Event(seq, event)) => {
                if seq >= state.live_from && state.filter.matches(&event) {
                    let hub = EventHub {
                        inner: state.hub.clone(),
                    };
                    return Some((Ok(task_event(&hub.id(seq), &event)), state));
                }
            }
            Ok(Item::Reset) => {
                state
                    .pending
                    .push_back(Event::default().event("reset").data("{}"));
            }
            // Too slow: end the stream rather than buffer for it. The client resumes from the
            // ring (or is told to reset) when it reconnects.
            Err(broadcast::error::RecvError::Lagged(_)) => return None,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bgagent_shared::domain::TaskStatus;
    use futures_util::StreamExt;

    fn event(n: u128, agent: &str) -> TaskEvent {
        TaskEvent {
            id: Uuid::from_u128(n),
            agent: agent.into(),
            status: TaskStatus::Queued,
            attempts: 0,
            updated_at: chrono::Utc::now(),
        }
    }

    /// The SSE text of the next `n` events.
    async fn take(stream: impl Stream<Item = Result<Event, Infallible>>, n: usize) -> Vec<String> {
        let items: Vec<_> = stream.take(n).collect().await;
        items
            .into_iter()
            .map(|e| format!("{:?}", e.unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn resumes_from_the_ring_filtered_then_goes_live() {
        let hub = EventHub::new(10);
        hub.push(vec![event(1, "a"), event(2, "b"), event(3, "a")]);
        let first = hub.id(1);
        let sub = hub.subscribe(
            hub.admit().unwrap(),
            Filter {
                agent: Some("a".into()),
                ..Filter::default()
            },
            Some(&first),
        );
        assert!(!sub.resets() && sub.resumes());
        let stream = sub.stream(None);
        hub.push(vec![event(4, "b"), event(5, "a")]);
        let got = take(stream, 2).await;
        assert!(
            got[0].contains(&format!("{}-3", hub.inner.epoch)),
            "{got:?}"
        );
        assert!(
            got[1].contains(&format!("{}-5", hub.inner.epoch)),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn unknown_old_or_foreign_ids_reset() {
        let hub = EventHub::new(10);
        hub.push(vec![event(1, "a")]);
        for id in ["other-1", "junk", &hub.id(7)] {
            let sub = hub.subscribe(hub.admit().unwrap(), Filter::default(), Some(id));
            assert!(sub.resets(), "{id}");
        }
        // After a gap, the newest id before it no longer resumes.
        let newest = hub.id(1);
        hub.gap();
        let sub = hub.subscribe(hub.admit().unwrap(), Filter::default(), Some(&newest));
        assert!(sub.resets());
        // The newest id after the gap does.
        let sub = hub.subscribe(hub.admit().unwrap(), Filter::default(), None);
        hub.push(vec![event(2, "a")]);
        let got = take(sub.stream(None), 1).await;
        let id = got[0]
            .split("id: ")
            .nth(1)
            .map(|s| s.split('\n').next().unwrap().to_owned());
        assert!(id.is_some(), "{got:?}");
    }

    #[tokio::test]
    async fn evicted_events_cannot_be_resumed() {
        let hub = EventHub::new(10);
        hub.push((0..RING as u128 + 5).map(|n| event(n, "a")).collect());
        assert!(lock(&hub.inner.ring).entries.len() == RING);
        let sub = hub.subscribe(hub.admit().unwrap(), Filter::default(), Some(&hub.id(3)));
        assert!(sub.resets());
        let sub = hub.subscribe(hub.admit().unwrap(), Filter::default(), Some(&hub.id(10)));
        assert!(!sub.resets());
    }

    #[tokio::test]
    async fn streams_are_capped_and_slots_come_back() {
        let hub = EventHub::new(2);
        let a = hub.admit().unwrap();
        let _b = hub.admit().unwrap();
        assert!(hub.admit().is_none());
        assert_eq!(hub.open_streams(), 2);
        drop(a);
        assert!(hub.admit().is_some());
    }

    #[tokio::test]
    async fn a_lagging_stream_ends_and_close_ends_all() {
        let hub = EventHub::new(10);
        let sub = hub.subscribe(hub.admit().unwrap(), Filter::default(), None);
        let mut stream = Box::pin(sub.stream(None));
        hub.push((0..CHANNEL as u128 + 10).map(|n| event(n, "a")).collect());
        assert!(stream.next().await.is_none(), "lagged stream ended");
        let sub = hub.subscribe(hub.admit().unwrap(), Filter::default(), None);
        let mut stream = Box::pin(sub.stream(None));
        hub.close();
        assert!(stream.next().await.is_none(), "closed");
        drop(stream);
        assert_eq!(hub.open_streams(), 0);
    }
}
