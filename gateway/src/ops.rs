//! What operators and tools read: the probes (`health`), Prometheus `/metrics` and the
//! gateway's own figures (`metrics`), the old service's stats endpoints (`legacy`), the OpenAPI
//! document and `/docs` (`openapi`), and the dashboard at `/ui` (`ui`), whose files, like
//! Swagger UI's, are compiled in (`assets`).

mod assets;
mod health;
mod legacy;
mod metrics;
mod openapi;
mod ui;

use axum::routing::get;
use utoipa_axum::{router::OpenApiRouter, routes};

pub(crate) use metrics::Metrics;

use crate::http::AppState;

/// The figures that answer like API requests (tracked, with a deadline): the legacy stats and
/// `/metrics`, registered with their OpenAPI rows.
pub(crate) fn figures() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(legacy::load))
        .routes(routes!(legacy::benchmark))
        .routes(routes!(legacy::memstats))
        .routes(routes!(metrics::scrape))
}

/// The probes (described) and the API's description and dashboard (not API routes
/// themselves): no credentials, so no rate limit, and no tracking.
pub(crate) fn probes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .route("/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::docs_page))
        .route("/docs/{file}", get(openapi::docs_asset))
        // The dashboard: static files open to all, its stream behind the caller's token.
        .route("/ui", get(ui::page))
        .route("/ui/config", get(ui::config))
        .route("/ui/stats", get(ui::stats))
        .route("/ui/{file}", get(ui::asset))
}
