//! The caller of a request, in axum's idiom: `Credentials` extracts the bearer token
//! (`Authorization: Bearer`; for GET only `?access_token=`; and the `events_token` cookie on
//! the streams EventSource reads, which cannot send a header), verifies it, and keeps it to
//! forward to the backends. A token that is present but invalid is rejected at once (401
//! `invalid_token`); a missing one is the handler's call, since public topics and operations
//! may be read without one.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Query};
use eventsys::{
    auth::{Caller, Denied, Rejected, bearer_token},
    topics::Pattern,
};
use http::{Method, StatusCode, header, request::Parts};
use serde::Deserialize;
use tonic::Code;

use super::ApiError;
use crate::{http::AppState, middleware::ClientKey, upstream::Bearer};

/// The cookie EventSource clients may carry their token in (GET of a stream only).
const COOKIE: &str = "events_token";

/// The streams an EventSource reads, which cannot send a header: the only requests whose
/// cookie counts. Anywhere else a browser sends the cookie of its own accord, so a page of
/// another site could spend the user's quotas and probe what answers 200, 403 or 404.
fn reads_a_stream(path: &str) -> bool {
    matches!(path, "/subscribe" | "/changes" | "/ui/stats") || path.starts_with("/subscribe/")
}

/// Who is calling, and the token to forward on their behalf.
pub(crate) struct Credentials {
    /// `None`: token mode and no token sent.
    caller: Option<Caller>,
    pub(crate) bearer: Option<Bearer>,
    /// The address the request came from.
    peer: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// The token a request carries, if any.
fn token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        return bearer_token(value.to_str().ok()?).map(str::to_owned);
    }
    // Query and cookie tokens are for EventSource, which cannot set headers; a cookie on a
    // write would let another site act with the user's token.
    if parts.method != Method::GET {
        return None;
    }
    if let Ok(Query(query)) = Query::<TokenQuery>::try_from_uri(&parts.uri)
        && let Some(token) = query.access_token
    {
        return Some(token);
    }
    if !reads_a_stream(parts.uri.path()) {
        return None;
    }
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(|t| t.trim_matches('"').to_owned())
}

impl FromRequestParts<AppState> for Credentials {
    type Rejection = ApiError;

    /// Also counts the request against the client's rate, once it is known who the client is.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let credentials =
            Self::verify(parts, state).map_err(|refused| refused.counted(state, peer))?;
        state
            .limiters
            .request(|| ClientKey::of(credentials.caller.as_ref(), peer))?;
        Ok(credentials.with_peer(peer))
    }
}

impl Credentials {
    /// A gRPC call's caller (`authorization: Bearer` metadata), counted against its rate like
    /// a REST request.
    pub(crate) fn of_grpc(
        metadata: &tonic::metadata::MetadataMap,
        peer: Option<SocketAddr>,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let token = state.auth.token_mode().then(|| {
            let value = metadata.get("authorization")?.to_str().ok()?;
            bearer_token(value).map(str::to_owned)
        });
        let credentials = Self::verify_token(token.flatten(), state)
            .map_err(|refused| refused.counted(state, peer))?;
        state
            .limiters
            .request(|| ClientKey::of(credentials.caller.as_ref(), peer))?;
        Ok(credentials.with_peer(peer))
    }

    fn verify(parts: &Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = state.auth.token_mode().then(|| token(parts)).flatten();
        Self::verify_token(token, state)
    }

    fn verify_token(token: Option<String>, state: &AppState) -> Result<Self, ApiError> {
        if !state.auth.token_mode() {
            return Ok(Credentials {
                caller: Some(Caller::Anyone),
                bearer: None,
                peer: None,
            });
        }
        let Some(token) = token else {
            return Ok(Credentials {
                caller: None,
                bearer: None,
                peer: None,
            });
        };
        let rejected = |reason: &str| unauthenticated(&Rejected::Invalid(reason.into()));
        let bearer = Bearer::new(&token).ok_or_else(|| rejected("not a header value"))?;
        match state.auth.caller(Some(&token)) {
            Ok(caller) => Ok(Credentials {
                caller: Some(caller),
                bearer: Some(bearer),
                peer: None,
            }),
            Err(rejected) => Err(unauthenticated(&rejected)),
        }
    }
}

/// Completes when a stream's token expires (`Credentials::expires`); never without one.
pub(crate) async fn token_expiry(expires: Option<tokio::time::Instant>) {
    match expires {
        Some(expires) => tokio::time::sleep_until(expires).await,
        None => std::future::pending().await,
    }
}

impl ApiError {
    /// A refused token counts against its address's rate like any request without one, so a
    /// client trying made-up tokens meets the same limit (429 once over it) as everyone else.
    fn counted(self, state: &AppState, peer: Option<SocketAddr>) -> ApiError {
        match state.limiters.request(|| ClientKey::of(None, peer)) {
            Ok(()) => self,
            Err(over) => over,
        }
    }
}

