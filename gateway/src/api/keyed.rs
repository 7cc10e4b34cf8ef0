//! The client's `Idempotency-Key` on `POST /events` and `POST /publish`: read as an extractor
//! (a malformed key is our 400), and the answer's `Idempotent-Replayed: true` when the backend
//! replayed an earlier request's answer.

use std::convert::Infallible;

use axum::{
    extract::FromRequestParts,
    response::{IntoResponseParts, ResponseParts},
};
use eventsys::write_key::{IdempotencyKey, KEY_HEADER, REPLAYED_HEADER};
use http::{HeaderName, HeaderValue, request::Parts};
use utoipa::IntoParams;

use super::ApiError;
use crate::upstream::Outcome;

/// The key a request sent, if any.
pub(crate) struct KeyHeader(pub(crate) Option<IdempotencyKey>);

/// `Idempotency-Key`, as `KeyHeader` reads it (for the API description).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct KeyHeaderParam {
    /// Makes retrying this request safe: the first request's answer is kept with the key (per
    /// caller, 24 h by default) and a repeat with the same key and body gets it again, with
    /// `Idempotent-Replayed: true`. The same key with another body is 422; a repeat while the
    /// first is still in progress is 409.
    #[param(
        rename = "Idempotency-Key",
        pattern = "^[!-~]{1,255}$",
        nullable = false
    )]
    #[expect(dead_code, reason = "only described: `KeyHeader` reads the raw header")]
    idempotency_key: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for KeyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .headers
            .get(KEY_HEADER)
            .map(|value| IdempotencyKey::parse(value.as_bytes()).map_err(ApiError::bad_request))
            .transpose()
            .map(KeyHeader)
    }
}

impl IntoResponseParts for Outcome {
    type Error = Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Infallible> {
        if self == Outcome::Replayed {
            parts.headers_mut().insert(
                HeaderName::from_static(REPLAYED_HEADER),
                HeaderValue::from_static("true"),
            );
        }
        Ok(parts)
    }
}
