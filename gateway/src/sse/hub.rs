//! Hubs: one backend stream per topic (per pattern set and filter, per user's change feed) for
//! all of this gateway's SSE clients on it, opened by the first client, kept while anyone reads
//! and a moment after, moved to another backend from its place when its backend ends it (its
//! `task`). Each event (change) is framed once, into a ring.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, Semaphore, watch},
    time::Instant,
};

use super::{
    ring::Ring,
    selection::Place,
    source::{StreamOf, Upstream},
};
use crate::{
    api::ApiError,
    http::AppState,
    upstream::{Answer, Backend, Bearer},
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
    /// Where its first client stood: its ring starts right after it.
    opened_after: Place,
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
    /// The token the hub (re)subscribes with, and when it expires: of the readers' tokens, the
    /// one accepted longest (the gateway checked every reader's right to the topic, the
    /// backend checks this one). Readers end as their tokens expire, so while any reader is
    /// left this one is valid: an expired token never resubscribes.
    bearer: Option<(Bearer, Instant)>,
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

impl Member {
    /// Completes after the ring's next push or close. It owns the hub (not the client's
    /// membership), so a response body can keep it between polls.
    pub(super) fn pushed(&self) -> impl Future<Output = ()> + Send + 'static {
        let hub = self.0.clone();
        async move { hub.ring.pushed().await }
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
    /// The ring from `position` holds every frame after the client's `after`: it opened the
    /// hub, or joined one opened from no later place whose ring has dropped nothing. Else
    /// what came before its position is read from the store.
    pub(super) covered: bool,
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
        bearer: Option<(Bearer, Instant)>,
    ) -> Result<Joined, ApiError> {
        let joined = {
            let mut hubs = self.map();
            match hubs.get(of) {
                Some(hub) => {
                    // Counted under the map's lock, so a hub retiring for want of readers
                    // sees this one.
                    hub.readers.fetch_add(1, Ordering::AcqRel);
                    if let Some((token, expires)) = bearer {
                        let mut current = hub.current();
                        if current
                            .bearer
                            .as_ref()
                            .is_none_or(|(_, held)| expires > *held)
                        {
                            current.bearer = Some((token, expires));
                        }
                    }
                    // Joining a hub that still holds everything since it opened, from a place
                    // it opened at or before: the ring has all the client needs (no store
                    // read, no backend call for a client of a topic's live stream).
                    let covered = matches!(
                        (&hub.opened_after, &after),
                        (Place::Seq(opened), Place::Seq(after)) if after >= opened
                    ) && hub.ring.kept_all();
                    Joined {
                        member: Member(hub.clone()),
                        position: if covered { 0 } else { hub.ring.end() },
                        covered,
                        hub_place: Place::Seq(0),
                    }
                }
                None => {
                    let hub = Arc::new(Hub {
                        of: of.clone(),
                        ring: Ring::new(RING_FRAMES),
                        readers: AtomicUsize::new(1),
                        left: Notify::new(),
                        opened_after: after.clone(),
                        current: Mutex::new(Current {
                            backend: None,
                            bearer,
                            place: after,
                        }),
                        opened: watch::Sender::new(Opening::Pending),
                    });
                    hubs.insert(of.clone(), hub.clone());
                    self.open.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(task::run(state.clone(), hub.clone()));
                    Joined {
                        member: Member(hub),
                        position: 0,
                        covered: true,
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
}

mod task;

#[cfg(test)]
mod tests;
