//! A p2c balancer (tower's `Balance`) over the endpoints a membership stream yields, behind a
//! `Buffer` so that every request handler can share it.

use std::task::{Context, Poll};

use futures::{TryFutureExt, future::MapErr};
use tonic::{Status, body::Body};
use tower::{BoxError, Service, balance::p2c::Balance, buffer::Buffer};

use super::membership::Discovered;

type Balanced = Balance<Discovered, http::Request<Body>>;
type Buffered = Buffer<http::Request<Body>, <Balanced as Service<http::Request<Body>>>::Future>;

/// Requests that may wait for the balancer at once; beyond this, callers wait for a slot.
const BUFFER: usize = 1024;

/// The shared, cloneable handle on one balancer that gRPC clients are built on. Its error is a
/// `Status` rather than the buffer's boxed error: the endpoints' statuses (with their typed
/// source) come back out of the box unchanged, and a concrete error type keeps tonic's generic
/// client futures provably `Send`.
#[derive(Clone)]
pub(crate) struct BalancedChannel(Buffered);

impl BalancedChannel {
    pub(crate) fn new(discovered: Discovered) -> Self {
        Self(Buffer::new(Balance::new(discovered), BUFFER))
    }
}

impl Service<http::Request<Body>> for BalancedChannel {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future =
        MapErr<<Buffered as Service<http::Request<Body>>>::Future, fn(BoxError) -> Status>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.0.poll_ready(cx).map_err(Status::from_error)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.0.call(request).map_err(Status::from_error)
    }
}
