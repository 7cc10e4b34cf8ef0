//! The backend pool: one power-of-two-choices balancer over every healthy backend, shared
//! through a `Buffer`, and the tasks that decide which backends it holds. Backend names are
//! re-resolved periodically (a DNS name may stand for many backends); each address is
//! health-checked and enters or leaves the balancer with `Change::Insert` / `Change::Remove`.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use eventsys::v1::event_service_client::EventServiceClient;
use futures::{StreamExt, TryFutureExt, future::MapErr, stream::BoxStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, body::Body, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tower::{BoxError, Service, balance::p2c::Balance, buffer::Buffer, discover::Change};

use crate::endpoint::{BackendStats, Balancing, Endpoint};

type Discovered = BoxStream<'static, Result<Change<SocketAddr, Endpoint>, Infallible>>;
type Balanced = Balance<Discovered, http::Request<Body>>;
type Buffered = Buffer<http::Request<Body>, <Balanced as Service<http::Request<Body>>>::Future>;
pub type Client = EventServiceClient<BalancedChannel>;

/// The shared, cloneable handle on the balancer that gRPC clients are built on. Its error is
/// a `Status` rather than the buffer's boxed error: the endpoints' statuses (with their
/// `x-backend` metadata) come back out of the box unchanged, and a concrete error type keeps
/// tonic's generic client futures provably `Send`.
#[derive(Clone)]
pub struct BalancedChannel(Buffered);

impl Service<http::Request<Body>> for BalancedChannel {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future =
        MapErr<<Buffered as Service<http::Request<Body>>>::Future, fn(BoxError) -> Status>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.0.poll_ready(cx).map_err(Status::from_error)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.0.call(request).map_err(Status::from_error)
    }
}

/// Health checks in a row that must miss their deadline before a backend that still accepts
/// connections is taken out.
const SLOW_ANSWERS_TO_REMOVE: u32 = 3;

/// Requests that may wait for the balancer at once; beyond this, callers wait for a slot.
const BUFFER: usize = 1024;

/// How the pool finds and checks backends.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// `host:port` names; each may resolve to several addresses.
    pub backends: Vec<String>,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub resolve_interval: Duration,
    pub connect_timeout: Duration,
    /// How requests are balanced (subscriptions always go by open streams).
    pub balancing: Balancing,
}

/// One resolved backend address.
struct Member {
    channel: Channel,
    stats: Arc<BackendStats>,
    /// Whether the balancer holds it now.
    inserted: bool,
    checker: CancellationToken,
}

/// Which balancer a call goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Unary calls, balanced by latency and outstanding calls.
    Requests,
    /// Subscriptions, balanced by open streams.
    Streams,
}

/// One p2c balancer over the pool's healthy backends.
struct Balancer {
    channel: BalancedChannel,
    changes: mpsc::UnboundedSender<Change<SocketAddr, Endpoint>>,
}

impl Balancer {
    fn new() -> Balancer {
        let (changes, discovered) = mpsc::unbounded_channel();
        let discovered: Discovered = UnboundedReceiverStream::new(discovered).map(Ok).boxed();
        Balancer {
            channel: BalancedChannel(Buffer::new(Balance::new(discovered), BUFFER)),
            changes,
        }
    }

    fn send(&self, change: Change<SocketAddr, Endpoint>) {
        // The receiver lives in the balancer, which lives as long as the pool.
        let _ = self.changes.send(change);
    }
}

pub struct Pool {
    requests: Balancer,
    streams: Balancer,
    members: Mutex<HashMap<SocketAddr, Member>>,
    /// How many backends the balancer holds.
    ready: watch::Sender<usize>,
    config: PoolConfig,
    shutdown: CancellationToken,
}

