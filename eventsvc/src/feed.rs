//! Topic streams and users' change feeds for this backend's subscribers. One follower of the
//! store runs while anyone is subscribed and hands each event (each change), converted once,
//! to its stream's bounded broadcast ring. A subscription registers before it replays, so nothing published meanwhile
//! is missed; duplicates at the seam are dropped by `seq`; a gap or a lagged ring is filled
//! from the store. Only a subscriber too far behind is closed, told how to resume.
//!
//! A selection (topic patterns and a filter, `matching`) has a ring of its own too: the
//! follower hands it every event of its topics, the filter's verdict taken once per event for
//! all its subscribers; one a filter rejects goes as a marker, so subscribers still see each
//! topic's seqs without holes and know when to read the store.

mod matching;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use futures::StreamExt;
use tokio::sync::{Notify, broadcast, broadcast::error::RecvError, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{
    convert,
    stats::Stats,
    store::{EventStore, Followed},
    subscribe::Encoded,
};

use eventsys::topics::Selection;

/// What a subscription follows: a topic's events (by `seq`), a user's change feed (by
/// position), or the events of a selection's topics (by `seq` per topic).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum StreamOf {
    Topic(String),
    Changes(String),
    Matching(Selection),
}

impl std::fmt::Display for StreamOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamOf::Topic(topic) => write!(f, "topic {topic}"),
            StreamOf::Changes(user) => write!(f, "changes of {user}"),
            StreamOf::Matching(selection) => write!(f, "topics {selection}"),
        }
    }
}

/// Events read from the store per catch-up query.
const BATCH: usize = 256;
/// Events queued towards one gRPC client; beyond it the subscription waits for the client.
const CLIENT_BUFFER: usize = 64;
/// A follower with no subscriber left stops after this long.
const IDLE_STOP: Duration = Duration::from_secs(1);

pub(crate) type EventStream = ReceiverStream<Result<Encoded, Status>>;

#[derive(Debug, Clone, Copy)]
pub struct FeedSettings {
    /// Live events a topic's ring keeps for its subscribers; one further behind catches up
    /// from the store instead.
    pub buffer: usize,
    /// A subscriber more than this many events behind its topic is closed (it may resume).
    pub max_lag: u64,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            buffer: 256,
            max_lag: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Follower {
    Stopped,
    Starting,
    Running,
    Failed(String),
}

/// A live event (change) as every subscriber of its stream shares it: encoded once. In a
/// selection's ring, an event its filter rejects comes without `event`: only its place.
#[derive(Debug, Clone)]
struct Shared {
    /// The event's topic (empty for a change).
    topic: Arc<str>,
    seq: u64,
    event: Option<Encoded>,
}

struct Stream {
    /// The newest `seq` (position) the follower has seen on this stream.
    head: u64,
    ring: broadcast::Sender<Shared>,
    subscribers: usize,
}

/// Who is subscribed to what on this backend, and whether the store follower runs: the one
/// piece of the feed that subscribers, the follower and leaving subscribers all change.
struct Subscribers {
    /// Streams with at least one subscriber (a stream leaves with its last).
    streams: HashMap<StreamOf, Stream>,
    /// The selections among `streams`, with their rings: what the follower looks through for
    /// each event (not every stream).
    selections: Vec<(Arc<Selection>, broadcast::Sender<Shared>)>,
    /// The follower's state; subscribers watch it to learn it started or failed.
    follower: watch::Sender<Follower>,
}

impl Subscribers {
    fn leave(&mut self, of: &StreamOf) {
        if let Some(stream) = self.streams.get_mut(of) {
            stream.subscribers -= 1;
            if stream.subscribers == 0 {
                self.streams.remove(of);
                if let StreamOf::Matching(gone) = of {
                    self.selections
                        .retain(|(selection, _)| **selection != *gone);
                }
            }
        }
    }
}

struct Inner {
    /// From an event's publish to its dispatch here.
    delay: prometheus::Histogram,
    store: Arc<dyn EventStore>,
    stats: Arc<Stats>,
    settings: FeedSettings,
    shutdown: CancellationToken,
    /// A std mutex, not tokio's: it is held for a map lookup or a counter change and never
    /// across an `.await`, and `Registration::drop` (no async there) must take it too.
    subscribers: Mutex<Subscribers>,
    /// Woken when the last subscriber leaves.
    emptied: Notify,
}

/// This backend's live topic streams: subscribers register per topic, one follower of the
/// store's change feed runs while anyone is registered (stopping `IDLE_STOP` after the last
/// leaves) and pushes each event, encoded once, into its topic's `broadcast` ring. Cloned
/// handles share it; `Subscribers` under its mutex is all the shared mutable state.
#[derive(Clone)]
pub(crate) struct Feed(Arc<Inner>);

/// A subscriber's place in `Subscribers`; leaving it (drop) unregisters.
struct Registration {
    feed: Feed,
    of: StreamOf,
    rx: broadcast::Receiver<Shared>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut subscribers = self.feed.subscribers();
        subscribers.leave(&self.of);
        if subscribers.streams.is_empty() {
            self.feed.0.emptied.notify_waiters();
        }
    }
}

