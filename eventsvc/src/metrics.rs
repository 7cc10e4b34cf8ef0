//! The backend's Prometheus metrics, served over HTTP on a listener of their own
//! (`--metrics-addr`): event-API calls by method and code, their latency, calls in flight, open
//! subscriptions, catch-ups and lag closures, retention's deletions, and the process's CPU,
//! memory and descriptors.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::stats::Stats;

/// The event API's methods: the only `method` label values (anything else is `other`), so a
/// client cannot grow the label set with made-up paths.
const METHODS: [&str; 11] = [
    "CreateEvent",
    "GetEvent",
    "ListEvents",
    "ListAllEvents",
    "UpdateEvent",
    "DeleteEvent",
    "Publish",
    "ListTopicEvents",
    "Subscribe",
    "Stats",
    "other",
];
/// gRPC status codes 0–16.
const CODES: usize = 17;

pub(crate) struct RpcMetrics {
    registry: Registry,
    /// Resolved once per (method, code) on first use: the hot path does no label lookup.
    calls: Vec<[OnceLock<IntCounter>; CODES]>,
    calls_vec: IntCounterVec,
    latency: Vec<Histogram>,
    in_flight: IntGauge,
    subscriptions: IntGauge,
    feed_delay: Histogram,
    catch_ups: IntCounter,
    too_far_behind: IntCounter,
    dropped_by_retention: IntCounter,
    replays: IntCounter,
    store_latency: HistogramVec,
    /// One scrape at a time: counters are brought up to date by adding what is new.
    rendering: std::sync::Mutex<()>,
}

/// The label index of an event-API method name (from the request path).
pub(crate) fn method_index(method: &str) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

/// The method name of a label index (`other` beyond the contract's methods).
pub(crate) fn method_name(index: usize) -> &'static str {
    METHODS[index.min(METHODS.len() - 1)]
}

impl RpcMetrics {
    pub(crate) fn new() -> RpcMetrics {
        let registry = Registry::new();
        let calls_vec = IntCounterVec::new(
            Opts::new(
                "eventsvc_rpcs_total",
                "Event-API calls finished, by method and gRPC code",
            ),
            &["method", "code"],
        )
        .expect("valid metric");
        let latency_vec = HistogramVec::new(
            HistogramOpts::new(
                "eventsvc_rpc_duration_seconds",
                "Time to the response head, by method (a stream's start for Subscribe)",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
            &["method"],
        )
        .expect("valid metric");
        let store_latency = HistogramVec::new(
            HistogramOpts::new(
                "eventsvc_store_duration_seconds",
                "Store calls by operation, errors included",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5,
            ]),
            &["operation"],
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let in_flight = gauge(
            "eventsvc_rpcs_in_flight",
            "Event-API calls being served, open Subscribe streams included",
        );
        let subscriptions = gauge("eventsvc_subscriptions", "Subscribe streams open now");
        let feed_delay = Histogram::with_opts(
            HistogramOpts::new(
                "eventsvc_feed_delay_seconds",
                "From an event's publish (its time) to its hand-over to this backend's \
                 subscribers: the change feed's lag",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let catch_ups = counter(
            "eventsvc_catch_ups_total",
            "Subscribers that fell behind their topic's ring and read on from the store",
        );
        let too_far_behind = counter(
            "eventsvc_subscribers_too_far_behind_total",
            "Subscribers closed for being more than --max-subscriber-lag events behind",
        );
        let dropped_by_retention = counter(
            "eventsvc_retention_dropped_events_total",
            "Events the retention policy dropped",
        );
        let replays = counter(
            "eventsvc_idempotent_replays_total",
            "Creates and publishes answered with the answer an earlier request with the same \
             Idempotency-Key got",
        );
        for collector in [
            Box::new(calls_vec.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency_vec.clone()),
            Box::new(store_latency.clone()),
            Box::new(in_flight.clone()),
            Box::new(subscriptions.clone()),
            Box::new(feed_delay.clone()),
            Box::new(catch_ups.clone()),
            Box::new(too_far_behind.clone()),
            Box::new(dropped_by_retention.clone()),
            Box::new(replays.clone()),
            Box::new(eventsys::process::ProcessCollector::new()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        RpcMetrics {
            registry,
            calls: METHODS.iter().map(|_| Default::default()).collect(),
            calls_vec,
            latency: METHODS
                .iter()
                .map(|m| latency_vec.with_label_values(&[*m]))
                .collect(),
            in_flight,
            subscriptions,
            feed_delay,
            catch_ups,
            too_far_behind,
            dropped_by_retention,
            replays,
            store_latency,
            rendering: std::sync::Mutex::new(()),
        }
    }

    /// The store's latency by operation, which `TimedStore` observes.
    pub(crate) fn store_latency(&self) -> HistogramVec {
        self.store_latency.clone()
    }

    /// The change feed's lag histogram, which the feed observes.
    pub(crate) fn feed_delay(&self) -> Histogram {
        self.feed_delay.clone()
    }

    /// One finished call of the method at `index` (see [`method_index`]).
    pub(crate) fn observe(&self, index: usize, code: tonic::Code, elapsed: Duration) {
        let code = (code as usize).min(CODES - 1);
        self.calls[index][code]
            .get_or_init(|| {
                self.calls_vec.with_label_values(&[
                    METHODS[index],
                    &format!("{:?}", tonic::Code::from(code as i32)),
                ])
            })
            .inc();
        self.latency[index].observe(elapsed.as_secs_f64());
    }

    fn render(&self, stats: &Stats) -> String {
        let _one = self
            .rendering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.in_flight.set(stats.in_flight() as i64);
        self.subscriptions.set(stats.subscribers() as i64);
        // Counts kept by the feed, the retention task and the event API, brought up to date.
        let counters = [
            &self.catch_ups,
            &self.too_far_behind,
            &self.dropped_by_retention,
            &self.replays,
        ];
        for (counter, now) in counters.into_iter().zip(stats.counts()) {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<RpcMetrics>,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    async fn scrape(
        State((metrics, stats)): State<(Arc<RpcMetrics>, Arc<Stats>)>,
    ) -> impl IntoResponse {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics.render(&stats),
        )
    }
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state((metrics, stats));
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %err, "metrics endpoint failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        let metrics = RpcMetrics::new();
        let ms = Duration::from_millis(1);
        metrics.observe(method_index("GetEvent"), tonic::Code::Ok, ms);
        metrics.observe(method_index("Nonsense1"), tonic::Code::Unimplemented, ms);
        metrics.observe(method_index("Nonsense2"), tonic::Code::Unimplemented, ms);
        let text = metrics.render(&Stats::default());
        assert!(
            text.contains("eventsvc_rpcs_total{code=\"Ok\",method=\"GetEvent\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("eventsvc_rpcs_total{code=\"Unimplemented\",method=\"other\"} 2"),
            "{text}"
        );
    }
}
