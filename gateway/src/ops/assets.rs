//! Files compiled into the gateway and served as they are (the `/docs` and `/ui` pages), each
//! under a Content-Security-Policy that lets a page load nothing from outside the gateway.

use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode, header};
use tonic::Code;

use crate::api::ApiError;

/// One embedded file: its name in its folder, content type and bytes.
pub(crate) struct Asset {
    pub(crate) name: &'static str,
    pub(crate) content_type: &'static str,
    pub(crate) bytes: &'static [u8],
}

/// An embedded file, by its path under `gateway/assets/`.
macro_rules! asset {
    ($folder:literal, $name:literal, $content_type:literal) => {
        $crate::ops::assets::Asset {
            name: $name,
            content_type: $content_type,
            bytes: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/assets/",
                $folder,
                "/",
                $name
            )),
        }
    };
}
pub(crate) use asset;

/// The pages may load only what the gateway serves: a browser enforces "no CDN" for us. The
/// vendored libraries set inline styles and show `data:` images.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                      frame-ancestors 'none'";

pub(crate) fn serve(asset: &Asset) -> Response {
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
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        asset.bytes,
    )
        .into_response()
}

/// The file of `assets` named `name`, or the contract's 404.
pub(crate) fn find(assets: &[Asset], name: &str) -> Result<Response, ApiError> {
    assets
        .iter()
        .find(|asset| asset.name == name)
        .map(serve)
        .ok_or_else(|| ApiError::http(StatusCode::NOT_FOUND, Code::NotFound, "no such endpoint"))
}
