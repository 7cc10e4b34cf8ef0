//! One backend as the balancer sees it: a tonic channel whose responses and failures name the
//! backend (`x-backend`), measured by tower's `PeakEwma`, whose cost is floored so that
//! latency differences too small to mean anything do not decide where requests go.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use http::HeaderValue;
use http_body_util::BodyExt;
use tonic::{Status, body::Body, metadata::MetadataValue, transport::Channel};
use tower::{
    Service,
    load::{
        Load, PeakEwma, TrackCompletion,
        peak_ewma::{Cost, Handle},
    },
};

/// Response header (and `Status` metadata) naming the backend that served a call.
pub const BACKEND_HEADER: &str = "x-backend";
/// `Status` metadata marking a call that never reached a response: the backend is unreachable.
pub const UNREACHABLE: &str = "x-gateway-unreachable";

/// RTT assumed for a backend before it has answered anything: below any sensible floor, so a
/// backend that just joined or restarted is tried at once; its first response sets the real
/// estimate.
const DEFAULT_RTT: Duration = Duration::from_micros(100);
/// How quickly the latency estimate forgets a slow response. Backends answer in about a
/// millisecond, so this still averages over hundreds of calls; a backend that is really slow
/// re-peaks its estimate at every call it gets, while a one-off spike (a cold start, a
/// scheduling hiccup) is forgotten within a second instead of starving a healthy backend.
const DECAY: Duration = Duration::from_millis(500);

/// What the gateway knows about one backend address, shared with `/load` and `/metrics`.
#[derive(Debug)]
pub struct BackendStats {
    pub addr: SocketAddr,
    healthy: AtomicBool,
    in_flight: AtomicU64,
    streams: AtomicU64,
    attempts: AtomicU64,
    failures: AtomicU64,
    cost_bits: AtomicU64,
}

impl BackendStats {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            healthy: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            cost_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Calls sent to this backend and not yet finished (open streams included).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Server-streaming calls to this backend that are open now.
    pub fn streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// Calls sent to this backend, successful or not.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Calls that never got a response because the backend was unreachable.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The cost the balancer last read: PeakEwma's latency estimate (ns) × (pending + 1), or
    /// the floor × (pending + 1) when that is larger.
    pub fn cost(&self) -> f64 {
        f64::from_bits(self.cost_bits.load(Ordering::Relaxed))
    }
}

/// Counts a call in flight (and, for a stream, an open stream) until dropped.
struct InFlight {
    stats: Arc<BackendStats>,
    stream: bool,
}

impl InFlight {
    fn new(stats: Arc<BackendStats>, stream: bool) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        if stream {
            stats.streams.fetch_add(1, Ordering::Relaxed);
        }
        Self { stats, stream }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.stream {
            self.stats.streams.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Marks responses of server-streaming calls, whose body may stay open for hours.
#[derive(Debug, Clone, Copy)]
struct Streaming;

/// A backend's channel that names the backend on every response and failure.
#[derive(Clone)]
pub struct Tagged {
    channel: Channel,
    stats: Arc<BackendStats>,
    name: HeaderValue,
}

impl Tagged {
    /// The status of a call its backend never completed: the connection failed before or
    /// during the response. Marked so callers can take the backend out and retry elsewhere.
    fn unreachable(
        stats: &BackendStats,
        name: &HeaderValue,
        err: &dyn std::fmt::Display,
    ) -> Status {
        stats.failures.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(backend = %stats.addr, error = %err, "backend unreachable");
        let mut status = Status::unavailable(format!("backend {} unreachable", stats.addr));
        let meta = status.metadata_mut();
        if let Ok(name) = name.to_str().unwrap_or_default().parse() {
            meta.insert(BACKEND_HEADER, name);
        }
        meta.insert(UNREACHABLE, MetadataValue::from_static("1"));
        status
    }
}

impl Service<http::Request<Body>> for Tagged {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Status>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        let (stats, name) = (&self.stats, &self.name);
        self.channel
            .poll_ready(cx)
            .map_err(|e| Self::unreachable(stats, name, &e))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let streaming = request.uri().path().ends_with("/Subscribe");
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight::new(self.stats.clone(), streaming);
        let (stats, name) = (self.stats.clone(), self.name.clone());
        let call = self.channel.call(request);
        Box::pin(async move {
            let mut response = call
                .await
                .map_err(|e| Self::unreachable(&stats, &name, &e))?;
            response.headers_mut().insert(BACKEND_HEADER, name.clone());
            if streaming {
                response.extensions_mut().insert(Streaming);
            }
            // In flight until the body ends, so an open stream shows in `/load`. A gRPC error
            // arrives as trailers, never as a body error: a body error is the connection
            // failing mid-response.
            Ok(response.map(|body| {
                let lost = move |err: Status| Self::unreachable(&stats, &name, &err);
                Body::new(
                    body.map_frame(move |frame| {
                        let _ = &guard;
                        frame
                    })
                    .map_err(lost),
                )
            }))
        })
    }
}

/// When PeakEwma stops timing a call: unary calls at the end of the response body (trailers
/// included); streams once their response headers arrive. A stream that closes after an hour
/// says nothing about how fast the backend answers, and timing it to its end would make the
/// backend look an hour slow.
#[derive(Debug, Clone, Copy, Default)]
pub struct Completion;

impl TrackCompletion<Handle, http::Response<Body>> for Completion {
    type Output = http::Response<Body>;