fn shutting_down() -> Status {
    Status::unavailable("backend is shutting down: subscribe again with after_seq")
}

impl Feed {
    pub(crate) fn new(
        store: Arc<dyn EventStore>,
        stats: Arc<Stats>,
        settings: FeedSettings,
        shutdown: CancellationToken,
        delay: prometheus::Histogram,
    ) -> Feed {
        Feed(Arc::new(Inner {
            delay,
            store,
            stats,
            settings,
            shutdown,
            subscribers: Mutex::new(Subscribers {
                streams: HashMap::new(),
                selections: Vec::new(),
                follower: watch::Sender::new(Follower::Stopped),
            }),
            emptied: Notify::new(),
        }))
    }

    fn subscribers(&self) -> MutexGuard<'_, Subscribers> {
        self.0
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a stream of `of`'s events (changes) with `seq` (position) `> after_seq`: stored
    /// ones, then live; ended with UNAUTHENTICATED once `expires` (what is left of the caller's
    /// token) has passed.
    pub(crate) fn subscribe(
        &self,
        of: StreamOf,
        after_seq: u64,
        expires: Option<Duration>,
    ) -> EventStream {
        self.serving(expires, move |feed, tx| async move {
            feed.serve(of, after_seq, &tx).await
        })
    }

    /// Starts a subscription served by `serve` on a task of its own, its events going to the
    /// client through a bounded queue, until the caller's token expires.
    fn serving<F, Fut>(&self, expires: Option<Duration>, serve: F) -> EventStream
    where
        F: FnOnce(Feed, mpsc::Sender<Result<Encoded, Status>>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), Status>> + Send,
    {
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
        let feed = self.clone();
        tokio::spawn(async move {
            let _open = feed.0.stats.subscriber();
            let served = serve(feed, tx.clone());
            let outcome = match expires {
                None => served.await,
                Some(left) => tokio::select! {
                    outcome = served => outcome,
                    () = tokio::time::sleep(left) => Err(Status::unauthenticated(
                        "token expired: subscribe again with a fresh token",
                    )),
                },
            };
            if let Err(status) = outcome {
                // The client may already be gone; then there is no one to tell.
                let _ = tx.try_send(Err(status));
            }
        });
        ReceiverStream::new(rx)
    }

    /// Registers for `of`, starting the follower if none runs, and waits until it follows.
    async fn register(&self, of: &StreamOf) -> Result<Registration, Status> {
        let (rx, mut follower) = {
            let mut subscribers = self.subscribers();
            let subscribers = &mut *subscribers;
            let entry = subscribers.streams.entry(of.clone()).or_insert_with(|| {
                let ring = broadcast::channel(self.0.settings.buffer).0;
                if let StreamOf::Matching(selection) = of {
                    subscribers
                        .selections
                        .push((Arc::new(selection.clone()), ring.clone()));
                }
                Stream {
                    head: 0,
                    ring,
                    subscribers: 0,
                }
            });
            entry.subscribers += 1;
            let rx = entry.ring.subscribe();
            if matches!(
                *subscribers.follower.borrow(),
                Follower::Stopped | Follower::Failed(_)
            ) {
                subscribers.follower.send_replace(Follower::Starting);
                tokio::spawn(self.clone().follow());
            }
            (rx, subscribers.follower.subscribe())
        };
        let registration = Registration {
            feed: self.clone(),
            of: of.clone(),
            rx,
        };
        let state = follower
            .wait_for(|s| !matches!(s, Follower::Starting))
            .await
            .map(|s| s.clone())
            .unwrap_or(Follower::Stopped);
        match state {
            Follower::Running => Ok(registration),
            Follower::Failed(reason) => Err(Status::unavailable(reason)),
            _ => Err(Status::unavailable("change feed stopped: subscribe again")),
        }
    }

