//! `serve` runs the gateway on a bound listener: starts the upstream, serves `http::app` until
//! shutdown, then ends SSE streams and drains in-flight requests.

use std::{
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use axum_server::{Handle, tls_rustls::RustlsConfig};
use eventsys::auth::Auth;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    http::{AppState, Metrics, Settings, app},
    upstream::{Upstream, UpstreamConfig},
};

/// Everything the gateway runs with.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub(crate) upstream: UpstreamConfig,
    pub(crate) settings: Settings,
    /// How long shutdown waits for in-flight requests before closing their connections.
    pub(crate) drain_timeout: Duration,
    /// Token mode or anonymous, and the policy.
    pub(crate) auth: Arc<Auth>,
    /// Certificate chain and key (PEM files) to serve HTTPS with; `None`: plain HTTP.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
}

/// Serves the gateway on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let upstream = Upstream::start(config.upstream, stop.clone());
    let state = AppState {
        upstream,
        auth: config.auth,
        settings: Arc::new(config.settings),
        metrics: Arc::new(Metrics::new()),
        started: Instant::now(),
        shutdown: stop.clone(),
    };

    let draining = stop.clone();
    let signalled = async move {
        shutdown.await;
        tracing::info!(%addr, "shutting down: ending streams, draining requests");
        draining.cancel();
    };
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(config.drain_timeout).await;
    };
    match config.tls {
        None => {
            tracing::info!(%addr, "listening");
            let server = axum::serve(listener, app(state)).with_graceful_shutdown(signalled);
            tokio::select! {
                served = server => served?,
                () = deadline => tracing::warn!(%addr, "drain deadline passed: closing open connections"),
            }
        }
        Some((cert, key)) => {
            // HTTP/2 and HTTP/1.1 by ALPN: browsers then multiplex their SSE streams over one
            // connection instead of six per origin.
            let tls = RustlsConfig::from_pem_file(&cert, &key).await?;
            let handle = Handle::new();
            let server = axum_server::from_tcp_rustls(listener.into_std()?, tls)?
                .handle(handle.clone())
                .serve(app(state).into_make_service());
            // Starts the graceful shutdown, then waits for the server to finish it.
            let graceful = async {
                signalled.await;
                handle.graceful_shutdown(Some(config.drain_timeout));
                std::future::pending::<()>().await;
            };
            tracing::info!(%addr, "listening (HTTPS)");
            tokio::select! {
                served = server => served?,
                () = graceful => {}
                () = deadline => tracing::warn!(%addr, "drain deadline passed: closing open connections"),
            }
        }
    }
    tracing::info!(%addr, "stopped");
    Ok(())
}
