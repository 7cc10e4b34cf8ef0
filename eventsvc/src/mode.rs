//! The health service, saying this backend's auth mode on every answer
//! ([`eventsys::AUTH_MODE_METADATA`]): a gateway in token mode checks it before it sends a
//! backend any call, and refuses one in anonymous mode.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use http::HeaderValue;
use tonic::server::NamedService;
use tower::Service;

/// `inner` (the health service), its answers marked with the mode.
#[derive(Debug, Clone)]
pub(crate) struct SaysMode<S> {
    inner: S,
    mode: HeaderValue,
}

impl<S> SaysMode<S> {
    pub(crate) fn new(inner: S, token_mode: bool) -> Self {
        let mode = HeaderValue::from_static(if token_mode { "jwt" } else { "none" });
        Self { inner, mode }
    }
}

impl<S: NamedService> NamedService for SaysMode<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, Req, Body> Service<Req> for SaysMode<S>
where
    S: Service<Req, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    // Boxed: health checks come a few times a second, not per API call.
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let answer = self.inner.call(request);
        let mode = self.mode.clone();
        Box::pin(async move {
            let mut answer = answer.await?;
            answer
                .headers_mut()
                .insert(eventsys::AUTH_MODE_METADATA, mode);
            Ok(answer)
        })
    }
}
