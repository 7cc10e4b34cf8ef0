//! Serves one backend on a bound listener: the event API, `grpc.health.v1` and server
//! reflection (v1 and v1alpha; health NOT_SERVING while the store does not answer), until the
//! shutdown future completes; then it reports
//! NOT_SERVING, ends open streams and drains in-flight requests, closing whatever is still open
//! when the drain deadline passes.

use std::{future::Future, sync::Arc, time::Duration};

use eventsys::{auth::Auth, coalesce::Coalesce, v1::event_service_server::EventServiceServer};

use futures::TryStreamExt;
use tokio::{net::TcpListener, sync::oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Server, ServerTlsConfig, server::TcpIncoming},
};

use crate::{
    auth::Verify,
    feed::{Feed, FeedSettings},
    keyed::{self, KeyPolicy},
    metrics::RpcMetrics,
    mode::SaysMode,
    presence::PresencePolicy,
    readiness::{self, Readiness},
    retention,
    service::EventsApi,
    stats::{MeterLayer, Stats},
    store::{EventStore, Retention, TimedStore},
    subscribe::SharedSubscribe,
};

/// Concurrent HTTP/2 streams (calls, open subscriptions) one client connection may carry. A
/// gateway carries all its subscriptions to this backend over one connection, and caps them at
/// 10,000 itself.
const MAX_STREAMS_PER_CONNECTION: u32 = 10_000;
/// Unary calls one connection may have in progress; more wait (streams count only until
/// their response starts).
const CALLS_PER_CONNECTION: usize = 1024;
/// Longest a call may take, whatever the client's `grpc-timeout` (a shorter one wins). Also how
/// long an unanswered claim on an idempotency key holds it: its call is over by then.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long answers are kept for repeats of their idempotency key, unless configured.
const DEFAULT_KEY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// HTTP/2 pings find dead clients (a gateway whose machine vanished) and free their streams.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Largest reply: pages stop at 2 MiB, an event is at most ~1 MiB.
const MAX_REPLY: usize = 8 * 1024 * 1024;
/// Largest request: an event with the largest fields it may have.
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// A backend's dependencies and settings.
pub struct Backend {
    store: Arc<dyn EventStore>,
    feed: FeedSettings,
    drain_timeout: Duration,
    auth: Arc<Auth>,
    reflection: bool,
    tls: Option<ServerTlsConfig>,
    retention: Retention,
    access_log: bool,
    metrics: Option<TcpListener>,
    key_ttl: Duration,
    presence: PresencePolicy,
}

