//! Which backends the balancers hold: every resolved address with its link and counters,
//! and the one place that inserts a backend into the balancers or removes it from them
//! (`Change::Insert` / `Change::Remove`), whether a health check or an endpoint asks. The
//! writes balancer holds the healthy backends that say they commit every backend's writes
//! (`WRITER_HEALTH`), or every healthy backend when none does.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use futures::{StreamExt, stream::BoxStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tower::discover::Change;

use super::{
    backend::{Backend, BackendSnapshot, BackendStats, Down, Health},
    endpoint::{Balancing, Endpoint},
    link::Link,
};

/// What a balancer discovers its endpoints from.
pub(crate) type Discovered = BoxStream<'static, Result<Change<Backend, Endpoint>, Infallible>>;

/// One resolved backend address.
struct Member {
    link: Link,
    stats: Arc<BackendStats>,
    /// Whether the balancers hold it now.
    inserted: bool,
    /// Its last check said it commits every backend's writes.
    writer: bool,
    /// Whether the writes balancer holds it now.
    in_writes: bool,
    checker: CancellationToken,
}

/// Every known backend address and whether the balancers hold it. Health checks, discovery
/// and endpoints that find their backend unreachable all change it; it alone sends the
/// balancers their `Change`s, so an insert and a remove can never cross.
pub(crate) struct Membership {
    /// Backend → member. A std mutex: held to read or flip a member's `inserted` and send the
    /// matching `Change` in the same critical section (that is what keeps the two balancers in
    /// step with it), never across an `.await`.
    members: Mutex<HashMap<Backend, Member>>,
    /// Unbounded, yet bounded in practice: at most one change per member per health verdict,
    /// and each balancer drains its channel on every poll.
    requests: mpsc::UnboundedSender<Change<Backend, Endpoint>>,
    streams: mpsc::UnboundedSender<Change<Backend, Endpoint>>,
    writes: mpsc::UnboundedSender<Change<Backend, Endpoint>>,
    /// How many backends the balancers hold.
    ready: watch::Sender<usize>,
    /// How requests are weighed (subscriptions always go by open streams).
    balancing: Balancing,
}

