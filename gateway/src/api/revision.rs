//! Revisions over HTTP: the `ETag: "<revision>"` of an answer that carries an event, and the
//! `If-Match` of `PUT` and `DELETE /events/{id}`, read as an extractor (RFC 9110's strong
//! comparison: a tag that names no revision never holds) and sent to the backend as the
//! request's precondition fields. The backend checks it in
//! the write's transaction; its refusal comes back as 412 (`error`).

use std::convert::Infallible;

use axum::{
    extract::FromRequestParts,
    response::{IntoResponseParts, ResponseParts},
};
use http::{HeaderValue, header, request::Parts};
use utoipa::IntoParams;

use super::ApiError;

/// What a request's `If-Match` requires of the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfMatch {
    /// No `If-Match`: the write applies whatever the revision (old clients).
    Absent,
    /// `If-Match: *`: the event must exist (412 otherwise, not 404).
    Exists,
    /// `If-Match: "<revision>"`.
    Revision(u64),
    /// A value that names no revision of ours (a weak tag, another server's tag, no tag at
    /// all): as RFC 9110 says, such a condition is false, so the write is 412 (with the
    /// event's revision, which the backend reads).
    Never,
}

impl IfMatch {
    /// The request fields it travels in: `(if_revision, if_exists)`. `Never` is the largest
    /// revision, which no event reaches.
    pub(crate) fn fields(self) -> (u64, bool) {
        match self {
            IfMatch::Absent => (0, false),
            IfMatch::Exists => (0, true),
            IfMatch::Revision(revision) => (revision, true),
            IfMatch::Never => (u64::MAX, true),
        }
    }

    /// The header's value as sent: `*`, or a comma-separated list of entity tags of which the
    /// strong ones of a revision count; `None` when they name more than one revision (which
    /// one write cannot require).
    fn parse(value: &[u8]) -> Option<IfMatch> {
        let Ok(value) = std::str::from_utf8(value) else {
            return Some(IfMatch::Never);
        };
        if value.trim() == "*" {
            return Some(IfMatch::Exists);
        }
        let mut revisions = value.split(',').filter_map(|tag| {
            let digits = tag.trim().strip_prefix('"')?.strip_suffix('"')?;
            let plain = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
            plain.then(|| digits.parse::<u64>().ok()).flatten()
        });
        match (revisions.next(), revisions.next()) {
            (None, _) => Some(IfMatch::Never),
            // Revisions start at 1 (and `u64::MAX` stands for none).
            (Some(0 | u64::MAX), None) => Some(IfMatch::Never),
            (Some(revision), None) => Some(IfMatch::Revision(revision)),
            (Some(_), Some(_)) => None,
        }
    }
}

/// `If-Match`, as `IfMatch` reads it (for the API description).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct IfMatchParam {
    /// Applies the change only if the event is still at this revision (its `ETag`, quoted:
    /// `"3"`), or, given `*`, only if it exists; otherwise 412 with the event's revision. A
    /// value naming no revision (a weak tag `W/"3"`, any other text) never holds: 412. A list
    /// naming two revisions or more is 400.
    #[param(rename = "If-Match", nullable = false)]
    #[expect(dead_code, reason = "only described: `IfMatch` reads the raw header")]
    if_match: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Several `If-Match` lines are one list (RFC 9110 §5.3).
        let values: Vec<&[u8]> = parts
            .headers
            .get_all(header::IF_MATCH)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if values.is_empty() {
            return Ok(IfMatch::Absent);
        }
        IfMatch::parse(&values.join(&b","[..])).ok_or_else(|| {
            ApiError::bad_request("If-Match names more than one revision; a write can require one")
        })
    }
}

/// `ETag: "<revision>"` of an answer about one event.
pub(crate) struct ETag(pub(crate) u64);

impl IntoResponseParts for ETag {
    type Error = Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Infallible> {
        let tag = HeaderValue::try_from(format!("\"{}\"", self.0)).expect("digits and quotes");
        parts.headers_mut().insert(header::ETAG, tag);
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(values: &[&str]) -> Result<IfMatch, ApiError> {
        let mut request = http::Request::builder().uri("/events/x");
        for value in values {
            request = request.header("if-match", *value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        IfMatch::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn reads_star_revision_tags_and_tags_that_never_hold() {
        assert_eq!(read(&[]).await.unwrap(), IfMatch::Absent);
        assert_eq!(read(&["*"]).await.unwrap(), IfMatch::Exists);
        assert_eq!(read(&["\"3\""]).await.unwrap(), IfMatch::Revision(3));
        assert_eq!(read(&[" \"12\" "]).await.unwrap(), IfMatch::Revision(12));
        assert_eq!(
            read(&["W/\"3\", \"4\""]).await.unwrap(),
            IfMatch::Revision(4)
        );
        for never in [
            "3",
            "0",
            "W/\"3\"",
            "\"\"",
            "\"0\"",
            "\"x\"",
            "\"99999999999999999999\"",
            "\"18446744073709551615\"",
            "",
        ] {
            assert_eq!(read(&[never]).await.unwrap(), IfMatch::Never, "{never:?}");
        }
        for two in [&["\"3\", \"4\""][..], &["\"3\"", "\"4\""]] {
            assert_eq!(read(two).await.unwrap_err().status, 400, "{two:?}");
        }
        assert_eq!(IfMatch::Revision(3).fields(), (3, true));
        assert_eq!(IfMatch::Exists.fields(), (0, true));
        assert_eq!(IfMatch::Absent.fields(), (0, false));
        assert_eq!(IfMatch::Never.fields(), (u64::MAX, true));
    }
}
