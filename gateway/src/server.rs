//! The gateway's HTTP surface: `app(state)` is the router of `../shared/API.md` (plus
//! `/metrics`), `serve` runs it on a bound listener until shutdown, then ends SSE streams and
//! drains in-flight requests.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{get, post},
};
use http::{HeaderName, Method, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowHeaders, Any, CorsLayer};

use crate::{
    endpoint::BACKEND_HEADER,
    error::ApiError,
    metrics::{self, Metrics},
    pool::{Pool, PoolConfig},
    rest, sse,
    state::{AppState, Settings},
    status,
};

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub pool: PoolConfig,
    pub settings: Settings,
    /// How long shutdown waits for in-flight requests before closing their connections.
    pub drain_timeout: Duration,
}

pub fn app(state: AppState) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([HeaderName::from_static(BACKEND_HEADER)]);
    Router::new()
        .route("/events", post(rest::create_event).get(rest::list_events))
        .route(
            "/events/{id}",
            get(rest::get_event)
                .put(rest::update_event)
                .delete(rest::delete_event),
        )
        .route("/publish", post(rest::publish))
        .route("/topic-events/{topic}", get(rest::topic_events))
        .route("/subscribe/{topic}", get(sse::subscribe))
        .route("/load", get(status::load))
        .route("/benchmark", get(status::benchmark))
        .route("/memstats", get(status::memstats))
        .route("/metrics", get(metrics::scrape))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .fallback(|| async {
            ApiError::http(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::http(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNIMPLEMENTED",
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(state.settings.body_limit))
        .layer(cors)
        .with_state(state)
}

/// Serves the gateway on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let pool = Pool::start(config.pool, stop.clone());
    let state = AppState {
        pool,
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
    tracing::info!(%addr, "listening");
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(signalled);
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(config.drain_timeout).await;
    };
    tokio::select! {
        served = server => served?,
        () = deadline => tracing::warn!(%addr, "drain deadline passed: closing open connections"),
    }
    tracing::info!(%addr, "stopped");
    Ok(())
}
