//! `/docs`: Swagger UI rendering `/openapi.json`, its files compiled into the binary (vendored
//! from `swagger-ui-dist`, see `gateway/assets/swagger-ui/README.md`) so it needs no network.

use axum::{extract::Path, response::Response};

use crate::{
    api::ApiError,
    ops::assets::{self, Asset, asset},
};

const ASSETS: &[Asset] = &[
    asset!(
        "swagger-ui",
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("swagger-ui", "swagger-ui.css", "text/css; charset=utf-8"),
    asset!("swagger-ui", "init.js", "text/javascript; charset=utf-8"),
    asset!("swagger-ui", "favicon-32x32.png", "image/png"),
    asset!("swagger-ui", "LICENSE", "text/plain; charset=utf-8"),
    asset!("swagger-ui", "NOTICE", "text/plain; charset=utf-8"),
    asset!(
        "swagger-ui",
        "swagger-ui-bundle.js.LICENSE.txt",
        "text/plain; charset=utf-8"
    ),
];

const PAGE: Asset = asset!("swagger-ui", "index.html", "text/html; charset=utf-8");

/// `GET /docs`.
pub(crate) async fn docs_page() -> Response {
    assets::serve(&PAGE)
}

/// `GET /docs/{file}`.
pub(crate) async fn docs_asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    assets::find(ASSETS, &name)
}
