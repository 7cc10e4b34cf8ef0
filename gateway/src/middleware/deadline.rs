//! The one deadline of a REST request: it bounds the handler, body reading included (504 when it
//! passes), and every backend call the handler makes carries what remains of it. A tower layer
//! rather than `from_fn`: it runs on every request, and needs no allocation of its own.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::Request,
    response::{IntoResponse, Response},
};
use futures::{FutureExt, future::Map};
use tokio::{
    task::futures::TaskLocalFuture,
    time::{Instant, Timeout, error::Elapsed},
};
use tonic::Code;
use tower::{Layer, Service};

use crate::api::ApiError;
use crate::upstream;

#[derive(Debug, Clone, Copy)]
pub(crate) struct DeadlineLayer(pub(crate) Duration);

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            timeout: self.0,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

type Outcome = Result<Result<Response, Infallible>, Elapsed>;

fn answer(outcome: Outcome) -> Result<Response, Infallible> {
    outcome.unwrap_or_else(|_| {
        Ok(ApiError::new(Code::DeadlineExceeded, "request timed out").into_response())
    })
}

impl<S> Service<Request> for Deadline<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Map<
        Timeout<TaskLocalFuture<Instant, S::Future>>,
        fn(Outcome) -> Result<Response, Infallible>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let until = Instant::now() + self.timeout;
        upstream::within(until, self.inner.call(request)).map(answer as fn(Outcome) -> _)
    }
}
