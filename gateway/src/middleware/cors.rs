//! CORS, for browsers: tower-http's policy on every request that carries an `Origin`. Others
//! (curl, services, load tools) skip it: the answer would be the same for each of them. When
//! only some origins may call, theirs still says `Vary: origin`, so that caches do not serve a
//! browser an answer made for someone else.

use std::task::{Context, Poll};

use axum::extract::Request;
use eventsys::write_key::REPLAYED_HEADER;
use futures::future::Either;
use http::{HeaderName, HeaderValue, Method, header, request::Parts};
use tower::{Layer, Service};
use tower_http::cors::{AllowHeaders, AllowOrigin, Cors, CorsLayer, ResponseFuture};

use super::{
    guard::{Browsers, CorsOrigins},
    served::SERVED_BY,
    traced::REQUEST_ID,
};

/// CORS as configured: loopback pages and our own, any origin, or the listed ones.
pub(crate) fn layer(browsers: &Browsers) -> BrowserCorsLayer {
    let origins = match &browsers.cors_origins {
        CorsOrigins::Loopback => AllowOrigin::predicate(|origin: &HeaderValue, parts: &Parts| {
            is_loopback(origin) || is_same_origin(origin, parts)
        }),
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::Listed(list) => AllowOrigin::list(list.iter().cloned()),
    };
    let cors = CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            SERVED_BY,
            REQUEST_ID,
            HeaderName::from_static(REPLAYED_HEADER),
            header::RETRY_AFTER,
        ]);
    BrowserCorsLayer {
        cors,
        any_origin: matches!(browsers.cors_origins, CorsOrigins::Any),
    }
}

/// The `host[:port]` of an `http` or `https` origin (`None` for `null` and other schemes).
fn authority(origin: &HeaderValue) -> Option<&str> {
    let origin = origin.to_str().ok()?;
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .filter(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#', '@']))
}

/// A page served from this machine: `localhost` or a loopback address, on any port.
fn is_loopback(origin: &HeaderValue) -> bool {
    authority(origin).is_some_and(eventsys::host::is_loopback)
}

/// A page of the gateway itself (`/ui`, `/docs`): its origin names the `Host` the request is
/// addressed to, which the guard has already checked is ours.
fn is_same_origin(origin: &HeaderValue, parts: &Parts) -> bool {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    authority(origin)
        .zip(host)
        .is_some_and(|(a, h)| a.eq_ignore_ascii_case(h))
}

#[derive(Debug, Clone)]
pub(crate) struct BrowserCorsLayer {
    cors: CorsLayer,
    any_origin: bool,
}

impl<S> Layer<S> for BrowserCorsLayer {
    type Service = BrowserCors<S>;

    fn layer(&self, inner: S) -> BrowserCors<S> {
        BrowserCors {
            cors: self.cors.layer(inner),
            any_origin: self.any_origin,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct BrowserCors<S> {
    cors: Cors<S>,
    any_origin: bool,
}

/// A request without an `Origin` (no browser page's) when only some origins may call: its
/// answer is the same for every such request, and says it depends on `Origin`, so that a cache
/// does not hand it to a page (nor a page's answer to anyone else).
fn varies_by_origin<B>(mut response: http::Response<B>) -> http::Response<B> {
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("origin"));
    response
}

type NoOrigin<F, B> = futures::future::MapOk<F, fn(http::Response<B>) -> http::Response<B>>;

impl<S, B> Service<Request> for BrowserCors<S>
where
    S: Service<Request, Response = http::Response<B>>,
    B: Default,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Either<Either<S::Future, NoOrigin<S::Future, B>>, ResponseFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.cors.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        use futures::TryFutureExt;
        // No page's request: nothing for CORS to decide (tower-http's layer would build the
        // same answer each time).
        if !request.headers().contains_key(header::ORIGIN) {
            let answer = self.cors.get_mut().call(request);
            if self.any_origin {
                return Either::Left(Either::Left(answer));
            }
            let vary: fn(http::Response<B>) -> http::Response<B> = varies_by_origin;
            return Either::Left(Either::Right(answer.map_ok(vary)));
        }
        Either::Right(self.cors.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_origins_are_pages_of_this_machine_on_any_port() {
        for origin in [
            "http://localhost:5173",
            "http://LOCALHOST",
            "https://localhost:8443",
            "http://127.0.0.1:8080",
            "http://127.0.0.2",
            "http://[::1]:3000",
            "http://[::1]",
        ] {
            assert!(is_loopback(&HeaderValue::from_static(origin)), "{origin}");
        }
        for origin in [
            "https://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example:80",
            "http://evil.example#@localhost",
            "http://user@localhost",
            "http://10.0.0.1:3000",
            "http://[::2]:3000",
            "null",
            "file://",
            "ftp://localhost",
            "http://",
            "http://localhost/path",
        ] {
            assert!(!is_loopback(&HeaderValue::from_static(origin)), "{origin}");
        }
    }

    #[test]
    fn the_gateways_own_pages_are_same_origin() {
        let parts = |host: &'static str| {
            http::Request::get("/ui/stats")
                .header(header::HOST, host)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let origin = HeaderValue::from_static("https://events.example:8443");
        assert!(is_same_origin(&origin, &parts("events.example:8443")));
        assert!(!is_same_origin(&origin, &parts("events.example")));
        assert!(!is_same_origin(&origin, &parts("other.example:8443")));
        let null = HeaderValue::from_static("null");
        assert!(!is_same_origin(&null, &parts("null")));
    }
}
