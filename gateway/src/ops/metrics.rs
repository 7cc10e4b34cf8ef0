//! Request metrics: the counters `track` feeds, and `/metrics` in Prometheus text format, with
//! the balancer's view of each backend.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, header::CONTENT_TYPE};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::upstream::BackendSnapshot;
use crate::{
    api::{ApiError, Credentials},
    http::AppState,
    middleware::Limiters,
};

pub(crate) struct Metrics {
    registry: Registry,
    pub(super) requests: IntCounterVec,
    pub(super) latency: HistogramVec,
    backend_healthy: IntGaugeVec,
    backend_in_flight: IntGaugeVec,
    backend_cost: GaugeVec,
    backend_calls: IntCounterVec,
    backend_unreachable: IntCounterVec,
    sse_resumes: IntCounterVec,
    connections_open: IntGauge,
    connections_refused: IntCounter,
    sse_topics: IntGauge,
    sse_streams: IntGauge,
    refusals: IntCounterVec,
    presence_members: IntGauge,
    presence_reports: IntCounterVec,
    rendering: std::sync::Mutex<()>,
    in_flight: AtomicI64,
    total: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gateway_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "gateway_http_request_duration_seconds",
                "Time to the response head (the stream's start for SSE)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["backend"]).expect("valid metric")
        };
        let backend_healthy = gauge(
            "gateway_backend_healthy",
            "1 when the balancer holds the backend",
        );
        let backend_in_flight = gauge(
            "gateway_backend_in_flight",
            "Calls sent to the backend and not finished, open streams included",
        );
        // Counts since the backend was discovered: counters (a rediscovered backend starts
        // again from 0, which Prometheus reads as a reset).
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["backend"]).expect("valid metric")
        };
        let backend_calls = counter(
            "gateway_backend_calls_total",
            "Calls sent to the backend since it was discovered",
        );
        let backend_unreachable = counter(
            "gateway_backend_unreachable_calls_total",
            "Calls that found the backend unreachable since it was discovered",
        );
        let backend_cost = GaugeVec::new(
            Opts::new(
                "gateway_backend_peak_ewma_cost",
                "PeakEwma cost the balancer last computed: latency estimate in ns x (pending + 1)",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let sse_resumes = IntCounterVec::new(
            Opts::new(
                "gateway_sse_resumes_total",
                "SSE streams taken up again from their last seq: slow_client (a client fell \
                 behind its topic's ring and caught up from the store) or backend_lost (a \
                 topic's backend stream moved to another backend)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let connections_open =
            IntGauge::new("gateway_connections_open", "Client connections open now")
                .expect("valid metric");
        let connections_refused = IntCounter::new(
            "gateway_connections_refused_total",
            "Client connections closed at once because the connection cap was reached",
        )
        .expect("valid metric");
        let sse_topics = IntGauge::new(
            "gateway_sse_topics",
            "Topics with SSE clients here: one backend stream each",
        )
        .expect("valid metric");
        let sse_streams =
            IntGauge::new("gateway_sse_streams", "SSE streams open now").expect("valid metric");
        let refusals = IntCounterVec::new(
            Opts::new(
                "gateway_limit_refusals_total",
                "Requests and streams refused with 429, by limit: rate, client_streams, \
                 total_streams",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let presence_members = IntGauge::new(
            "gateway_presence_members",
            "(topic, subject) members this gateway keeps for presence (anonymous streams are \
             one member per topic)",
        )
        .expect("valid metric");
        let presence_reports = IntCounterVec::new(
            Opts::new(
                "gateway_presence_reports_total",
                "Presence reports sent to the backends, by outcome: ok, resync (the backends \
                 asked for a full one) or failed",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(presence_members.clone()),
            Box::new(presence_reports.clone()),
            Box::new(sse_topics.clone()),
            Box::new(sse_streams.clone()),
            Box::new(refusals.clone()),
            Box::new(eventsys::process::ProcessCollector::new()),
            Box::new(latency.clone()),
            Box::new(backend_healthy.clone()),
            Box::new(backend_in_flight.clone()),
            Box::new(backend_calls.clone()),
            Box::new(backend_unreachable.clone()),
            Box::new(backend_cost.clone()),
            Box::new(sse_resumes.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_refused.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            latency,
            backend_healthy,
            backend_in_flight,
            backend_cost,
            backend_calls,
            backend_unreachable,
            sse_resumes,
            connections_open,
            connections_refused,
            sse_topics,
            sse_streams,
            refusals,
            presence_members,
            presence_reports,
            rendering: std::sync::Mutex::new(()),
            in_flight: AtomicI64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// A presence report went out (`outcome`: ok, resync, failed); the gateway keeps
    /// `members` members.
    pub(crate) fn presence_reported(&self, outcome: &str, members: usize) {
        self.presence_reports.with_label_values(&[outcome]).inc();
        self.presence_members
            .set(i64::try_from(members).unwrap_or(i64::MAX));
    }

    /// Counts an SSE stream taken up again from its last seq, and why.
    pub(crate) fn sse_resumed(&self, reason: &str) {
        self.sse_resumes.with_label_values(&[reason]).inc();
    }

    /// Counts a request no route took (404) or no method of its route took (405).
    /// A routed API request begins (`Track`).
    pub(crate) fn request_started(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A routed API request ended, answered or not.
    pub(crate) fn request_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A routed API request's answer: counted by route, method and status, and timed.
    pub(crate) fn answered(
        &self,
        route: &str,
        method: &http::Method,
        status: http::StatusCode,
        elapsed: std::time::Duration,
    ) {
        self.requests
            .with_label_values(&[route, method_label(method), status.as_str()])
            .inc();
        self.latency
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn unrouted(&self, method: &http::Method, status: http::StatusCode) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.requests
            .with_label_values(&["unmatched", method_label(method), status.as_str()])
            .inc();
    }

    /// Counts a connection refused at the connection cap.
    pub(crate) fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts an open connection until the returned guard drops.
    pub(crate) fn connection_opened(&self) -> OpenConnection {
        self.connections_open.inc();
        OpenConnection(self.connections_open.clone())
    }

    /// HTTP requests being handled now.
    pub(crate) fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// HTTP requests received since start.
    pub(crate) fn total_requests(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition, with the backends' figures, the number of topic hubs
    /// and the limiters' counts as given.
    pub(crate) fn render(
        &self,
        backends: &[BackendSnapshot],
        sse_topics: usize,
        limits: &Limiters,
    ) -> String {
        self.sse_topics.set(sse_topics as i64);
        self.sse_streams.set(limits.open_streams() as i64);
        // The per-backend series are rebuilt from the snapshots (a backend gone is dropped),
        // their counters by adding what is new: one scrape at a time, or two would add the
        // counts twice.
        let _one = self
            .rendering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for gauge in [&self.backend_healthy, &self.backend_in_flight] {
            gauge.reset();
        }
        self.backend_calls.reset();
        self.backend_unreachable.reset();
        self.backend_cost.reset();
        self.refusals.reset();
        for (why, count) in limits.refusals() {
            self.refusals
                .with_label_values(&[why.label()])
                .inc_by(count);
        }
        for backend in backends {
            let label = [backend.backend.to_string()];
            let label = [label[0].as_str()];
            self.backend_healthy
                .with_label_values(&label)
                .set(i64::from(backend.healthy()));
            self.backend_in_flight
                .with_label_values(&label)
                .set(backend.in_flight as i64);
            self.backend_calls
                .with_label_values(&label)
                .inc_by(backend.attempts);
            self.backend_unreachable
                .with_label_values(&label)
                .inc_by(backend.failures);
            self.backend_cost
                .with_label_values(&label)
                .set(backend.cost);
        }
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// `GET /metrics` → the Prometheus text exposition of the gateway.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics of the gateway",
    responses((status = 200, description = "Prometheus text format 0.0.4",
        content_type = "text/plain; version=0.0.4", body = String)),
    security((), ("bearer" = []), ("access_token" = [])),
)]
pub(crate) async fn scrape(
    State(state): State<AppState>,
    who: Credentials,
) -> Result<Response, ApiError> {
    who.may_operate(&state)?;
    let body = state.metrics.render(
        &state.upstream.backends(),
        state.hubs.count(),
        &state.limiters,
    );
    let mut response = body.into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// A method as a label: the standard ones by name, anything else as one value (a client
/// choosing methods must not choose label values).
fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("OTHER", |known| known.as_str())
}

/// An open connection in `gateway_connections_open`.
pub(crate) struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