impl Membership {
    /// The membership and what the request, stream and write balancers discover from it.
    pub(crate) fn new(balancing: Balancing) -> (Arc<Membership>, [Discovered; 3]) {
        let (requests, for_requests) = mpsc::unbounded_channel();
        let (streams, for_streams) = mpsc::unbounded_channel();
        let (writes, for_writes) = mpsc::unbounded_channel();
        let membership = Arc::new(Membership {
            members: Mutex::new(HashMap::new()),
            requests,
            streams,
            writes,
            ready: watch::Sender::new(0),
            balancing,
        });
        let discovered = |rx| UnboundedReceiverStream::new(rx).map(Ok).boxed();
        (
            membership,
            [
                discovered(for_requests),
                discovered(for_streams),
                discovered(for_writes),
            ],
        )
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Backend, Member>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `backend` is known already.
    pub(crate) fn contains(&self, backend: Backend) -> bool {
        self.lock().contains_key(&backend)
    }

    /// Whether `backend` is in the balancers (its last check passed).
    pub(crate) fn is_healthy(&self, backend: Backend) -> bool {
        self.lock().get(&backend).is_some_and(|m| m.inserted)
    }

    /// Adds a newly resolved address, out of the balancers until its first passed check.
    pub(crate) fn add(&self, backend: Backend, link: Link, checker: CancellationToken) {
        let stats = Arc::new(BackendStats::new(backend));
        self.lock().insert(
            backend,
            Member {
                link,
                stats,
                inserted: false,
                writer: false,
                in_writes: false,
                checker,
            },
        );
    }

    /// Drops every address not in `keep`, stopping its health checks.
    pub(crate) fn retain(self: &Arc<Self>, keep: impl Fn(Backend) -> bool) {
        let mut members = self.lock();
        let gone: Vec<Backend> = members.keys().filter(|b| !keep(**b)).copied().collect();
        for backend in gone {
            if let Some(member) = members.remove(&backend) {
                tracing::info!(%backend, "backend no longer resolves: removed");
                member.checker.cancel();
                if member.inserted {
                    self.send(Change::Remove(backend), Change::Remove(backend));
                }
                if member.in_writes {
                    let _ = self.writes.send(Change::Remove(backend));
                }
            }
        }
        self.sync_writes(&mut members);
        self.publish_ready(&members);
    }

    /// Stops every health checker (at shutdown).
    pub(crate) fn stop_checkers(&self) {
        for member in self.lock().values() {
            member.checker.cancel();
        }
    }

    /// Takes a backend out at once, after a call to it found it unreachable. Its health
    /// checker puts it back when it answers again.
    pub(crate) fn eject(self: &Arc<Self>, backend: Backend) {
        if self.set_health(backend, Health::Down(Down::Unreachable)) {
            tracing::warn!(%backend, "backend unreachable: taken out until it answers health checks");
        }
    }

    /// Records a backend's health, inserting it into or removing it from both balancers on a
    /// change. Returns whether anything changed.
    pub(crate) fn set_health(self: &Arc<Self>, backend: Backend, health: Health) -> bool {
        let healthy = health == Health::Up;
        let mut members = self.lock();
        let Some(member) = members.get_mut(&backend) else {
            return false;
        };
        member.stats.set_health(health);
        if member.inserted == healthy {
            return false;
        }
        member.inserted = healthy;
        // Back from down, it may have restarted as a follower: a writer when a check says so.
        member.writer = false;
        if healthy {
            // Fresh endpoints: latency estimates start over, as the backend may have restarted.
            self.send(
                Change::Insert(backend, self.endpoint(member, self.balancing)),
                Change::Insert(backend, self.endpoint(member, Balancing::OpenStreams)),
            );
        } else {
            self.send(Change::Remove(backend), Change::Remove(backend));
        }
        self.sync_writes(&mut members);
        self.publish_ready(&members);
        true
    }

    /// A new endpoint on `member` for a balancer that weighs by `balancing`.
    fn endpoint(self: &Arc<Self>, member: &Member, balancing: Balancing) -> Endpoint {
        Endpoint::new(
            member.link.clone(),
            member.stats.clone(),
            balancing,
            self.clone(),
        )
    }

    /// Records whether `backend`'s check says it commits every backend's writes.
    pub(crate) fn set_writer(self: &Arc<Self>, backend: Backend, writer: bool) {
        let mut members = self.lock();
        let Some(member) = members.get_mut(&backend) else {
            return;
        };
        if member.writer != writer {
            member.writer = writer;
            self.sync_writes(&mut members);
        }
    }

    /// Brings the writes balancer in line: the healthy writers, or every healthy backend when
    /// there is none. Under the members' lock, like every other change.
    fn sync_writes(self: &Arc<Self>, members: &mut HashMap<Backend, Member>) {
        let any_writer = members.values().any(|m| m.inserted && m.writer);
        for (backend, member) in members.iter_mut() {
            let wanted = member.inserted && (member.writer || !any_writer);
            if member.in_writes == wanted {
                continue;
            }
            member.in_writes = wanted;
            let change = if wanted {
                Change::Insert(*backend, self.endpoint(member, self.balancing))
            } else {
                Change::Remove(*backend)
            };
            // The receiver lives in the writes balancer, which lives as long as the gateway.
            let _ = self.writes.send(change);
        }
    }

    fn send(&self, requests: Change<Backend, Endpoint>, streams: Change<Backend, Endpoint>) {
        // The receivers live in the balancers, which live as long as the gateway.
        let _ = self.requests.send(requests);
        let _ = self.streams.send(streams);
    }

    fn publish_ready(&self, members: &HashMap<Backend, Member>) {
        let inserted = members.values().filter(|m| m.inserted).count();
        self.ready.send_replace(inserted);
    }

    /// Told whenever a backend goes in or out of the balancers (the value: how many are in).
    pub(crate) fn changes(&self) -> watch::Receiver<usize> {
        self.ready.subscribe()
    }

    /// Waits up to `deadline` for the balancers to hold at least one backend.
    pub(crate) async fn wait_ready(&self, deadline: Duration) -> bool {
        if *self.ready.borrow() > 0 {
            return true;
        }
        let mut ready = self.ready.subscribe();
        tokio::time::timeout(deadline, ready.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Every known backend's figures, in address order.
    pub(crate) fn snapshots(&self) -> Vec<BackendSnapshot> {
        let mut list: Vec<_> = self.lock().values().map(|m| m.stats.snapshot()).collect();
        list.sort_by_key(|s| s.backend);
        list
    }

    /// Every known backend with its link (for per-backend calls such as Stats).
    pub(crate) fn links(&self) -> Vec<(BackendSnapshot, Link)> {
        let mut list: Vec<_> = self
            .lock()
            .values()
            .map(|m| (m.stats.snapshot(), m.link.clone()))
            .collect();
        list.sort_by_key(|(s, _)| s.backend);
        list
    }
}