impl Backend {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            feed: FeedSettings::default(),
            drain_timeout: Duration::from_secs(10),
            auth: Arc::new(Auth::anonymous()),
            reflection: true,
            tls: None,
            retention: Retention::default(),
            access_log: false,
            metrics: None,
            key_ttl: DEFAULT_KEY_TTL,
            presence: PresencePolicy::default(),
        }
    }

    /// How long a gateway's members outlive its last presence report (default 15 s). Every
    /// backend sharing a store should be given the same.
    pub fn presence(mut self, policy: PresencePolicy) -> Self {
        self.presence = policy;
        self
    }

    /// How long a write's answer is kept for repeats of its `Idempotency-Key` (default 24 h).
    /// Every backend sharing a store should be given the same.
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.key_ttl = ttl;
        self
    }

    /// Serve Prometheus metrics at `/metrics` on this listener too.
    pub fn metrics(mut self, listener: TcpListener) -> Self {
        self.metrics = Some(listener);
        self
    }

    /// Log every event-API request at INFO (default: at DEBUG).
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// How much of each topic to keep (default: everything). Every backend sharing a store
    /// should be given the same.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Serve TLS (and, with a client CA in it, require client certificates: mTLS).
    pub fn tls(mut self, tls: ServerTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Token mode or anonymous (the default), and the policy.
    pub fn auth(mut self, auth: Arc<Auth>) -> Self {
        self.auth = auth;
        self
    }

    /// Whether server reflection is served (default: yes).
    pub fn reflection(mut self, on: bool) -> Self {
        self.reflection = on;
        self
    }

    /// How long shutdown waits for in-flight requests before closing their connections
    /// (default 10 s). Streams this backend owns end at once; this bounds clients' own long
    /// calls, such as a health `Watch`.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Subscriber buffering and lag limit (default: 256 queued events, 10,000 behind).
    pub fn feed(mut self, settings: FeedSettings) -> Self {
        self.feed = settings;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read the listener's address: {0}")]
    Listener(#[source] std::io::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `backend` on `listener` until `shutdown` completes, then drains and returns.
pub async fn serve(
    listener: TcpListener,
    backend: Backend,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    let drain_timeout = backend.drain_timeout;
    let stats = Arc::new(Stats::default());
    let streams = CancellationToken::new();
    let metrics = Arc::new(RpcMetrics::new());
    let store: Arc<dyn EventStore> =
        Arc::new(TimedStore::new(backend.store, &metrics.store_latency()));
    if let Some(listener) = backend.metrics {
        let stopped = streams.clone().cancelled_owned();
        tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            stats.clone(),
            stopped,
        ));
    }
    let feed = Feed::new(
        store.clone(),
        stats.clone(),
        backend.feed,
        streams.clone(),
        metrics.feed_delay(),
    );

    tokio::spawn(retention::run(
        store.clone(),
        backend.retention,
        stats.clone(),
        streams.clone(),
    ));

    tokio::spawn(keyed::purge(store.clone(), streams.clone()));
    tokio::spawn(crate::presence::expire(
        store.clone(),
        backend.presence,
        streams.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::new(health).await;
    tokio::spawn(readiness::probe(
        readiness.clone(),
        {
            let store = store.clone();
            move || {
                let store = store.clone();
                async move { store.ping().await }
            }
        },
        {
            let store = store.clone();
            move || store.commits_every_write()
        },
        streams.clone(),
    ));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(eventsys::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = if backend.reflection {
        (
            Some(reflection().build_v1()?),
            Some(reflection().build_v1alpha()?),
        )
    } else {
        (None, None)
    };

    let (draining_tx, draining) = oneshot::channel::<()>();
    let drain = async move {
        shutdown.await;
        tracing::info!(%addr, "shutting down: NOT_SERVING, ending streams, draining requests");
        readiness.leave().await;
        streams.cancel();
        let _ = draining_tx.send(());
    };
    let deadline = async move {
        match draining.await {
            Ok(()) => tokio::time::sleep(drain_timeout).await,
            // The server ended before shutdown began; its own result is what matters.
            Err(_) => std::future::pending().await,
        }
    };

    let api = Arc::new(EventsApi::new(
        store,
        stats.clone(),
        feed,
        backend.auth.clone(),
        KeyPolicy {
            ttl: backend.key_ttl,
            lease: CALL_TIMEOUT,
        },
        backend.presence,
    ));
    tracing::info!(%addr, open_files = ?eventsys::process::open_file_limit(), "listening");
    let mut builder = Server::builder();
    if let Some(tls) = backend.tls {
        builder = builder.tls_config(tls)?;
    }
    // Responses written by many calls at once leave in one write per scheduler round.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map_ok(Coalesce::new);
    let server = builder
        // A gateway carries every subscription to this backend over one HTTP/2 connection;
        // hyper's default of 200 streams per connection would cap subscribers at 200.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(CALLS_PER_CONNECTION)
        .timeout(CALL_TIMEOUT)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .layer(MeterLayer::new(
            stats.clone(),
            metrics.clone(),
            addr.port(),
            backend.access_log,
        ))
        .add_service(SaysMode::new(health_service, backend.auth.token_mode()))
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            SharedSubscribe::new(
                EventServiceServer::from_arc(api.clone())
                    .max_encoding_message_size(MAX_REPLY)
                    .max_decoding_message_size(MAX_REQUEST),
                api,
                MAX_REQUEST,
            ),
            Verify(backend.auth),
        ))
        .serve_with_incoming_shutdown(incoming, drain);
    tokio::select! {
        served = server => served?,
        () = deadline => tracing::warn!(%addr, "drain deadline passed: closing open connections"),
    }
    tracing::info!(%addr, "stopped");
    Ok(())
}
