//! Every request's identity for the logs: the W3C `traceparent` it came with (or a new trace),
//! and an `x-request-id` (the client's, when it is a sane one, or a new one), echoed on the
//! response. The request runs inside a `request` span with both ids, so every log line about it
//! names them, and the backend calls it makes carry the trace on (`upstream::traced`). With
//! OTLP export on, the request is also exported as a server span (`RequestSpan`).
//!
//! The request id is ours rather than tower-http's `SetRequestId`/`PropagateRequestId`, which
//! keep whatever a client sends: here an id that is too long or not plain ASCII is replaced
//! before it reaches a log line or is echoed.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use axum::{
    extract::{MatchedPath, Request},
    response::Response,
};
use eventsys::{
    otlp::{KeyValue, Started},
    trace::{TRACEPARENT, TraceParent},
};
use http::{HeaderName, HeaderValue, Method};
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
        let given = request
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| TraceParent::parse(v.as_bytes()));
        // Our hop: the client's trace under a span of ours, or a new trace.
        let trace = given.map_or_else(TraceParent::start, |given| given.child());
        let exported = Started::now(trace, given.map(|g| g.span_id)).map(|started| RequestSpan {
            started,
            method: request.method().clone(),
        });
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
            exported,
        }
    }
}

pin_project! {
    /// Puts the request id on the response.
    pub(crate) struct Echo<F> {
        #[pin]
        served: F,
        id: Option<HeaderValue>,
        exported: Option<RequestSpan>,
    }
}

/// A request's span for OTLP export (built only while export is on).
pub(crate) struct RequestSpan {
    started: Started,
    method: Method,
}

impl RequestSpan {
    /// Exports it, ended now (at the response's headers: an SSE stream's span is its opening).
    fn finish(self, response: &Response) {
        let status = response.status();
        let route = response.extensions().get::<MatchedPath>();
        // OpenTelemetry's HTTP conventions: `{method} {route}`, the method alone when unrouted.
        let name = match route {
            Some(route) => format!("{} {}", self.method, route.as_str()),
            None => self.method.to_string(),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", self.method.to_string()),
            KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
        ];
        if let Some(route) = route {
            attributes.push(KeyValue::new("http.route", route.as_str().to_owned()));
        }
        if let Some(backend) = response.extensions().get::<upstream::Backend>() {
            attributes.push(KeyValue::new("eventsys.backend", backend.to_string()));
        }
        self.started
            .end(name.into(), attributes, status.is_server_error());
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
        if let Some(exported) = this.exported.take() {
            exported.finish(&response);
        }
        Poll::Ready(Ok(response))
    }
}
