//! Backend load figures for the `Stats` rpc, and the tower layer that keeps them and logs each
//! request. A request counts as in flight until its response body ends, so an open `Subscribe`
//! stream is load for as long as it is open, not just until its headers go out.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use eventsys::{
    otlp::{KeyValue, Started},
    trace::{TRACEPARENT, TraceParent},
    v1::event_service_server::SERVICE_NAME,
};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::metrics::{RpcMetrics, method_index, method_name};

/// The event API's method paths are `/SERVICE_NAME/Method`.
fn event_api_method(path: &str) -> Option<&str> {
    path.strip_prefix('/')?
        .strip_prefix(SERVICE_NAME)?
        .strip_prefix('/')
}

#[derive(Debug)]
pub(crate) struct Stats {
    started: Instant,
    in_flight: AtomicU64,
    requests: AtomicU64,
    subscribers: AtomicU64,
    /// Subscribers that fell behind their topic's ring and read on from the store.
    catch_ups: AtomicU64,
    /// Subscribers closed for being too far behind.
    too_far_behind: AtomicU64,
    /// Events retention has dropped.
    dropped_by_retention: AtomicU64,
    /// Keyed writes answered from an earlier request's answer.
    replays: AtomicU64,
}

/// An open subscription, counted until dropped.
#[derive(Debug)]
pub(crate) struct Subscriber(Arc<Stats>);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The owned form of `Gauge`, for response bodies that outlive the request's future.
#[derive(Debug)]
struct InFlight(Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            subscribers: AtomicU64::new(0),
            catch_ups: AtomicU64::new(0),
            too_far_behind: AtomicU64::new(0),
            dropped_by_retention: AtomicU64::new(0),
            replays: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn subscribers(&self) -> u64 {
        self.subscribers.load(Ordering::Relaxed)
    }

    pub(crate) fn caught_up(&self) {
        self.catch_ups.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed_too_far_behind(&self) {
        self.too_far_behind.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dropped_by_retention(&self, events: usize) {
        self.dropped_by_retention
            .fetch_add(events as u64, Ordering::Relaxed);
    }

    pub(crate) fn replayed(&self) {
        self.replays.fetch_add(1, Ordering::Relaxed);
    }

    /// Catch-ups, subscribers closed too far behind, events dropped by retention and keyed
    /// writes replayed, so far.
    pub(crate) fn counts(&self) -> [u64; 4] {
        [
            self.catch_ups.load(Ordering::Relaxed),
            self.too_far_behind.load(Ordering::Relaxed),
            self.dropped_by_retention.load(Ordering::Relaxed),
            self.replays.load(Ordering::Relaxed),
        ]
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Marks an open subscription until the returned guard is dropped.
    pub(crate) fn subscriber(self: &Arc<Self>) -> Subscriber {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscriber(self.clone())
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Layer that meters and logs every event-API request of one backend.
#[derive(Clone)]
pub(crate) struct MeterLayer {
    stats: Arc<Stats>,
    metrics: Arc<RpcMetrics>,
    port: u16,
    access_log: bool,
}

impl MeterLayer {
    /// `access_log`: event-API requests are logged at INFO (else at DEBUG).
    pub(crate) fn new(
        stats: Arc<Stats>,
        metrics: Arc<RpcMetrics>,
        port: u16,
        access_log: bool,
    ) -> Self {
        Self {
            stats,
            metrics,
            port,
            access_log,
        }
    }
}

impl<S> Layer<S> for MeterLayer {
    type Service = Meter<S>;

    fn layer(&self, inner: S) -> Meter<S> {
        Meter {
            inner,
            stats: self.stats.clone(),
            metrics: self.metrics.clone(),
            port: self.port,
            access_log: self.access_log,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Meter<S> {
    inner: S,
    stats: Arc<Stats>,
    metrics: Arc<RpcMetrics>,
    port: u16,
    access_log: bool,
}

impl<S, B> Service<http::Request<B>> for Meter<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        // Only the event API is load; health probes and reflection would swamp the figures,
        // and so would the Stats calls that read them.
        let method = event_api_method(path);
        let metered = method.is_some_and(|method| method != "Stats");
        let counted = method.map(|method| (self.metrics.clone(), method_index(method)));
        let info = metered && self.access_log;
        // The name is copied only for a line that will be written.
        let rpc = (info || tracing::enabled!(tracing::Level::DEBUG))
            .then(|| path.rsplit('/').next().unwrap_or_default().to_owned());
        let guard = metered.then(|| self.stats.begin());
        // The caller's trace (the gateway sends its own), or a new one for a direct client:
        // every line logged while serving the call names it.
        let mut exported = None;
        let span = metered.then(|| {
            let given = req
                .headers()
                .get(TRACEPARENT)
                .and_then(|v| TraceParent::parse(v.as_bytes()));
            let trace = given.map_or_else(TraceParent::start, |given| given.child());
            exported = Started::now(trace, given.map(|g| g.span_id)).map(|started| RpcSpan {
                started,
                method: method_name(method.map_or(usize::MAX, method_index)),
            });
            tracing::info_span!("rpc", trace_id = %trace.trace_id)
        });
        let port = self.port;
        let started = Instant::now();
        let span = span.unwrap_or_else(tracing::Span::none);
        let response = span.in_scope(|| self.inner.call(req));
        let served = async move {
            let response = response.await?;
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from);
            let elapsed = started.elapsed();
            if let Some((metrics, method)) = counted {
                metrics.observe(method, code, elapsed);
            }
            if let Some(exported) = exported {
                exported.finish(code);
            }
            match rpc {
                Some(rpc) if info => {
                    tracing::info!(backend = port, rpc, ?code, ?elapsed, "request")
                }
                Some(rpc) => tracing::debug!(backend = port, rpc, ?code, ?elapsed, "request"),
                None => {}
            }
            let Some(guard) = guard else {
                return Ok(response);
            };
            let (parts, body) = response.into_parts();
            // The guard lives in the body, so it drops when the stream ends or is abandoned.
            let body = body.map_frame(move |frame| {
                let _ = &guard;
                frame
            });
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(body),
            ))
        };
        Box::pin(served.instrument(span))
    }
}

/// An rpc's span for OTLP export (built only while export is on).
struct RpcSpan {
    started: Started,
    method: &'static str,
}

impl RpcSpan {
    /// Exports it, ended now (at the response's headers: a stream's span is its opening).
    fn finish(self, code: tonic::Code) {
        use tonic::Code::*;
        // What OpenTelemetry's gRPC conventions count as a server's error.
        let error = matches!(
            code,
            Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
        );
        let attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", SERVICE_NAME),
            KeyValue::new("rpc.method", self.method),
            KeyValue::new("rpc.grpc.status_code", code as i64),
        ];
        let name = format!("{SERVICE_NAME}/{}", self.method);
        self.started.end(name.into(), attributes, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_count_while_alive() {
        let stats = Arc::new(Stats::default());
        let a = stats.begin();
        let b = stats.begin();
        let sub = stats.subscriber();
        assert_eq!(
            (stats.in_flight(), stats.requests(), stats.subscribers()),
            (2, 2, 1)
        );
        drop((a, sub));
        assert_eq!(
            (stats.in_flight(), stats.requests(), stats.subscribers()),
            (1, 2, 0)
        );
        drop(b);
        assert_eq!(stats.in_flight(), 0);
    }
}
