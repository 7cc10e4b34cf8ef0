//! Every request's identity for the logs: the W3C `traceparent` it came with (or a new trace),
//! and an `x-request-id` (the client's, when it is a sane one, or a new one), echoed on the
//! response. The request runs inside a `request` span with both ids, so every log line about it
//! names them, and the backend calls it makes carry the trace on (`upstream::traced`).
//!
//! The request id is ours rather than tower-http's `SetRequestId`/`PropagateRequestId`, which
//! keep whatever a client sends: here an id that is too long or not plain ASCII is replaced
//! before it reaches a log line or is echoed.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use axum::{extract::Request, response::Response};
use eventsys::trace::{TRACEPARENT, TraceParent};
use http::{HeaderName, HeaderValue};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::{Instrument, instrument::Instrumented};

use crate::upstream::{self, Traced as TracedCall};

/// The request id header, read and echoed.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a client.
const MAX_REQUEST_ID: usize = 128;

#[derive(Debug, Clone, Copy)]
pub(crate) struct TracedLayer;

impl<S> Layer<S> for TracedLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Traced<S> {
    inner: S,
}

/// The client's request id when it is 1 to 128 visible ASCII characters.
fn given_id(request: &Request) -> Option<HeaderValue> {
    let value = request.headers().get(&REQUEST_ID)?;
    let bytes = value.as_bytes();
    let sane = !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID
        && bytes.iter().all(|b| b.is_ascii_graphic());
    sane.then(|| value.clone())
}

/// A random (version 4) UUID from a fast generator: `Uuid::new_v4` asks the kernel for every
/// one (a system call per request), and a request id needs to be unique, not secret.
fn new_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    HeaderValue::from_str(
        id.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    )
    .expect("a UUID is a header value")
}

impl<S> Service<Request> for Traced<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Echo<TracedCall<Instrumented<S::Future>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let trace = request
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| TraceParent::parse(v.as_bytes()))
            // Our hop: the client's trace under a span of ours, or a new trace.
            .map_or_else(TraceParent::start, |given| given.child());
        let id = given_id(&request).unwrap_or_else(new_id);
        request.headers_mut().insert(REQUEST_ID, id.clone());
        let span = tracing::info_span!(
            "request",
            trace_id = %trace.trace_id,
            request_id = %id.to_str().unwrap_or("-"),
        );
        let served = upstream::traced(trace, self.inner.call(request).instrument(span));
        Echo {
            served,
            id: Some(id),
        }
    }
}

pin_project! {
    /// Puts the request id on the response.
    pub(crate) struct Echo<F> {
        #[pin]
        served: F,
        id: Option<HeaderValue>,
    }
}

impl<F> Future for Echo<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = std::task::ready!(this.served.poll(cx));
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        Poll::Ready(Ok(response))
    }
}
