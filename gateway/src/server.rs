//! `serve` runs the gateway on a bound listener: starts the upstream, serves `http::app` through
//! our accept loop until shutdown, then ends SSE streams and drains in-flight requests.

mod accept;
mod head;
mod throttle;
mod tls;

use std::{
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use eventsys::auth::Auth;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub(crate) use accept::ConnectionLimits;

use crate::{
    http::{AppState, Settings, Shared, app},
    middleware::Limiters,
    ops::Metrics,
    sse::Hubs,
    upstream::{Upstream, UpstreamConfig},
};

/// Everything the gateway runs with.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub(crate) upstream: UpstreamConfig,
    pub(crate) settings: Settings,
    pub(crate) connections: ConnectionLimits,
    /// How long shutdown waits for in-flight requests before closing their connections.
    pub(crate) drain_timeout: Duration,
    /// How long the gateway serves on, not ready, after the signal and before draining.
    pub(crate) shutdown_delay: Duration,
    /// Token mode or anonymous, and the policy.
    pub(crate) auth: Arc<Auth>,
    /// Certificate chain and key (PEM files) to serve HTTPS with; `None`: plain HTTP.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    /// What the gateway's own calls carry in token mode.
    pub(crate) service: crate::presence::ServiceToken,
}

/// What every handler shares, over an upstream started here: its tasks, and every open stream,
/// end when `stop` is cancelled; `leaving` marks the gateway not ready.
pub(crate) fn state(
    upstream: UpstreamConfig,
    settings: Settings,
    auth: Arc<Auth>,
    service: crate::presence::ServiceToken,
    stop: CancellationToken,
    leaving: CancellationToken,
) -> AppState {
    let upstream = Upstream::start(upstream, stop.clone());
    let settings = Arc::new(settings);
    AppState::new(Shared {
        upstream,
        auth,
        limiters: Arc::new(Limiters::new(settings.limits)),
        hubs: Hubs::new(settings.sse_buffer),
        presences: crate::presence::Presences::new(),
        service: crate::presence::ServiceTokens::new(service),
        settings,
        metrics: Arc::new(Metrics::new()),
        started: Instant::now(),
        shutdown: stop,
        leaving,
    })
}

/// Serves the gateway on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None => None,
    };
    let stop = CancellationToken::new();
    let leaving = CancellationToken::new();
    let state = state(
        config.upstream,
        config.settings.with_listen_addr(addr),
        config.auth,
        config.service,
        stop.clone(),
        leaving.clone(),
    );
    let metrics = state.metrics.clone();
    tokio::spawn(crate::presence::report(
        state.clone(),
        state.settings.presence_interval,
        state.settings.presence_debounce,
    ));
    let draining = stop.clone();
    let delay = config.shutdown_delay;
    let signalled = async move {
        shutdown.await;
        leaving.cancel();
        if !delay.is_zero() {
            tracing::info!(%addr, ?delay, "shutting down: not ready, serving on for the delay");
            tokio::time::sleep(delay).await;
        }
        tracing::info!(%addr, "shutting down: ending streams, draining requests");
        draining.cancel();
    };
    tracing::info!(
        %addr,
        tls = tls.is_some(),
        max_connections = config.connections.max_connections,
        open_files = ?eventsys::process::open_file_limit(),
        "listening"
    );
    // Polled with the server, not spawned: nothing may keep the signal from stopping it.
    let served = accept::serve(
        listener,
        tls,
        app(state),
        config.connections,
        metrics,
        stop,
        config.drain_timeout,
    );
    tokio::join!(signalled, served);
    tracing::info!(%addr, "stopped");
    Ok(())
}
