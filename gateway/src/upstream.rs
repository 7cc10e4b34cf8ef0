//! The gateway's upstream: discovery and health checking of the backends, one p2c balancer for
//! requests (our PeakEwma load), one for subscriptions (open streams) and one for writes (the
//! requests' load, over the backends that commit every backend's writes when one says so), and
//! the call policy.
//! Its one-way interface is `Upstream::call` with typed answers and errors; it knows nothing
//! of HTTP.

mod backend;
mod balancer;
mod call;
mod discovery;
mod endpoint;
mod ewma;
mod link;
mod membership;
mod resubscribe;
mod unary;

use std::{sync::Arc, time::Duration};

use eventsys::v1::{self, event_service_client::EventServiceClient};
use tokio_util::sync::CancellationToken;
use tower::retry::budget::TpsBudget;

pub(crate) use backend::{Backend, BackendSnapshot, Down};
pub(crate) use call::{
    Answer, Bearer, CallError, Failure, Forwarded, Keyed, Method, NewEvent, Outcome, Rpc, Traced,
    deadline, method, traced, within,
};
pub(crate) use endpoint::Balancing;
pub(crate) use link::BackendTls;
pub(crate) use resubscribe::{RESUBSCRIBE, is_permanent};

use balancer::BalancedChannel;
use membership::Membership;

/// How the upstream finds, checks and calls backends.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamConfig {
    /// `host:port` names; each may resolve to several addresses.
    pub(crate) backends: Vec<String>,
    pub(crate) health_interval: Duration,
    pub(crate) health_timeout: Duration,
    pub(crate) resolve_interval: Duration,
    pub(crate) connect_timeout: Duration,
    /// How requests are balanced (subscriptions always go by open streams).
    pub(crate) balancing: Balancing,
    /// Longest a unary call may take, retry included.
    pub(crate) request_timeout: Duration,
    /// Longest a call waits for some backend to be healthy.
    pub(crate) no_backend_wait: Duration,
    /// TLS to the backends (verify them, and present a client certificate for mTLS).
    pub(crate) tls: Option<BackendTls>,
    /// Token mode: only backends whose health answers say token mode too are let in.
    pub(crate) token_mode: bool,
}

/// The shared handle on the backends.
#[derive(Clone)]
pub(crate) struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    requests: BalancedChannel,
    streams: BalancedChannel,
    /// Creates, publishes, updates and deletes: straight to the backend that commits them
    /// when there is one (no hop through another backend).
    writes: BalancedChannel,
    membership: Arc<Membership>,
    config: Arc<UpstreamConfig>,
    retries: TpsBudget,
}

impl Upstream {
    /// Builds the balancers and starts resolving and health-checking `config.backends`. Must
    /// be called inside a tokio runtime; the tasks stop when `shutdown` is cancelled.
    pub(crate) fn start(config: UpstreamConfig, shutdown: CancellationToken) -> Upstream {
        let (membership, [requests, streams, writes]) = Membership::new(config.balancing);
        let config = Arc::new(config);
        tokio::spawn(discovery::run(membership.clone(), config.clone(), shutdown));
        Upstream {
            inner: Arc::new(Inner {
                requests: BalancedChannel::new(requests),
                streams: BalancedChannel::new(streams),
                writes: BalancedChannel::new(writes),
                membership,
                config,
                retries: call::retry_budget(),
            }),
        }
    }

    /// Every known backend's figures, healthy or not, in address order.
    pub(crate) fn backends(&self) -> Vec<BackendSnapshot> {
        self.inner.membership.snapshots()
    }

    /// Told whenever a backend goes in or out of the balancers.
    pub(crate) fn health_changes(&self) -> tokio::sync::watch::Receiver<usize> {
        self.inner.membership.changes()
    }

    /// Every known backend with what its `Stats` rpc says, when it is healthy and answers
    /// within `timeout`.
    pub(crate) async fn backend_stats(
        &self,
        timeout: Duration,
        bearer: Option<&Bearer>,
    ) -> Vec<(BackendSnapshot, Option<v1::StatsResponse>)> {
        let asks = self
            .inner
            .membership
            .links()
            .into_iter()
            .map(|(snapshot, link)| async move {
                if !snapshot.healthy() {
                    return (snapshot, None);
                }
                let mut client = EventServiceClient::new(link);
                let mut request = tonic::Request::new(v1::StatsRequest {});
                if let Some(bearer) = bearer {
                    bearer.attach(&mut request);
                }
                let answer = tokio::time::timeout(timeout, client.stats(request))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(tonic::Response::into_inner);
                (snapshot, answer)
            });
        futures::future::join_all(asks).await
    }
}
