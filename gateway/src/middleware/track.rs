//! Counts, times and (with `--access-log`) logs every routed request: a tower layer rather than
//! `from_fn`, so a request costs one reference count and no allocation of its own here; the
//! in-flight count is released even when the request is abandoned half way.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request},
    response::Response,
};
use http::Method;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::http::AppState;
use crate::upstream::Backend;

#[derive(Clone)]
pub(crate) struct TrackLayer(pub(crate) AppState);

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            state: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Track<S> {
    inner: S,
    state: AppState,
}

/// What is known of a request when it starts, and its place in the in-flight count.
struct Started {
    state: AppState,
    route: Option<MatchedPath>,
    method: Method,
    /// Kept only for an access log.
    path: Option<String>,
    at: Instant,
}

impl Drop for Started {
    fn drop(&mut self) {
        self.state.metrics.request_ended();
    }
}

impl<S> Service<Request> for Track<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.state.metrics.request_started();
        let started = Started {
            state: self.state.clone(),
            route: request.extensions().get::<MatchedPath>().cloned(),
            method: request.method().clone(),
            path: self
                .state
                .settings
                .access_log
                .then(|| request.uri().path().to_owned()),
            at: Instant::now(),
        };
        Tracked {
            inner: self.inner.call(request),
            started: Some(started),
        }
    }
}

pin_project! {
    pub(crate) struct Tracked<F> {
        #[pin]
        inner: F,
        started: Option<Started>,
    }
}

impl<F> Future for Tracked<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.inner.poll(cx));
        if let Some(started) = this.started.take() {
            record(&started, &response);
            // The route names the exported span (`traced`, outside the router, cannot see it).
            if let (true, Some(route)) = (eventsys::otlp::enabled(), started.route.clone()) {
                response.extensions_mut().insert(route);
            }
        }
        Poll::Ready(Ok(response))
    }
}

fn record(started: &Started, response: &Response) {
    let elapsed = started.at.elapsed();
    let status = response.status();
    let route = started
        .route
        .as_ref()
        .map_or("unmatched", MatchedPath::as_str);
    started
        .state
        .metrics
        .answered(route, &started.method, status, elapsed);
    if let Some(path) = &started.path {
        let backend = response.extensions().get::<Backend>().copied();
        let method = &started.method;
        tracing::info!(%method, %path, status = status.as_u16(), backend = %Served(backend), ?elapsed, "request");
    }
}

/// The serving backend in the access log, `-` when none served the request.
struct Served(Option<Backend>);

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(backend) => backend.fmt(f),
            None => f.write_str("-"),
        }
    }
}
