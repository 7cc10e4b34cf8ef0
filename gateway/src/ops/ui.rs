//! `/ui`: the live dashboard. The page and its files are compiled into the gateway (uPlot
//! vendored from npm, licence kept), and everything it shows comes from one SSE stream,
//! `/ui/stats`: a frame a second (and one at once whenever a backend goes in or out).

mod stats;
mod traffic;

use axum::{
    Json,
    extract::{Path, State},
    response::Response,
};
use serde::Serialize;

pub(crate) use stats::stats;

use super::assets::{self, Asset, asset};
use crate::{api::ApiError, http::AppState};

const ASSETS: &[Asset] = &[
    asset!("ui", "app.js", "text/javascript; charset=utf-8"),
    asset!("ui", "app.css", "text/css; charset=utf-8"),
    asset!("ui", "uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    asset!("ui", "uPlot.min.css", "text/css; charset=utf-8"),
    asset!("ui", "uPlot-LICENSE", "text/plain; charset=utf-8"),
];

const PAGE: Asset = asset!("ui", "index.html", "text/html; charset=utf-8");

/// `GET /ui`.
pub(crate) async fn page() -> Response {
    assets::serve(&PAGE)
}

/// `GET /ui/{file}`.
pub(crate) async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    assets::find(ASSETS, &name)
}

/// What the page needs before it connects.
#[derive(Debug, Serialize)]
pub(crate) struct Config {
    /// Whether it must ask for a token.
    token_mode: bool,
}

/// `GET /ui/config`.
pub(crate) async fn config(State(state): State<AppState>) -> Json<Config> {
    Json(Config {
        token_mode: state.auth.token_mode(),
    })
}