    /// The follower: dispatches the store's change feed to subscribers until nobody is
    /// subscribed, the backend shuts down, or the feed fails.
    async fn follow(self) {
        let state = |s| self.subscribers().follower.send_replace(s);
        let mut feed = match self.0.store.follow().await {
            Ok(feed) => feed,
            Err(err) => {
                tracing::error!(error = %err, "cannot follow the store");
                self.fail(Status::from(err).message().to_owned());
                return;
            }
        };
        state(Follower::Running);
        tracing::debug!("following the store for subscribers");
        let mut idle_since = None;
        loop {
            let emptied = self.0.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            let idle = self.subscribers().streams.is_empty();
            let stop_at = match (idle, idle_since) {
                (false, _) => {
                    idle_since = None;
                    None
                }
                (true, Some(since)) => Some(since + IDLE_STOP),
                (true, None) => {
                    let now = tokio::time::Instant::now();
                    idle_since = Some(now);
                    Some(now + IDLE_STOP)
                }
            };
            tokio::select! {
                _ = self.0.shutdown.cancelled() => {
                    state(Follower::Stopped);
                    return;
                }
                _ = tokio::time::sleep_until(stop_at.unwrap_or_else(tokio::time::Instant::now)), if stop_at.is_some() => {
                    // Decided under the lock, so a subscriber joining now finds either this
                    // follower still running or none (and starts one).
                    let subscribers = self.subscribers();
                    if subscribers.streams.is_empty() {
                        subscribers.follower.send_replace(Follower::Stopped);
                        tracing::debug!("no subscriber left: stopped following");
                        return;
                    }
                }
                _ = &mut emptied => {}
                next = feed.next() => match next {
                    Some(Ok(followed)) => self.dispatch(followed),
                    Some(Err(err)) => {
                        tracing::error!(error = %err, "change feed failed");
                        self.fail(Status::from(err).message().to_owned());
                        return;
                    }
                    None => {
                        self.fail("change feed ended".to_owned());
                        return;
                    }
                },
            }
        }
    }

    /// Ends every subscription (each resubscribes from its last `seq`).
    fn fail(&self, reason: String) {
        let mut subscribers = self.subscribers();
        subscribers.streams.clear();
        subscribers.selections.clear();
        subscribers.follower.send_replace(Follower::Failed(format!(
            "{reason}: subscribe again with after_seq"
        )));
    }