/// 401 with the Bearer challenge (RFC 6750), `error="invalid_token"` when one was sent.
fn unauthenticated(rejected: &Rejected) -> ApiError {
    let (message, challenge) = match rejected {
        Rejected::Missing => ("a token is required", r#"Bearer realm="events""#),
        Rejected::Invalid(_) => (
            "invalid token",
            r#"Bearer realm="events", error="invalid_token""#,
        ),
    };
    ApiError {
        challenge: Some(challenge),
        ..ApiError::new(Code::Unauthenticated, message)
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        ApiError::http(StatusCode::FORBIDDEN, Code::PermissionDenied, denied.0)
    }
}

impl Credentials {
    fn with_peer(self, peer: Option<SocketAddr>) -> Self {
        Self { peer, ..self }
    }

    /// Who per-client limits count this request against.
    pub(crate) fn client(&self) -> ClientKey {
        ClientKey::of(self.caller.as_ref(), self.peer)
    }

    /// When a stream this caller opens must end: as its token stops being accepted (`None`
    /// without one to expire).
    pub(crate) fn expires(&self) -> Option<tokio::time::Instant> {
        let remaining = self.caller.as_ref()?.remaining()?;
        Some(tokio::time::Instant::now() + remaining)
    }

    /// What a stream opened by this caller carries: the token to forward, and when it
    /// expires.
    pub(crate) fn stream_token(&self) -> (Option<Bearer>, Option<tokio::time::Instant>) {
        (self.bearer.clone(), self.expires())
    }

    /// Whom the caller's streams count as in presence: the token's subject; empty (counted,
    /// never named) without one, and in anonymous mode.
    pub(crate) fn subject(&self) -> &str {
        match &self.caller {
            Some(Caller::User(who)) => &who.user,
            _ => "",
        }
    }

    /// The caller; 401 when token mode has no token.
    pub(crate) fn caller(&self) -> Result<&Caller, ApiError> {
        self.caller
            .as_ref()
            .ok_or_else(|| unauthenticated(&Rejected::Missing))
    }

    /// Whose change feed a request reads: the token's subject (naming another user is 403),
    /// or in anonymous mode `userId`, which is required (events without an owner have none).
    pub(crate) fn feed_user(&self, user_id: Option<&str>) -> Result<String, ApiError> {
        let user = self.caller()?.owner(user_id.unwrap_or_default())?;
        if user.is_empty() {
            return Err(ApiError::bad_request(
                "userId is required: whose changes? (events without an owner have no feed)",
            ));
        }
        Ok(user)
    }

    /// Topic history and subscriptions: a subscribe right, or a public topic.
    pub(crate) fn may_read(&self, state: &AppState, topic: &str) -> Result<(), ApiError> {
        match &self.caller {
            Some(caller) => Ok(state.auth.may_read(caller, topic)?),
            None if state.auth.public_topic(topic) => Ok(()),
            None => Err(unauthenticated(&Rejected::Missing)),
        }
    }

    /// A multi-topic stream's pattern: every topic it matches within the subscribe rights or
    /// the public topics (a wider one is 403, named).
    pub(crate) fn may_read_pattern(
        &self,
        state: &AppState,
        pattern: &Pattern,
    ) -> Result<(), ApiError> {
        match &self.caller {
            Some(caller) => Ok(state.auth.may_read_pattern(caller, pattern)?),
            None if state.auth.public_pattern(pattern) => Ok(()),
            None => Err(unauthenticated(&Rejected::Missing)),
        }
    }

    /// The operational endpoints: an admin, unless they are public.
    pub(crate) fn may_operate(&self, state: &AppState) -> Result<(), ApiError> {
        if state.auth.public_ops() {
            return Ok(());
        }
        Ok(state.auth.may_operate(self.caller()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn tokens_come_from_the_header_and_for_gets_from_query_or_cookie() {
        let bearer = parts(Method::POST, "/events", &[("authorization", "Bearer abc")]);
        assert_eq!(token(&bearer).as_deref(), Some("abc"));
        let other = parts(Method::GET, "/events", &[("authorization", "Basic abc")]);
        assert_eq!(token(&other), None);
        let query = parts(Method::GET, "/subscribe/t?access_token=q1", &[]);
        assert_eq!(token(&query).as_deref(), Some("q1"));
        let cookie = parts(
            Method::GET,
            "/subscribe/t",
            &[("cookie", "a=b; events_token=c1")],
        );
        assert_eq!(token(&cookie).as_deref(), Some("c1"));
        let write = parts(
            Method::POST,
            "/publish?access_token=q1",
            &[("cookie", "events_token=c1")],
        );
        assert_eq!(token(&write), None, "no query or cookie token on writes");
        for stream in ["/subscribe", "/subscribe/t", "/changes", "/ui/stats"] {
            let cookie = parts(Method::GET, stream, &[("cookie", "events_token=c1")]);
            assert_eq!(token(&cookie).as_deref(), Some("c1"), "{stream}");
        }
        for other in [
            "/events",
            "/events/1",
            "/topic-events/t",
            "/changes/history",
            "/load",
            "/subscribers",
        ] {
            let cookie = parts(Method::GET, other, &[("cookie", "events_token=c1")]);
            assert_eq!(token(&cookie), None, "no cookie token on {other}");
        }
    }
}
