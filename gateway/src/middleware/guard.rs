//! What the gateway checks before routing a request: that it is addressed to us (`Host`, against
//! DNS rebinding), that a browser page's write is JSON (which forces a CORS preflight), that a
//! declared body fits the limit (413 before any of it is read).

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::Request,
    response::{IntoResponse, Response},
};
use futures::{
    FutureExt,
    future::{BoxFuture, Either},
};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use tonic::Code;
use tower::{Layer, Service};

use crate::{api::ApiError, http::Settings};

/// `--allowed-hosts`: the names a request's `Host` may carry.
#[derive(Debug, Clone, Default)]
pub(crate) enum Hosts {
    /// `*`: any host (behind a proxy that checks it).
    Any,
    /// The loopback names, the address listened on, and these names. When the gateway listens
    /// on every address, any IP literal passes too: DNS rebinding needs a name.
    #[default]
    Loopback,
    Named(Vec<String>),
}

/// The browser-facing policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct Browsers {
    pub(crate) cors_origins: CorsOrigins,
    pub(crate) hosts: HostPolicy,
}

/// `--cors-origins`: the web pages whose scripts may read the answers and send writes.
#[derive(Debug, Clone, Default)]
pub(crate) enum CorsOrigins {
    /// Pages served from this machine (`http://localhost:*`, `http://127.0.0.1:*`,
    /// `http://[::1]:*`, or https) and the gateway's own pages (same origin): anonymous mode's
    /// default, where anything a page may call reads and changes every user's events.
    #[default]
    Loopback,
    /// `*`: any page. Token mode's default (a call needs a token that a page of another
    /// origin does not hold), and anonymous mode's only when given explicitly.
    Any,
    /// These origins only.
    Listed(Vec<HeaderValue>),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct HostPolicy {
    pub(crate) allowed: Hosts,
    listen: Option<SocketAddr>,
}

impl HostPolicy {
    pub(crate) fn new(allowed: Hosts) -> Self {
        Self {
            allowed,
            listen: None,
        }
    }

    pub(crate) fn allow_listen_addr(&mut self, addr: SocketAddr) {
        self.listen = Some(addr);
    }

    /// Whether `host` (a `Host` header, port included or not) names this gateway.
    pub(crate) fn allows(&self, host: &str) -> bool {
        let names = match &self.allowed {
            Hosts::Any => return true,
            Hosts::Loopback => &[][..],
            Hosts::Named(names) => names.as_slice(),
        };
        if eventsys::host::is_loopback(host) {
            return true;
        }
        let name = eventsys::host::name_of(host);
        if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return true;
        }
        let Ok(ip) = name.parse::<IpAddr>() else {
            return false;
        };
        self.listen
            .is_some_and(|listen| listen.ip() == ip || listen.ip().is_unspecified())
    }
}

/// The request's host: the `Host` header, or an HTTP/2 request's `:authority`.
fn host_of(request: &Request) -> Option<&str> {
    match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok(),
        None => request.uri().authority().map(|a| a.as_str()),
    }
}

fn is_json(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Refuses, before routing, what is not for us or cannot fit: a tower layer rather than
/// `from_fn`, since it runs on every request and needs no allocation to let one through.
#[derive(Clone)]
pub(crate) struct GuardLayer(pub(crate) Arc<Settings>);

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            settings: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Guard<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(refused) = refusal(&self.settings, &request) else {
            return Either::Right(self.inner.call(request));
        };
        let answer = async move { Ok(refused.into_response()) };
        if has_body(&request) && declared_length(&request).is_none_or(|n| n <= DISCARD_AT_MOST) {
            Either::Left(discard(request).then(|()| answer).boxed())
        } else {
            Either::Left(answer.boxed())
        }
    }
}

/// A body over the limit but under this is read and dropped before the 413, so that the client,
/// still sending it, reads the answer instead of a reset connection (what nginx's lingering
/// close does). A larger one is refused at once: a client sending that much should ask first
/// (`Expect: 100-continue`, which then gets the 413 before sending anything).
const DISCARD_AT_MOST: u64 = 8 * 1024 * 1024;
/// How long discarding may take.
const DISCARD_FOR: Duration = Duration::from_secs(5);

/// Reads and drops the body, at most `DISCARD_AT_MOST` bytes for at most `DISCARD_FOR`.
async fn discard(request: Request) {
    let mut body = request.into_body();
    let mut read = 0;
    let _ = tokio::time::timeout(DISCARD_FOR, async {
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DISCARD_AT_MOST {
                return;
            }
        }
    })
    .await;
}

fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn has_body(request: &Request) -> bool {
    declared_length(request).is_some_and(|n| n > 0)
        || request.headers().contains_key(header::TRANSFER_ENCODING)
}

/// Why `request` is refused before routing, if it is.
fn refusal(settings: &Settings, request: &Request) -> Option<ApiError> {
    if let Some(host) = host_of(request)
        && !settings.browsers.hosts.allows(host)
    {
        return Some(ApiError::http(
            StatusCode::MISDIRECTED_REQUEST,
            Code::InvalidArgument,
            "this host name is not served here",
        ));
    }
    // A page may POST text/plain to any origin without asking (no preflight); a JSON body
    // makes the browser ask first, and CORS then decides.
    let writes = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    if writes && request.headers().contains_key(header::ORIGIN) && !is_json(request) {
        return Some(ApiError::http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            "requests from web pages must send Content-Type: application/json",
        ));
    }
    declared_length(request)
        .is_some_and(|length| length > settings.body_limit as u64)
        .then(ApiError::too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_loopback_the_listen_address_and_named_ones() {
        let mut policy = HostPolicy::new(Hosts::Loopback);
        policy.allow_listen_addr("10.1.2.3:3000".parse().unwrap());
        for ok in [
            "localhost",
            "localhost:3000",
            "127.0.0.1:3000",
            "[::1]:80",
            "10.1.2.3:3000",
            "LOCALHOST",
        ] {
            assert!(policy.allows(ok), "{ok}");
        }
        for foreign in [
            "evil.example",
            "evil.example:3000",
            "10.9.9.9",
            "localhost.evil.example",
        ] {
            assert!(!policy.allows(foreign), "{foreign}");
        }
        let mut everywhere = HostPolicy::new(Hosts::Named(vec!["events.example".into()]));
        everywhere.allow_listen_addr("0.0.0.0:3000".parse().unwrap());
        assert!(
            everywhere.allows("10.9.9.9:3000"),
            "any IP when listening on all"
        );
        assert!(everywhere.allows("Events.Example:443"));
        assert!(!everywhere.allows("rebound.example"));
        assert!(HostPolicy::new(Hosts::Any).allows("anything"));
    }
}
