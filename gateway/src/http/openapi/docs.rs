//! `/docs`: Swagger UI rendering `/openapi.json`, its files compiled into the binary (vendored
//! from `swagger-ui-dist`, see `gateway/assets/swagger-ui/README.md`) so it needs no network.

use axum::{
    extract::Path,
    response::{IntoResponse, Response},
};
use http::{HeaderName, HeaderValue, StatusCode, header};

use crate::http::ApiError;

/// One embedded file: its name under `/docs/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            bytes: include_bytes!(concat!("../../../assets/swagger-ui/", $name)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    asset!("swagger-ui.css", "text/css; charset=utf-8"),
    asset!("init.js", "text/javascript; charset=utf-8"),
    asset!("favicon-32x32.png", "image/png"),
    asset!("LICENSE", "text/plain; charset=utf-8"),
    asset!("NOTICE", "text/plain; charset=utf-8"),
    asset!(
        "swagger-ui-bundle.js.LICENSE.txt",
        "text/plain; charset=utf-8"
    ),
];

const PAGE: Asset = asset!("index.html", "text/html; charset=utf-8");

/// The page may load only what the gateway serves: a browser enforces "no CDN" for us.
/// Swagger UI sets inline styles and shows data: images.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                      frame-ancestors 'none'";

fn serve(asset: &Asset) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        asset.bytes,
    )
        .into_response()
}

/// `GET /docs`.
pub(crate) async fn docs_page() -> Response {
    serve(&PAGE)
}

/// `GET /docs/{file}`.
pub(crate) async fn docs_asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|asset| asset.name == name)
        .map(serve)
        .ok_or_else(|| ApiError::http(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint"))
}
