//! The backend that served a request, as a response part: the `x-backend` header clients read,
//! and the typed `Backend` extension the access log reads; on a REST answer and on a gRPC reply
//! through the front door alike. The one place either is written.

use std::convert::Infallible;

use axum::response::{IntoResponseParts, ResponseParts};
use http::{HeaderName, HeaderValue};
use tonic::metadata::MetadataValue;

use crate::upstream::Backend;

/// Response header naming the backend that served the request (exposed to browsers by CORS).
pub(crate) const SERVED_BY: HeaderName = HeaderName::from_static(SERVED_BY_NAME);
const SERVED_BY_NAME: &str = "x-backend";

impl IntoResponseParts for Backend {
    type Error = Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Infallible> {
        let name = HeaderValue::from_str(&self.to_string()).expect("a socket address is ASCII");
        parts.headers_mut().insert(SERVED_BY, name);
        parts.extensions_mut().insert(self);
        Ok(parts)
    }
}

/// The same on a gRPC reply (tonic turns its metadata into the headers, and passes its
/// extensions on to the layers outside).
pub(crate) fn mark<T>(response: &mut tonic::Response<T>, backend: Option<Backend>) {
    let Some(backend) = backend else { return };
    let name = MetadataValue::try_from(backend.to_string()).expect("a socket address is ASCII");
    response.metadata_mut().insert(SERVED_BY_NAME, name);
    response.extensions_mut().insert(backend);
}
