//! The backend that served a request, as a response part: the `x-backend` header clients read,
//! and the typed `Backend` extension the access log reads. The one place either is written.

use std::convert::Infallible;

use axum::response::{IntoResponseParts, ResponseParts};
use http::{HeaderName, HeaderValue};

use crate::upstream::Backend;

/// Response header naming the backend that served the request (exposed to browsers by CORS).
pub(crate) const SERVED_BY: HeaderName = HeaderName::from_static("x-backend");

impl IntoResponseParts for Backend {
    type Error = Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Infallible> {
        let name = HeaderValue::from_str(&self.to_string()).expect("a socket address is ASCII");
        parts.headers_mut().insert(SERVED_BY, name);
        parts.extensions_mut().insert(self);
        Ok(parts)
    }
}
