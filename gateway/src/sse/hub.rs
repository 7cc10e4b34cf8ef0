//! Hubs: one backend stream per topic (per user's change feed) for all of this gateway's SSE
//! clients on it, opened by the first client, kept while anyone reads and a moment after,
//! moved to another backend from its last `seq` (position) when its backend ends it. Each
//! event (change) is framed once, into a ring.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use eventsys::gap::{Gap, TopicGap};
use tokio::{
    sync::{Notify, Semaphore, watch},
    time::Instant,
};

use super::{
    frame::Frame,
    log_refusal,
    ring::Ring,
    selection::{Ids, Place},
    source::{Item, StreamOf, Upstream},
};
use crate::{
    api::ApiError,
    http::AppState,
    upstream::{Answer, Backend, Bearer, CallError, Failure, RESUBSCRIBE},
};

/// Frames a ring keeps at most, whatever their size (the byte share binds first unless events
/// are tiny).
const RING_FRAMES: usize = 4096;
/// How long a hub outlives its last reader: a client reconnecting at once finds it open.
const LINGER: Duration = Duration::from_secs(2);
/// Catch-up pages (history reads of clients that are behind) in flight at once.
const CATCH_UPS: usize = 64;

type Source = Answer<Upstream>;

/// Every open hub of this gateway, by stream: the first SSE client of a stream opens its hub
/// (one backend subscription), later ones join it, and a hub with no reader left lingers
/// `LINGER` and then closes itself.
pub(crate) struct Hubs {
    /// Stream → hub. A std mutex (not tokio's): held for a map lookup, insert or remove and
    /// never across an `.await`; joining waits for a hub's opening on the hub's own `opened`
    /// watch, outside this lock, so one slow backend never blocks other topics.
    hubs: Mutex<HashMap<StreamOf, Arc<Hub>>>,
    /// How many hubs the map holds: read on every push (for the byte share) without the
    /// map's lock.
    open: AtomicUsize,
    /// Bytes of frames all rings keep together; each keeps an equal share.
    budget: usize,
    /// Bounds the history reads of clients catching up, and the pages they hold.
    pub(super) catch_ups: Semaphore,
}

/// One stream's hub: the task that reads the stream from a backend (and moves it to another
/// backend from its last `seq` when it ends) frames each item once into `ring`, which every
/// reader of the stream reads at its own position.
pub(crate) struct Hub {
    pub(super) of: StreamOf,
    /// Its own lock (an `RwLock`: one writer, many readers); see `Ring`.
    pub(super) ring: Ring,
    /// Readers now: an atomic, as every reader's drop changes it and the hub task only needs to
    /// see it reach zero (then `left` wakes it).
    readers: AtomicUsize,
    /// Woken (with a permit) when the last reader leaves.
    left: Notify,
    /// Which backend feeds it, with whose token, and where it stands: a std mutex held for a
    /// field copy or one frame's update, never across an `.await` (read by `/load`, the
    /// dashboard and readers joining, written by the hub task).
    current: Mutex<Current>,
    /// How its opening went: joiners wait on this watch, not on a lock.
    opened: watch::Sender<Opening>,
}

struct Current {
    backend: Option<Backend>,
    /// The newest reader's token, which the hub (re)subscribes with: the gateway checked
    /// every reader's right to the topic, the backend checks this one.
    bearer: Option<Bearer>,
    /// What the ring's newest frame brought the stream to: where it resubscribes from.
    place: Place,
}

#[derive(Clone)]
enum Opening {
    Pending,
    Open,
    Refused(ApiError),
}

/// A reader's place in a hub: counted until dropped.
pub(super) struct Member(Arc<Hub>);

impl std::ops::Deref for Member {
    type Target = Hub;

    fn deref(&self) -> &Hub {
        &self.0
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.0.readers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.left.notify_one();
        }
    }
}

/// A client just joined: its place in the hub, and where it starts reading the ring.
pub(super) struct Joined {
    pub(super) member: Member,
    pub(super) position: u64,
    /// The client opened the hub, whose ring starts right after the client's `after`.
    pub(super) opened_it: bool,
    /// Where the hub stood once the client joined (at or past `position`).
    pub(super) hub_place: Place,
}