impl Pool {
    /// Builds the balancer and starts resolving and health-checking `config.backends`. Must be
    /// called inside a tokio runtime; the tasks stop when `shutdown` is cancelled.
    pub fn start(config: PoolConfig, shutdown: CancellationToken) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            requests: Balancer::new(),
            streams: Balancer::new(),
            members: Mutex::new(HashMap::new()),
            ready: watch::Sender::new(0),
            config,
            shutdown,
        });
        tokio::spawn(pool.clone().resolve_forever());
        pool
    }

    /// A gRPC client whose every call goes to the backend `route`'s balancer picks.
    pub fn client(&self, route: Route) -> Client {
        let balancer = match route {
            Route::Requests => &self.requests,
            Route::Streams => &self.streams,
        };
        EventServiceClient::new(balancer.channel.clone())
            .max_decoding_message_size(16 * 1024 * 1024)
    }

    /// Waits up to `deadline` for the balancer to hold at least one backend.
    pub async fn wait_ready(&self, deadline: Duration) -> bool {
        let mut ready = self.ready.subscribe();
        tokio::time::timeout(deadline, ready.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Every known backend address, healthy or not, with a direct channel to it.
    pub fn members(&self) -> Vec<(Arc<BackendStats>, Channel)> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<_> = members
            .values()
            .map(|m| (m.stats.clone(), m.channel.clone()))
            .collect();
        list.sort_by_key(|(stats, _)| stats.addr);
        list
    }

    /// Takes a backend out of the balancer at once, after a call to it found it unreachable.
    /// Its health checker puts it back when it answers again.
    pub fn eject(&self, addr: SocketAddr) {
        if self.set_health(addr, false) {
            tracing::warn!(backend = %addr, "backend unreachable: taken out until it answers health checks");
        }
    }

    /// Records a backend's health, inserting it into or removing it from the balancer on a
    /// change. Returns whether anything changed.
    fn set_health(&self, addr: SocketAddr, healthy: bool) -> bool {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(member) = members.get_mut(&addr) else {
            return false;
        };
        member.stats.set_healthy(healthy);
        if member.inserted == healthy {
            return false;
        }
        member.inserted = healthy;
        if healthy {
            // Fresh endpoints: latency estimates start over, as the backend may have restarted.
            let endpoint =
                |balancing| Endpoint::new(member.channel.clone(), member.stats.clone(), balancing);
            self.requests
                .send(Change::Insert(addr, endpoint(self.config.balancing)));
            self.streams
                .send(Change::Insert(addr, endpoint(Balancing::OpenStreams)));
        } else {
            self.requests.send(Change::Remove(addr));
            self.streams.send(Change::Remove(addr));
        }
        let inserted = members.values().filter(|m| m.inserted).count();
        self.ready.send_replace(inserted);
        true
    }

    async fn resolve_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.resolve_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tick.tick() => self.resolve().await,
            }
        }
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        for member in members.values() {
            member.checker.cancel();
        }
    }

    /// Resolves every configured name; adds addresses that appeared and drops those that went.
    /// A name that fails to resolve keeps its previous addresses: DNS trouble must not empty
    /// the pool.
    async fn resolve(self: &Arc<Self>) {
        let mut seen = HashSet::new();
        let mut failed = false;
        for name in &self.config.backends {
            match tokio::net::lookup_host(name.as_str()).await {
                Ok(addrs) => seen.extend(addrs),
                Err(err) => {
                    failed = true;
                    tracing::warn!(backend = %name, error = %err, "cannot resolve backend");
                }
            }
        }
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        for addr in &seen {
            if members.contains_key(addr) {
                continue;
            }
            let channel = self.channel(*addr);
            let checker = self.shutdown.child_token();
            let stats = Arc::new(BackendStats::new(*addr));
            tracing::info!(backend = %addr, "backend discovered");
            tokio::spawn(
                self.clone()
                    .check_forever(*addr, channel.clone(), checker.clone()),
            );
            members.insert(
                *addr,
                Member {
                    channel,
                    stats,
                    inserted: false,
                    checker,
                },
            );
        }
        if failed {
            return;
        }
        let gone: Vec<SocketAddr> = members
            .keys()
            .filter(|a| !seen.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(member) = members.remove(&addr) {
                tracing::info!(backend = %addr, "backend no longer resolves: removed");
                member.checker.cancel();
                if member.inserted {
                    self.requests.send(Change::Remove(addr));
                    self.streams.send(Change::Remove(addr));
                }
            }
        }
        let inserted = members.values().filter(|m| m.inserted).count();
        self.ready.send_replace(inserted);
    }

    fn channel(&self, addr: SocketAddr) -> Channel {
        Channel::from_shared(format!("http://{addr}"))
            .expect("a socket address makes a valid URI")
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy()
    }

    /// Health-checks one address until cancelled: `grpc.health.v1` Check of the event service
    /// with a short deadline. A failed check removes the backend (a missed deadline only the
    /// third in a row), one passed check restores it.
    async fn check_forever(
        self: Arc<Self>,
        addr: SocketAddr,
        channel: Channel,
        stop: CancellationToken,
    ) {
        let mut health = HealthClient::new(channel);
        let mut slow_answers = 0;
        let mut tick = tokio::time::interval(self.config.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let request = HealthCheckRequest {
                service: "events.v1.EventService".into(),
            };
            let outcome =
                tokio::time::timeout(self.config.health_timeout, health.check(request)).await;
            let healthy = matches!(
                &outcome,
                Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32
            );
            // A backend that refuses or says NOT_SERVING is out at once; one that is only slow
            // to answer may just be busy (a burst of fan-out on a loaded machine), and taking
            // every busy backend out would turn load into an outage.
            slow_answers = if outcome.is_err() {
                slow_answers + 1
            } else {
                0
            };
            if outcome.is_err() && slow_answers < SLOW_ANSWERS_TO_REMOVE {
                continue;
            }
            if self.set_health(addr, healthy) {
                if healthy {
                    tracing::info!(backend = %addr, "backend healthy: receiving traffic");
                } else {
                    let reason = match outcome {
                        Ok(Ok(response)) => format!("status {:?}", response.get_ref().status()),
                        Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
                        Err(_) => format!("no answer within {:?}", self.config.health_timeout),
                    };
                    tracing::warn!(backend = %addr, %reason, "backend unhealthy: removed");
                }
            }
        }
    }
}
