//! One backend as a balancer holds it: its HTTP/2 link, stamping every response with its
//! `Backend`, counts calls in flight, times unary calls with our PeakEwma, and takes itself out
//! of the balancers when it finds its backend unreachable, before the error is built.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tonic::{Code, Status, body::Body};
use tower::{Service, load::Load};

use super::{
    backend::{Backend, BackendStats, InFlight},
    ewma::PeakEwma,
    link::Link,
    membership::Membership,
};

/// RTT assumed for a backend before it has answered anything: below any sensible floor, so a
/// backend that just joined or restarted is tried at once; its first response sets the real
/// estimate.
const DEFAULT_RTT: Duration = Duration::from_micros(100);
/// How quickly the latency estimate forgets a slow response. Backends answer in about a
/// millisecond, so this still averages over hundreds of calls; a backend that is really slow
/// re-peaks its estimate at every call it gets, while a one-off spike (a cold start, a
/// scheduling hiccup) is forgotten within a second instead of starving a healthy backend.
const DECAY: Duration = Duration::from_millis(500);

/// What a balancer weighs backends by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Balancing {
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

/// Why a call has no answer of its own: kept as the `Status`'s source, where the call policy
/// finds it by type.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(crate) enum CallFailure {
    /// The connection failed before or during the response; the endpoint has already taken
    /// itself out of the balancers. `sent`: the request had left (it may have been applied);
    /// otherwise the connection was never made.
    #[error("backend {backend} unreachable")]
    Unreachable { backend: Backend, sent: bool },
    /// The backend answered with a gRPC error.
    #[error("backend {0} answered with an error")]
    Answered(Backend),
}

impl CallFailure {
    pub(crate) fn into_status(self, mut status: Status) -> Status {
        status.set_source(Arc::new(self));
        status
    }
}

/// A backend as a balancer holds it.
pub(crate) struct Endpoint {
    link: Link,
    stats: Arc<BackendStats>,
    ewma: PeakEwma,
    balancing: Balancing,
    membership: Arc<Membership>,
}

impl Endpoint {
    pub(crate) fn new(
        link: Link,
        stats: Arc<BackendStats>,
        balancing: Balancing,
        membership: Arc<Membership>,
    ) -> Self {
        Self {
            link,
            stats,
            ewma: PeakEwma::new(DEFAULT_RTT, DECAY),
            balancing,
            membership,
        }
    }
}

/// Shuts the endpoint's own gate (out of both balancers), then builds the error the caller
/// sees: unavailable, may retry.
fn unreachable(
    membership: &Arc<Membership>,
    stats: &BackendStats,
    err: &dyn std::fmt::Display,
    sent: bool,
) -> Status {
    let backend = stats.backend();
    stats.count_failure();
    tracing::debug!(%backend, error = %err, "backend unreachable");
    membership.eject(backend);
    CallFailure::Unreachable { backend, sent }.into_status(Status::unavailable(format!(
        "backend {backend} unreachable"
    )))
}

impl Service<http::Request<Body>> for Endpoint {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Status>>;

    /// Always ready: the link connects on demand, and a call that cannot reach the backend
    /// takes the endpoint out.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let streaming = self.balancing == Balancing::OpenStreams;
        self.stats.count_attempt();
        let in_flight = InFlight::new(self.stats.clone(), streaming);
        // Streams are timed to their response headers: one that closes after an hour says
        // nothing about how fast the backend answers.
        let timing = self.ewma.start();
        let (membership, stats) = (self.membership.clone(), self.stats.clone());
        let link = self.link.clone();
        Box::pin(async move {
            let backend = stats.backend();
            let mut response = match link.send(request).await {
                Ok(response) => response,
                // Never sent when the connection could not be made.
                Err(err) => {
                    let sent = !matches!(err, crate::upstream::link::LinkError::Dial(_));
                    return Err(unreachable(&membership, &stats, &err, sent));
                }
            };
            // A backend's error arrives as a trailers-only response: named here, as tonic
            // would read it, so the caller knows which backend said it.
            if let Some(status) = Status::from_header_map(response.headers())
                && status.code() != Code::Ok
            {
                return Err(CallFailure::Answered(backend).into_status(status));
            }
            response.extensions_mut().insert(backend);
            let timing = (!streaming).then_some(timing);
            // In flight until the body ends, so an open stream shows in `/load`. A gRPC error
            // arrives as trailers, never as a body error: a body error is the connection
            // failing mid-response.
            Ok(response.map(|body| {
                Body::new(
                    body.map_frame(move |frame| {
                        let _ = (&in_flight, &timing);
                        frame
                    })
                    .map_err(move |err| unreachable(&membership, &stats, &err, true)),
                )
            }))
        })
    }
}