/// One hub as `/load` shows it.
pub(crate) struct HubLoad {
    pub(crate) topic: String,
    pub(crate) subscribers: usize,
    pub(crate) backend: Option<Backend>,
}

impl Hubs {
    pub(crate) fn new(budget: usize) -> Hubs {
        Hubs {
            hubs: Mutex::default(),
            open: AtomicUsize::new(0),
            budget,
            catch_ups: Semaphore::new(CATCH_UPS),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<StreamOf, Arc<Hub>>> {
        self.hubs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Each ring's share of the byte budget.
    fn share(&self) -> usize {
        self.budget / self.open.load(Ordering::Relaxed).max(1)
    }

    /// Joins `of`'s hub, opening one (which subscribes after `after`) if there is none;
    /// answers once the hub's backend subscription is open, or with why it could not be.
    pub(super) async fn join(
        &self,
        state: &AppState,
        of: &StreamOf,
        after: Place,
        bearer: Option<Bearer>,
    ) -> Result<Joined, ApiError> {
        let joined = {
            let mut hubs = self.map();
            match hubs.get(of) {
                Some(hub) => {
                    // Counted under the map's lock, so a hub retiring for want of readers
                    // sees this one.
                    hub.readers.fetch_add(1, Ordering::AcqRel);
                    if bearer.is_some() {
                        hub.current().bearer = bearer;
                    }
                    Joined {
                        member: Member(hub.clone()),
                        position: hub.ring.end(),
                        opened_it: false,
                        hub_place: Place::Seq(0),
                    }
                }
                None => {
                    let hub = Arc::new(Hub {
                        of: of.clone(),
                        ring: Ring::new(RING_FRAMES),
                        readers: AtomicUsize::new(1),
                        left: Notify::new(),
                        current: Mutex::new(Current {
                            backend: None,
                            bearer,
                            place: after,
                        }),
                        opened: watch::Sender::new(Opening::Pending),
                    });
                    hubs.insert(of.clone(), hub.clone());
                    self.open.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(run(state.clone(), hub.clone()));
                    Joined {
                        member: Member(hub),
                        position: 0,
                        opened_it: true,
                        hub_place: Place::Seq(0),
                    }
                }
            }
        };
        let mut opened = joined.member.opened.subscribe();
        let opening = opened
            .wait_for(|o| !matches!(o, Opening::Pending))
            .await
            .map(|o| o.clone())
            .unwrap_or(Opening::Open);
        match opening {
            Opening::Refused(err) => Err(err),
            _ => {
                let mut joined = joined;
                joined.hub_place = joined.member.place();
                Ok(joined)
            }
        }
    }

    /// Takes `hub` out if it has no reader (or `always`); `false` when a reader came back.
    fn retire(&self, hub: &Arc<Hub>, always: bool) -> bool {
        {
            let mut hubs = self.map();
            if !always && hub.readers.load(Ordering::Acquire) > 0 {
                return false;
            }
            if hubs.get(&hub.of).is_some_and(|h| Arc::ptr_eq(h, hub)) {
                hubs.remove(&hub.of);
                self.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
        hub.ring.close();
        true
    }

    /// How many hubs are open.
    pub(crate) fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Open topic hubs (a selection's by its patterns), most read first (users' change feeds
    /// are theirs: not listed).
    pub(crate) fn load(&self) -> Vec<HubLoad> {
        let mut hubs: Vec<HubLoad> = self
            .map()
            .values()
            .filter_map(|hub| {
                let topic = match &hub.of {
                    StreamOf::Topic(topic) => topic.clone(),
                    StreamOf::Matching(selection) => selection.patterns().to_string(),
                    StreamOf::Changes(_) => return None,
                };
                Some(HubLoad {
                    topic,
                    subscribers: hub.readers.load(Ordering::Relaxed),
                    backend: hub.current().backend,
                })
            })
            .collect();
        hubs.sort_by(|a, b| {
            b.subscribers
                .cmp(&a.subscribers)
                .then(a.topic.cmp(&b.topic))
        });
        hubs
    }
}

impl Hub {
    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The backend feeding the hub now.
    pub(super) fn backend(&self) -> Option<Backend> {
        self.current().backend
    }

    /// Where the hub stands now.
    pub(super) fn place(&self) -> Place {
        self.current().place.clone()
    }

    /// Subscribes after the hub's place; when retention dropped some of what follows it, from
    /// the oldest kept item instead: a single stream's readers notice the jump and learn of the
    /// gap from the store, a selection's get a gap frame per topic.
    async fn subscribe(&self, state: &AppState, hubs: &Hubs) -> Result<Source, CallError> {
        // Each refusal names a batch of topics; a cursor names at most 1000.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (bearer, place) = {
                let current = self.current();
                (current.bearer.clone(), current.place.clone())
            };
            let refused = match self.of.open(state, &place, bearer.as_ref()).await {
                Ok(source) => return Ok(source),
                Err(err) => err,
            };
            let Failure::Status { status, .. } = &refused.failure else {
                return Err(refused);
            };
            if attempt == 32 {
                return Err(refused);
            }
            let mut current = self.current();
            match &mut current.place {
                Place::Seq(after) => {
                    let Some(gap) = Gap::from_status(status, *after) else {
                        return Err(refused);
                    };
                    tracing::info!(stream = %self.of, ?gap, "dropped by retention while subscribing");
                    *after = gap.resume_after();
                }
                Place::Topics(at) => {
                    let gaps = TopicGap::from_status(status, |topic| at.get(topic));
                    if gaps.is_empty() {
                        return Err(refused);
                    }
                    let StreamOf::Matching(selection) = &self.of else {
                        return Err(refused);
                    };
                    for TopicGap { topic, gap } in gaps {
                        tracing::info!(stream = %self.of, topic, ?gap, "dropped by retention while subscribing");
                        let advanced = at.advance(&topic, gap.resume_after());
                        let Ok(id) = advanced.and_then(|()| selection.id(at)) else {
                            return Err(refused);
                        };
                        self.ring
                            .push(Frame::topic_gap(&topic, gap, &id), hubs.share());
                    }
                }
            }
        }
    }

    /// Takes a backend's item: the frame to push, if it is new. `Err` ends the hub: the
    /// stream would name more topics than a cursor may.
    fn take(&self, item: Item) -> Result<Option<Frame>, String> {
        let mut current = self.current();
        match (item, &mut current.place) {
            (Item::Placed(seq, frame), Place::Seq(last)) => {
                // A resubscription may repeat what was delivered; never a gap (the backend
                // fills them from its store).
                if seq <= *last {
                    return Ok(None);
                }
                *last = seq;
                Ok(frame)
            }
            (Item::Selected(event), Place::Topics(at)) => {
                let StreamOf::Matching(selection) = &self.of else {
                    return Ok(None);
                };
                let prev = at.get(&event.topic);
                if event.seq <= prev {
                    return Ok(None);
                }
                at.advance(&event.topic, event.seq)
                    .map_err(|e| e.to_string())?;
                let id = selection.id(at).map_err(|e| e.to_string())?;
                Ok(Frame::selected(event, prev, &id))
            }
            _ => Ok(None),
        }
    }
}

/// The hub's life: subscribe, frame every event into the ring, resubscribe elsewhere from its
/// place when the backend ends the stream, retire once nobody has read for `LINGER`.
async fn run(state: AppState, hub: Arc<Hub>) {
    let hubs = &state.hubs;
    let of = &hub.of;
    let mut source = match hub.subscribe(&state, hubs).await {
        Ok(source) => {
            hub.current().backend = source.backend;
            hub.opened.send_replace(Opening::Open);
            source
        }
        Err(err) => {
            hubs.retire(&hub, true);
            hub.opened.send_replace(Opening::Refused(err.into()));
            return;
        }
    };
    let keep_alive = state.settings.sse_keep_alive;
    let mut quiet_since = Instant::now();
    let mut unread_since = None;
    loop {
        let unread = hub.readers.load(Ordering::Acquire) == 0;
        unread_since = match (unread, unread_since) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, since) => since,
        };
        let retire_at = unread_since.map(|since| since + LINGER);
        let next = tokio::select! {
            _ = state.shutdown.cancelled() => {
                hubs.retire(&hub, true);
                return;
            }
            _ = tokio::time::sleep_until(retire_at.unwrap_or_else(Instant::now)), if retire_at.is_some() => {
                if hubs.retire(&hub, false) {
                    tracing::debug!(stream = %of, "no reader left: hub closed");
                    return;
                }
                continue;
            }
            _ = hub.left.notified(), if !unread => continue,
            _ = tokio::time::sleep_until(quiet_since + keep_alive) => {
                hub.ring.push(Frame::keep_alive(), hubs.share());
                quiet_since = Instant::now();
                continue;
            }
            next = source.message.next() => next,
        };
        match next {
            Ok(Some(item)) => match hub.take(item) {
                Ok(Some(frame)) => {
                    hub.ring.push(frame, hubs.share());
                    quiet_since = Instant::now();
                }
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(stream = %of, %reason, "stream ended");
                    hubs.retire(&hub, true);
                    return;
                }
            },
            ended => {
                let reason = match ended {
                    Err(status) => format!("{:?}: {}", status.code(), status.message()),
                    _ => "stream closed".to_owned(),
                };
                // A backend that became unreachable has taken itself out already; one that
                // ended the stream itself (draining) is taken out by its health checks.
                let from = source.backend;
                tracing::info!(stream = %of, place = %hub.place(), backend = ?from, %reason, "subscription lost: resubscribing");
                state.metrics.sse_resumed("backend_lost");
                match resubscribe(&state, &hub).await {
                    Some(next) => {
                        source = next;
                        hub.current().backend = source.backend;
                    }
                    None => {
                        hubs.retire(&hub, true);
                        return;
                    }
                }
            }
        }
    }
}

/// Subscribes again after the hub's place, backing off with jitter while no backend can take
/// the stream (every hub of a lost backend moves at once otherwise). `None` ends the hub: the
/// gateway shuts down, nobody reads any more, or the topic is refused (a token that expired:
/// readers reconnect with fresh ones and `Last-Event-ID`).
async fn resubscribe(state: &AppState, hub: &Hub) -> Option<Source> {
    let mut pauses = RESUBSCRIBE.attempts();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return None,
            _ = tokio::time::sleep(pauses.next_pause()) => {}
        }
        if hub.readers.load(Ordering::Acquire) == 0 {
            return None;
        }
        match hub.subscribe(state, &state.hubs).await {
            Ok(resumed) => return Some(resumed),
            Err(err) => {
                let err = ApiError::from(err);
                if log_refusal(&hub.of, &err) {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! A hub's timers under paused time, over a backend the test drives.

    use tonic::Status;

    use super::{super::ring::Read, *};
    use crate::testing::{self, FakeBackend, advance, event, until};

    const MS: Duration = Duration::from_millis(1);

    /// Joins `topic` after `after` in the background; the backend's `Subscribe` comes to the
    /// test, which accepts it; the reader's place once the hub is open.
    async fn open(
        state: &AppState,
        backend: &mut FakeBackend,
        topic: &'static str,
    ) -> (
        Joined,
        tokio::sync::mpsc::Sender<Result<eventsys::v1::Event, Status>>,
    ) {
        let joining = {
            let state = state.clone();
            tokio::spawn(async move {
                let of = StreamOf::Topic(topic.into());
                state.hubs.join(&state, &of, Place::Seq(0), None).await
            })
        };
        let subscribed = backend.subscribed().await;
        assert_eq!(subscribed.request.topic, topic);
        let events = subscribed.accept();
        let joined = joining.await.unwrap().expect("the hub opens");
        (joined, events)
    }

    fn read(joined: &Joined, position: u64) -> Read {
        joined.member.ring.read(position)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hub_outlives_its_last_reader_by_linger_then_lets_its_stream_go() {
        testing::bounded(async {
            let mut backend = FakeBackend::start().await;
            let (state, _stop) = testing::gateway(&[&backend], &[]).await;
            let (joined, events) = open(&state, &mut backend, "t").await;
            assert!(joined.opened_it);
            drop(joined);

            advance(LINGER - MS).await;
            assert_eq!(state.hubs.count(), 1, "closed before LINGER");
            assert!(!events.is_closed());
            advance(2 * MS).await;
            assert_eq!(state.hubs.count(), 0, "still open after LINGER");
            // Its backend stream is reset: the backend stops sending.
            tokio::time::timeout(Duration::from_secs(1), events.closed())
                .await
                .expect("the backend's stream is let go");
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_back_within_linger_finds_the_same_hub() {
        testing::bounded(async {
            let mut backend = FakeBackend::start().await;
            let (state, _stop) = testing::gateway(&[&backend], &[]).await;
            let (first, events) = open(&state, &mut backend, "t").await;
            drop(first);
            advance(LINGER / 2).await;

            let of = StreamOf::Topic("t".into());
            let again = state
                .hubs
                .join(&state, &of, Place::Seq(0), None)
                .await
                .unwrap();
            assert!(!again.opened_it, "a second hub was opened");
            advance(LINGER * 3).await;
            assert_eq!(state.hubs.count(), 1);
            assert!(backend.subscribes.try_recv().is_err(), "subscribed twice");
            // It still carries the backend's events.
            events.send(Ok(event("t", 1))).await.unwrap();
            until(|| matches!(read(&again, again.position), Read::Frame(_))).await;
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_hub_sends_a_keep_alive_every_interval_and_events_reset_it() {
        testing::bounded(async {
            let mut backend = FakeBackend::start().await;
            let (state, _stop) = testing::gateway(&[&backend], &["--sse-keep-alive", "15s"]).await;
            let keep_alive = Duration::from_secs(15);
            let (joined, events) = open(&state, &mut backend, "t").await;

            advance(keep_alive - MS).await;
            assert!(
                matches!(read(&joined, 0), Read::Empty),
                "a keep-alive too soon"
            );
            advance(2 * MS).await;
            match read(&joined, 0) {
                Read::Frame(frame) => {
                    assert_eq!((frame.seq, &frame.bytes[..]), (None, &b":\n\n"[..]))
                }
                other => panic!("no keep-alive after the interval: {other:?}"),
            }

            // An event restarts the quiet period.
            advance(keep_alive / 2).await;
            events.send(Ok(event("t", 1))).await.unwrap();
            until(|| matches!(read(&joined, 1), Read::Frame(_))).await;
            advance(keep_alive - MS).await;
            assert!(
                matches!(read(&joined, 2), Read::Empty),
                "a keep-alive despite the event"
            );
            advance(2 * MS).await;
            assert!(matches!(
                read(&joined, 2),
                Read::Frame(Frame { seq: None, .. })
            ));
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_stream_is_resubscribed_after_the_last_seq_with_growing_pauses() {
        testing::bounded(async {
            let mut backend = FakeBackend::start().await;
            let (state, _stop) = testing::gateway(&[&backend], &[]).await;
            let (joined, events) = open(&state, &mut backend, "t").await;
            events.send(Ok(event("t", 1))).await.unwrap();
            until(|| matches!(read(&joined, 0), Read::Frame(_))).await;

            // The backend ends the stream; the hub waits, then subscribes after seq 1. While the
            // backend turns it away (a passing refusal), the pauses grow within the backoff.
            drop(events);
            let ended = tokio::time::Instant::now();
            let mut previous = ended;
            for attempt in 0..4 {
                let subscribed = backend.subscribed().await;
                assert_eq!(subscribed.request.after_seq, 1);
                let pause = subscribed.at - previous;
                let backoff = crate::upstream::RESUBSCRIBE;
                assert!(
                    pause >= backoff.min() && pause <= backoff.base(attempt) + MS,
                    "attempt {attempt}: paused {pause:?}"
                );
                previous = subscribed.at;
                subscribed.refuse(Status::resource_exhausted("busy"));
            }
            // Taken at last: events flow again, with no gap and no repeat.
            let events = backend.subscribed().await.accept();
            events.send(Ok(event("t", 1))).await.unwrap();
            events.send(Ok(event("t", 2))).await.unwrap();
            until(|| matches!(read(&joined, 1), Read::Frame(Frame { seq: Some(2), .. }))).await;
            assert!(matches!(read(&joined, 2), Read::Empty), "seq 1 came twice");
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_refusal_ends_the_hub_without_another_try() {
        testing::bounded(async {
            let mut backend = FakeBackend::start().await;
            let (state, _stop) = testing::gateway(&[&backend], &[]).await;
            let (joined, events) = open(&state, &mut backend, "t").await;
            drop(events);
            backend
                .subscribed()
                .await
                .refuse(Status::permission_denied("the token expired"));
            until(|| matches!(read(&joined, 0), Read::Closed)).await;
            assert_eq!(state.hubs.count(), 0);
            advance(Duration::from_secs(60)).await;
            assert!(backend.subscribes.try_recv().is_err(), "tried again");
        })
        .await;
    }
}