    /// Hands what the store committed to its stream's subscribers, and a published event to
    /// each selection of its topic. The rings are taken out of `Subscribers` first, so the
    /// lock is held for lookups whatever the number of subscribers; filters are applied
    /// outside it, each distinct one once.
    fn dispatch(&self, followed: Followed) {
        let (of, seq, time) = match &followed {
            Followed::Published(event) => {
                (StreamOf::Topic(event.topic.clone()), event.seq, event.time)
            }
            Followed::Changed(change) => (
                StreamOf::Changes(change.event.user_id.clone()),
                change.position,
                Some(change.time),
            ),
        };
        let (ring, selections) = {
            let mut subscribers = self.subscribers();
            let ring = subscribers.streams.get_mut(&of).map(|stream| {
                stream.head = stream.head.max(seq);
                stream.ring.clone()
            });
            let selections: Vec<(Arc<Selection>, broadcast::Sender<Shared>)> = match &of {
                StreamOf::Topic(topic) => subscribers
                    .selections
                    .iter()
                    .filter(|(selection, _)| selection.patterns().matches(topic))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            (ring, selections)
        };
        if ring.is_none() && selections.is_empty() {
            return;
        }
        if let Some(time) = time {
            let lag = (chrono::Utc::now() - time).to_std().unwrap_or_default();
            self.0.delay.observe(lag.as_secs_f64());
        }
        let topic: Arc<str> = match &of {
            StreamOf::Topic(topic) => topic.as_str().into(),
            _ => "".into(),
        };
        let verdicts = match &followed {
            Followed::Published(event) => matching::verdicts(&selections, event),
            Followed::Changed(_) => Vec::new(),
        };
        let event = encoded(followed);
        let shared = |accepted: bool| Shared {
            topic: topic.clone(),
            seq,
            event: accepted.then(|| event.clone()),
        };
        // Only the follower sends, so every ring gets its stream's events in order. A send
        // fails only when nobody is subscribed any more.
        if let Some(ring) = ring {
            let _ = ring.send(shared(true));
        }
        for ((_, ring), accepted) in selections.iter().zip(verdicts) {
            let _ = ring.send(shared(accepted));
        }
    }

    fn head(&self, of: &StreamOf) -> u64 {
        self.subscribers().streams.get(of).map_or(0, |t| t.head)
    }

    /// Sends one event; `Ok(false)` when the client is gone.
    async fn send(
        &self,
        tx: &mpsc::Sender<Result<Encoded, Status>>,
        event: Encoded,
    ) -> Result<bool, Status> {
        tokio::select! {
            _ = self.0.shutdown.cancelled() => Err(shutting_down()),
            sent = tx.send(Ok(event)) => Ok(sent.is_ok()),
        }
    }

    /// Sends every stored event (change) after `last`; returns the new last `seq`
    /// (position), or `None` when the client is gone.
    async fn catch_up(
        &self,
        of: &StreamOf,
        mut last: u64,
        tx: &mpsc::Sender<Result<Encoded, Status>>,
    ) -> Result<Option<u64>, Status> {
        loop {
            let stored = tokio::select! {
                _ = self.0.shutdown.cancelled() => return Err(shutting_down()),
                stored = self.stored_after(of, last) => stored?,
            };
            let full = stored.len() == BATCH;
            for item in stored {
                let seq = item.seq;
                if !self.send(tx, item).await? {
                    return Ok(None);
                }
                last = seq;
            }
            if !full {
                return Ok(Some(last));
            }
        }
    }

    /// Up to `BATCH` stored events (changes) of `of` after `last`, encoded.
    async fn stored_after(&self, of: &StreamOf, last: u64) -> Result<Vec<Encoded>, Status> {
        let store = &self.0.store;
        Ok(match of {
            // A selection reads its topics' events itself (`matching`).
            StreamOf::Matching(_) => Vec::new(),
            StreamOf::Topic(topic) => store
                .events_after(topic, last, BATCH)
                .await?
                .into_iter()
                .map(|e| Encoded::from(convert::event(e)))
                .collect(),
            StreamOf::Changes(user) => store
                .changes_after(user, last, BATCH)
                .await?
                .into_iter()
                .map(|c| Encoded::from(convert::change(c)))
                .collect(),
        })
    }

    /// One subscription; `Ok` when the client went away, else the status that ends it.
    async fn serve(
        &self,
        of: StreamOf,
        after_seq: u64,
        tx: &mpsc::Sender<Result<Encoded, Status>>,
    ) -> Result<(), Status> {
        let mut registration = self.register(&of).await?;
        let Some(mut last) = self.catch_up(&of, after_seq, tx).await? else {
            return Ok(());
        };
        loop {
            let next = tokio::select! {
                _ = self.0.shutdown.cancelled() => return Err(shutting_down()),
                _ = tx.closed() => return Ok(()),
                next = registration.rx.recv() => next,
            };
            let item = match next {
                Ok(item) => item,
                Err(RecvError::Lagged(_)) => {
                    let behind = self.head(&of).saturating_sub(last);
                    if behind > self.0.settings.max_lag {
                        self.0.stats.closed_too_far_behind();
                        tracing::warn!(stream = %of, last, behind, "subscriber too far behind: closing it");
                        return Err(Status::resource_exhausted(format!(
                            "subscriber fell {behind} events behind (limit {}): subscribe again \
                             with after_seq={last}",
                            self.0.settings.max_lag
                        )));
                    }
                    self.0.stats.caught_up();
                    tracing::info!(stream = %of, last, behind, "subscriber fell behind: catching up from the store");
                    // Rejoin at the ring's end before reading the store: what the ring still
                    // holds is in the store too, what comes next is read from the ring.
                    registration.rx = registration.rx.resubscribe();
                    match self.catch_up(&of, last, tx).await? {
                        Some(caught_up) => last = caught_up,
                        None => return Ok(()),
                    }
                    continue;
                }
                Err(RecvError::Closed) => {
                    let reason = match &*self.subscribers().follower.borrow() {
                        Follower::Failed(reason) => reason.clone(),
                        _ => "change feed stopped: subscribe again with after_seq".to_owned(),
                    };
                    return Err(Status::unavailable(reason));
                }
            };
            if item.seq <= last {
                continue;
            }
            // Saturating: a client may resume after any u64, the largest included.
            if item.seq == last.saturating_add(1) {
                if let Some(event) = item.event
                    && !self.send(tx, event).await?
                {
                    return Ok(());
                }
                last = item.seq;
                continue;
            }
            match self.catch_up(&of, last, tx).await? {
                Some(caught_up) => last = caught_up,
                None => return Ok(()),
            }
        }
    }
}

/// What the follower saw, encoded once for every subscriber of its stream.
fn encoded(followed: Followed) -> Encoded {
    match followed {
        Followed::Published(event) => Encoded::from(convert::event(event)),
        Followed::Changed(change) => Encoded::from(convert::change(change)),
    }
}

#[cfg(test)]
mod tests;