/// What the balancer compares between two backends.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub(crate) struct Cost(f64);

/// For requests: PeakEwma's cost, latency estimate × (pending + 1), but never below floor ×
/// (pending + 1). When requests come one at a time every backend has nothing pending, and raw
/// PeakEwma then ranks backends by their last few latency samples: on loopback, scheduling
/// noise of a millisecond decides, and a backend whose last sample was unlucky gets nothing
/// until the estimate decays. Below the floor, backends tie on outstanding requests and p2c's
/// random pair order spreads the traffic; above it (a backend tens of milliseconds slower),
/// PeakEwma decides as usual. For subscriptions: the open streams.
impl Load for Endpoint {
    type Metric = Cost;

    fn load(&self) -> Cost {
        match self.balancing {
            Balancing::Latency { floor } => {
                let pending = (self.stats.unary() + 1) as f64;
                let cost = (self.ewma.rtt_ns() * pending).max(floor.as_nanos() as f64 * pending);
                self.stats.record_cost(cost);
                Cost(cost)
            }
            Balancing::OpenStreams => Cost(self.stats.streams() as f64),
            Balancing::Pending => Cost(self.stats.unary() as f64),
            Balancing::Count => Cost(self.stats.attempts() as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::link::LinkSettings;
    use super::*;

    fn endpoint(balancing: Balancing) -> (Endpoint, Arc<BackendStats>) {
        let backend = Backend("127.0.0.1:9".parse().unwrap());
        let settings = LinkSettings::plain();
        let link = Link::new(backend, Arc::new(settings));
        let stats = Arc::new(BackendStats::new(backend));
        let (membership, _discovered) = Membership::new(balancing);
        (
            Endpoint::new(link, stats.clone(), balancing, membership),
            stats,
        )
    }

    fn latency(floor: Duration) -> Balancing {
        Balancing::Latency { floor }
    }

    #[tokio::test(start_paused = true)]
    async fn cost_is_peak_ewma_above_the_floor() {
        let (endpoint, stats) = endpoint(latency(Duration::from_nanos(1)));
        let Cost(cost) = endpoint.load();
        assert_eq!(cost, DEFAULT_RTT.as_nanos() as f64, "no time has passed");
        assert_eq!(stats.snapshot().cost, cost);
        tokio::time::advance(DECAY).await;
        let Cost(decayed) = endpoint.load();
        let expected = cost / std::f64::consts::E;
        assert!((decayed - expected).abs() < 1e-6 * expected, "{decayed}");
    }

    #[tokio::test]
    async fn cost_is_floored_and_grows_with_outstanding_unary_calls_only() {
        let (endpoint, stats) = endpoint(latency(Duration::from_millis(5)));
        assert_eq!(endpoint.load(), Cost(5e6));
        let unary = [
            InFlight::new(stats.clone(), false),
            InFlight::new(stats.clone(), false),
        ];
        let _stream = InFlight::new(stats.clone(), true);
        assert_eq!(endpoint.load(), Cost(15e6));
        drop(unary);
        assert_eq!(endpoint.load(), Cost(5e6));
        let snapshot = stats.snapshot();
        assert_eq!((snapshot.in_flight, snapshot.streams), (1, 1));
    }

    #[tokio::test]
    async fn subscriptions_are_weighed_by_open_streams() {
        let (endpoint, stats) = endpoint(Balancing::OpenStreams);
        assert_eq!(endpoint.load(), Cost(0.0));
        let _unary = InFlight::new(stats.clone(), false);
        let streams = [
            InFlight::new(stats.clone(), true),
            InFlight::new(stats.clone(), true),
        ];
        assert_eq!(endpoint.load(), Cost(2.0));
        drop(streams);
        assert_eq!(endpoint.load(), Cost(0.0));
    }
}
