//! A p2c balancer (tower's `Balance`) over the endpoints a membership stream yields, shared by
//! every request handler without a queue: a caller locks it just long enough to pick an
//! endpoint and start its call, in its own task, instead of handing the request to a `Buffer`
//! worker task and waiting to be woken with the answer.

use std::{
    pin::pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, Wake, Waker},
};

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tonic::{Status, body::Body};
use tower::{Service, balance::p2c::Balance};

use super::membership::Discovered;

type Balanced = Balance<Discovered, http::Request<Body>>;

/// The shared, cloneable handle on one balancer that gRPC clients are built on. Its error is a
/// `Status`: the endpoints' statuses (with their typed source) come back unchanged.
#[derive(Clone)]
pub(crate) struct BalancedChannel(Arc<Shared>);

struct Shared {
    /// tower's `Balance` needs `&mut` to pick. A std mutex, held for one `poll_ready` and
    /// `call` (a p2c draw and the start of the call: microseconds), never across an `.await`;
    /// a caller with no endpoint ready waits on `changed` after releasing it.
    balance: Mutex<Balanced>,
    /// Wakes every caller waiting for an endpoint when the balancer may have one.
    changed: Arc<Changed>,
    /// `changed` as the waker the balancer is polled with.
    waker: Waker,
}

/// `Balance` keeps one waker (for its discovery stream and its not-yet-ready endpoints), while
/// any number of callers may be waiting: each waits on the `Notify`, and a wake reaches all.
struct Changed(Notify);

impl Wake for Changed {
    fn wake(self: Arc<Self>) {
        self.0.notify_waiters();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_waiters();
    }
}

type Started = <Balanced as Service<http::Request<Body>>>::Future;

impl Shared {
    /// Starts `request` on the endpoint p2c picks, under the lock; hands the request back when
    /// no endpoint is ready (boxed: that is the rare path).
    fn start(
        &self,
        request: http::Request<Body>,
    ) -> Result<Result<Started, Status>, Box<http::Request<Body>>> {
        let mut balance = self.balance.lock().unwrap_or_else(PoisonError::into_inner);
        match balance.poll_ready(&mut Context::from_waker(&self.waker)) {
            Poll::Ready(Ok(())) => Ok(Ok(balance.call(request))),
            Poll::Ready(Err(err)) => Ok(Err(Status::from_error(err))),
            Poll::Pending => Err(Box::new(request)),
        }
    }
}

impl BalancedChannel {
    pub(crate) fn new(discovered: Discovered) -> Self {
        let changed = Arc::new(Changed(Notify::new()));
        Self(Arc::new(Shared {
            balance: Mutex::new(Balance::new(discovered)),
            waker: Waker::from(changed.clone()),
            changed,
        }))
    }

    /// Picks an endpoint (waiting while there is none ready) and starts the call on it.
    async fn pick_and_call(
        shared: Arc<Shared>,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<Body>, Status> {
        let call = loop {
            request = match shared.start(request) {
                Ok(started) => break started?,
                Err(request) => *request,
            };
            // None ready: wait for a wake, registered before looking once more so that one
            // arriving in between is not lost (and never registered on the usual path).
            let mut changed = pin!(shared.changed.0.notified());
            changed.as_mut().enable();
            request = match shared.start(request) {
                Ok(started) => break started?,
                Err(request) => *request,
            };
            changed.await;
        };
        call.await.map_err(Status::from_error)
    }
}

impl Service<http::Request<Body>> for BalancedChannel {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Status>>;

    /// Always ready: readiness is the balancer's, checked under its lock when the call starts
    /// (it cannot be held between here and `call` by a handle that others share).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(Self::pick_and_call(self.0.clone(), request))
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use super::*;
    use crate::upstream::{
        Backend, Balancing, Failure,
        backend::Health,
        link::{Link, LinkSettings},
        membership::Membership,
    };

    #[tokio::test]
    async fn callers_waiting_for_an_endpoint_all_go_on_when_one_is_inserted() {
        let (membership, [requests, _, _]) = Membership::new(Balancing::Pending);
        let channel = BalancedChannel::new(requests);
        // Nothing listens on the discard port: a call that reaches the endpoint fails fast.
        let backend = Backend("127.0.0.1:9".parse().unwrap());
        let settings = LinkSettings::plain();
        membership.add(
            backend,
            Link::new(backend, Arc::new(settings)),
            CancellationToken::new(),
        );
        let calls: Vec<_> = (0..3)
            .map(|_| tokio::spawn(channel.clone().oneshot(http::Request::new(Body::empty()))))
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            calls.iter().all(|c| !c.is_finished()),
            "no endpoint: every call waits"
        );
        assert!(membership.set_health(backend, Health::Up));
        for call in calls {
            // A lost wake would leave a caller waiting for ever: fail instead.
            let status = tokio::time::timeout(Duration::from_secs(30), call)
                .await
                .expect("woken")
                .unwrap()
                .expect_err("the backend is not there");
            assert!(matches!(Failure::from(status), Failure::Unreachable { .. }));
        }
    }
}
