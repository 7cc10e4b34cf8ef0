//! CORS, for browsers: tower-http's policy on every request that carries an `Origin`. Others
//! (curl, services, load tools) skip it when any origin is allowed, since the answer would be
//! the same `*` for everyone; with a list of origins every request goes through it, so that
//! its `Vary` keeps caches from serving a browser an answer made for someone else.

use std::task::{Context, Poll};

use axum::extract::Request;
use eventsys::write_key::REPLAYED_HEADER;
use futures::future::Either;
use http::{HeaderName, Method, header};
use tower::{Layer, Service};
use tower_http::cors::{AllowHeaders, AllowOrigin, Cors, CorsLayer, ResponseFuture};

use super::{guard::Browsers, served::SERVED_BY, traced::REQUEST_ID};

/// CORS as configured: any origin by default (the contract), or the listed ones.
pub(crate) fn layer(browsers: &Browsers) -> BrowserCorsLayer {
    let origins = match &browsers.cors_origins {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list.iter().cloned()),
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
        any_origin: browsers.cors_origins.is_none(),
    }
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

impl<S, B> Service<Request> for BrowserCors<S>
where
    S: Service<Request, Response = http::Response<B>>,
    B: Default,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Either<S::Future, ResponseFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.cors.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if self.any_origin && !request.headers().contains_key(header::ORIGIN) {
            Either::Left(self.cors.get_mut().call(request))
        } else {
            Either::Right(self.cors.call(request))
        }
    }
}
