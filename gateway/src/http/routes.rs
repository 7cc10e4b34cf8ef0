//! `app(state)`: every route of the contract and the probes, the JSON fallbacks for unknown
//! routes and methods, the guards, the body limit, CORS, the one deadline of a REST request,
//! panics as JSON 500s, and the metrics middleware on routed API requests.

use std::any::Any;

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    response::{IntoResponse, Response},
};
use http::{Method, StatusCode};
use tonic::Code;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa_axum::router::OpenApiRouter;

use super::AppState;
use crate::{
    api::{self, ApiError},
    grpc,
    middleware::{self, DeadlineLayer, GuardLayer, TracedLayer, TrackLayer},
    ops, sse,
};

/// The contract's routes that answer once: REST, the legacy figures, `/metrics`.
fn requests() -> OpenApiRouter<AppState> {
    api::routes().merge(ops::figures())
}

/// Every route, with the OpenAPI rows of those the contract describes: what `/openapi.json`
/// is built from, so what is served is what is described.
pub(crate) fn described() -> OpenApiRouter<AppState> {
    requests().merge(sse::routes()).merge(ops::probes())
}

pub(crate) fn app(state: AppState) -> Router {
    // Each `layer` call on a router boxes the service and its future for every request, so the
    // stacks below are composed with `ServiceBuilder` and applied once each. Requests with an
    // answer to wait for share one deadline; streams do not.
    let requests = Router::from(requests()).route_layer(
        ServiceBuilder::new()
            .layer(TrackLayer(state.clone()))
            .layer(DeadlineLayer(state.settings.request_timeout)),
    );
    let streams = Router::from(sse::routes()).route_layer(TrackLayer(state.clone()));
    // Probes and the API's description: no credentials (so no rate limit) and no tracking
    // (not API traffic).
    let probes = Router::from(ops::probes());
    // Outermost first: every request is traced (and gets its request id) before anything can
    // answer it; CORS answers preflights before the guards; panics become JSON 500s.
    let outer = ServiceBuilder::new()
        .layer(TracedLayer)
        .layer(middleware::cors(&state.settings.browsers))
        .layer(DefaultBodyLimit::max(state.settings.body_limit))
        .layer(GuardLayer(state.settings.clone()))
        .map_response(IntoResponse::into_response)
        .layer(CatchPanicLayer::custom(panicked));
    let rest = Router::new()
        .merge(requests)
        .merge(streams)
        .merge(probes)
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .with_state(state.clone());
    // gRPC clients on the same port: `/events.v1.EventService/*`, health and reflection.
    rest.merge(grpc::router(state)).layer(outer)
}

async fn no_route(State(state): State<AppState>, method: Method) -> ApiError {
    state.metrics.unrouted(&method, StatusCode::NOT_FOUND);
    ApiError::http(StatusCode::NOT_FOUND, Code::NotFound, "no such endpoint")
}

async fn no_method(State(state): State<AppState>, method: Method) -> ApiError {
    state
        .metrics
        .unrouted(&method, StatusCode::METHOD_NOT_ALLOWED);
    ApiError::http(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unimplemented,
        "method not allowed on this endpoint",
    )
}

/// A handler that panics answers 500 like any internal error; the process keeps serving.
fn panicked(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("?");
    tracing::error!(panic = what, "handler panicked");
    ApiError::new(Code::Internal, "internal error").into_response()
}