    fn track_completion(&self, handle: Handle, response: http::Response<Body>) -> Self::Output {
        if response.extensions().get::<Streaming>().is_some() {
            drop(handle);
            return response;
        }
        response.map(|body| {
            Body::new(body.map_frame(move |frame| {
                let _ = &handle;
                frame
            }))
        })
    }
}

/// What a balancer weighs backends by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Balancing {
    /// Requests: PeakEwma latency × outstanding calls, differences under `floor` ignored.
    Latency { floor: Duration },
    /// Subscriptions: open streams. They last for hours, so how fast a backend answered a
    /// moment ago says little about where the next one belongs; how many it carries does.
    OpenStreams,
    /// For comparison: outstanding calls only (p2c on pending requests).
    Pending,
    /// For comparison: calls sent so far, which keeps the counts equal as round robin does.
    Count,
}

/// A backend as a balancer holds it.
pub struct Endpoint {
    inner: PeakEwma<Tagged, Completion>,
    stats: Arc<BackendStats>,
    balancing: Balancing,
}

impl Endpoint {
    pub fn new(channel: Channel, stats: Arc<BackendStats>, balancing: Balancing) -> Self {
        let name = HeaderValue::from_str(&stats.addr.to_string()).expect("socket address is ASCII");
        let tagged = Tagged {
            channel,
            stats: stats.clone(),
            name,
        };
        let inner = PeakEwma::new(tagged, DEFAULT_RTT, DECAY.as_nanos() as f64, Completion);
        Self {
            inner,
            stats,
            balancing,
        }
    }
}

impl Service<http::Request<Body>> for Endpoint {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = <PeakEwma<Tagged, Completion> as Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.inner.call(request)
    }
}

/// What the balancer compares between two backends.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Floored(f64);

/// For requests: PeakEwma's cost, latency estimate × (pending + 1), but never below floor ×
/// (pending + 1). When requests come one at a time every backend has nothing pending, and raw
/// PeakEwma then ranks backends by their last few latency samples: on loopback, scheduling
/// noise of a millisecond decides, and a backend whose last sample was unlucky gets nothing
/// until the estimate decays. Below the floor, backends tie on outstanding requests and p2c's
/// random pair order spreads the traffic; above it (a backend tens of milliseconds slower),
/// PeakEwma decides as usual. For subscriptions: the open streams.
impl Load for Endpoint {
    type Metric = Floored;

    fn load(&self) -> Floored {
        match self.balancing {
            Balancing::Latency { floor } => {
                let ewma = cost_value(self.inner.load());
                let unary = self.stats.in_flight().saturating_sub(self.stats.streams());
                let cost = ewma.max(floor.as_nanos() as f64 * (unary + 1) as f64);
                self.stats
                    .cost_bits
                    .store(cost.to_bits(), Ordering::Relaxed);
                Floored(cost)
            }
            Balancing::OpenStreams => Floored(self.stats.streams() as f64),
            Balancing::Pending => {
                let unary = self.stats.in_flight().saturating_sub(self.stats.streams());
                Floored(unary as f64)
            }
            Balancing::Count => Floored(self.stats.attempts() as f64),
        }
    }
}

/// The number inside a `Cost`, which tower keeps private but prints (NaN if it ever stops).
fn cost_value(cost: Cost) -> f64 {
    let text = format!("{cost:?}");
    text.strip_prefix("Cost(")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(balancing: Balancing) -> (Endpoint, Arc<BackendStats>) {
        let channel = Channel::from_static("http://127.0.0.1:9").connect_lazy();
        let stats = Arc::new(BackendStats::new("127.0.0.1:9".parse().unwrap()));
        (Endpoint::new(channel, stats.clone(), balancing), stats)
    }

    fn latency(floor: Duration) -> Balancing {
        Balancing::Latency { floor }
    }

    #[tokio::test]
    async fn cost_is_peak_ewma_above_the_floor() {
        // Pins the `Cost` format this relies on: a tower upgrade that changes it fails here.
        let (endpoint, stats) = endpoint(latency(Duration::from_nanos(1)));
        let Floored(cost) = endpoint.load();
        // The estimate starts at the default RTT and has decayed a hair since.
        let default = DEFAULT_RTT.as_nanos() as f64;
        assert!(cost <= default && cost > 0.99 * default, "{cost}");
        assert_eq!(stats.cost(), cost);
    }

    #[tokio::test]
    async fn cost_is_floored_and_grows_with_outstanding_unary_calls_only() {
        let (endpoint, stats) = endpoint(latency(Duration::from_millis(5)));
        assert_eq!(endpoint.load(), Floored(5e6));
        let unary = [
            InFlight::new(stats.clone(), false),
            InFlight::new(stats.clone(), false),
        ];
        let _stream = InFlight::new(stats.clone(), true);
        assert_eq!(endpoint.load(), Floored(15e6));
        drop(unary);
        assert_eq!(endpoint.load(), Floored(5e6));
        assert_eq!((stats.in_flight(), stats.streams()), (1, 1));
    }

    #[tokio::test]
    async fn subscriptions_are_weighed_by_open_streams() {
        let (endpoint, stats) = endpoint(Balancing::OpenStreams);
        assert_eq!(endpoint.load(), Floored(0.0));
        let _unary = InFlight::new(stats.clone(), false);
        let streams = [
            InFlight::new(stats.clone(), true),
            InFlight::new(stats.clone(), true),
        ];
        assert_eq!(endpoint.load(), Floored(2.0));
        drop(streams);
        assert_eq!(endpoint.load(), Floored(0.0));
    }
}
