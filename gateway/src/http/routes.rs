//! `app(state)`: every route of the contract, the JSON fallbacks for unknown routes and
//! methods, the body limit, CORS, and the metrics middleware on routed requests.

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{get, post},
};
use http::{Method, StatusCode};
use tower_http::cors::{AllowHeaders, Any, CorsLayer};

use super::{ApiError, AppState, legacy, metrics, rest, served::SERVED_BY, sse};

pub(crate) fn app(state: AppState) -> Router {
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
        .expose_headers([SERVED_BY]);
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
        .route("/load", get(legacy::load))
        .route("/benchmark", get(legacy::benchmark))
        .route("/memstats", get(legacy::memstats))
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
