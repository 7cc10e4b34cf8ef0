//! The one way the gateway calls a backend: wait briefly for a healthy backend, bound the call
//! by the request's deadline (sent along as `grpc-timeout`, so the backend stops work nobody
//! waits for), and send an rpc that is safe to repeat once more elsewhere when its backend is
//! unavailable, while the retry budget allows. Which rpcs are safe to repeat is said once.

use std::{future::Future, time::Duration};

use tokio::{task::futures::TaskLocalFuture, time::Instant};
use tower::retry::budget::{Budget, TpsBudget};

use eventsys::v1::{self, event_service_client::EventServiceClient};
use tonic::{
    Code, Status, Streaming,
    metadata::{Ascii, MetadataValue},
};

use super::{Backend, Upstream, balancer::BalancedChannel, endpoint::CallFailure};

/// The gRPC client every call goes through: a balancer behind it picks the backend.
pub(crate) type Client = EventServiceClient<BalancedChannel>;

/// Which balancer a call goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Unary calls, balanced by latency and outstanding calls.
    Requests,
    /// Subscriptions, balanced by open streams.
    Streams,
}

/// Whether a call that failed for want of a backend may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Creates and publishes: sending one twice could store it twice.
    Never,
    /// Reads, updates and deletes.
    Once,
}

/// A caller's token, forwarded to the backends (which apply the same rules): the
/// `authorization: Bearer …` metadata value, built once when the token is accepted.
#[derive(Debug, Clone)]
pub(crate) struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    /// `None` for a token that cannot be a header value (no valid token is one).
    pub(crate) fn new(token: &str) -> Option<Bearer> {
        let mut value = MetadataValue::try_from(format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        Some(Bearer(value))
    }

    /// Adds the token to a call to a backend.
    pub(crate) fn attach<T>(&self, request: &mut tonic::Request<T>) {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
    }
}

tokio::task_local! {
    /// The deadline of the HTTP request being served, set once by the HTTP side.
    static DEADLINE: Instant;
}

/// `work` (an HTTP request's handling) with `deadline` as the deadline of every backend call
/// it makes.
pub(crate) fn within<F: Future>(deadline: Instant, work: F) -> TaskLocalFuture<Instant, F> {
    DEADLINE.scope(deadline, work)
}

/// The deadline of the request being served, if one is set.
pub(crate) fn deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Largest reply the gateway decodes: a backend caps its pages well below this.
pub(crate) const MAX_REPLY: usize = 16 * 1024 * 1024;

/// Retries add at most this share of load on top of first attempts (plus a small floor), so
/// that a sick fleet is not asked twice for everything.
pub(crate) fn retry_budget() -> TpsBudget {
    TpsBudget::new(Duration::from_secs(10), 10, 0.2)
}

/// One rpc of `events.v1.EventService` as the gateway sends it.
pub(crate) trait Rpc: Clone + Send + Sized + 'static {
    type Reply: Send + 'static;
    const RETRY: Retry;
    const ROUTE: Route = Route::Requests;
    fn send(
        request: tonic::Request<Self>,
        client: Client,
    ) -> impl Future<Output = Result<tonic::Response<Self::Reply>, Status>> + Send;
}

macro_rules! rpc {
    ($request:ty => $reply:ty, $method:ident, $retry:expr $(, $route:expr)?) => {
        impl Rpc for $request {
            type Reply = $reply;
            const RETRY: Retry = $retry;
            $(const ROUTE: Route = $route;)?
            async fn send(
                request: tonic::Request<Self>,
                mut client: Client,
            ) -> Result<tonic::Response<$reply>, Status> {
                client.$method(request).await
            }
        }
    };
}

rpc!(v1::CreateEventRequest => v1::Event, create_event, Retry::Never);
rpc!(v1::PublishRequest => v1::Event, publish, Retry::Never);
rpc!(v1::GetEventRequest => v1::Event, get_event, Retry::Once);
rpc!(v1::ListEventsRequest => v1::ListEventsResponse, list_events, Retry::Once);
rpc!(v1::UpdateEventRequest => v1::Event, update_event, Retry::Once);
rpc!(v1::DeleteEventRequest => v1::DeleteEventResponse, delete_event, Retry::Once);
rpc!(v1::ListTopicEventsRequest => v1::ListTopicEventsResponse, list_topic_events, Retry::Once);
rpc!(v1::SubscribeRequest => Streaming<v1::Event>, subscribe, Retry::Once, Route::Streams);

/// A backend's reply and the backend that gave it.
#[derive(Debug)]
pub(crate) struct Answer<T> {
    pub(crate) message: T,
    pub(crate) backend: Option<Backend>,
}

/// Why a call has no answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No backend was healthy within the wait.
    NoBackend,
    /// The call ran past the request timeout.
    TimedOut,
    /// The backend the call went to could not be reached (it is out of the balancers now).
    Unreachable,
    /// A backend (named when known) answered with an error.
    Status {
        status: Status,
        backend: Option<Backend>,
    },
}

/// A call's failure, and whether it came from a retry: an earlier attempt failed without an
/// answer, so it may or may not have taken effect.
#[derive(Debug)]
pub(crate) struct CallError {
    pub(crate) failure: Failure,
    pub(crate) retried: bool,
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        let mut source = std::error::Error::source(&status);
        while let Some(err) = source {
            match err.downcast_ref::<CallFailure>() {
                Some(CallFailure::Unreachable(_)) => return Failure::Unreachable,
                Some(CallFailure::Answered(backend)) => {
                    let backend = Some(*backend);
                    return Failure::Status { status, backend };
                }
                None => source = err.source(),
            }
        }
        Failure::Status {
            status,
            backend: None,
        }
    }
}

impl Failure {
    /// Unavailable, whoever said so: another backend may answer. Anything else the gateway
    /// could not decode is the backend's fault, said without the decoder's words.
    fn may_retry(&self) -> bool {
        match self {
            Failure::Unreachable => true,
            Failure::Status { status, .. } => status.code() == Code::Unavailable,
            Failure::NoBackend | Failure::TimedOut => false,
        }
    }
}

impl Upstream {
    /// Sends `request` to the backend its route's balancer picks; an rpc that is safe to
    /// repeat goes once more elsewhere if that backend is unavailable. The request is cloned
    /// only for that second attempt.
    pub(crate) async fn call<R: Rpc>(
        &self,
        request: R,
        bearer: Option<&Bearer>,
    ) -> Result<Answer<R::Reply>, CallError> {
        let own = Instant::now() + self.inner.config.request_timeout;
        let deadline = deadline().map_or(own, |given| given.min(own));
        self.inner.retries.deposit();
        let again = (R::RETRY == Retry::Once).then(|| request.clone());
        let failure = match self.attempt(request, bearer, deadline).await {
            Ok(answer) => return Ok(answer),
            Err(failure) => failure,
        };
        match again {
            Some(request) if failure.may_retry() && self.inner.retries.withdraw() => {
                tracing::debug!(?failure, "retrying on another backend");
                self.attempt(request, bearer, deadline)
                    .await
                    .map_err(|failure| CallError {
                        failure,
                        retried: true,
                    })
            }
            _ => Err(CallError {
                failure,
                retried: false,
            }),
        }
    }

    async fn attempt<R: Rpc>(
        &self,
        message: R,
        bearer: Option<&Bearer>,
        deadline: tokio::time::Instant,
    ) -> Result<Answer<R::Reply>, Failure> {
        let inner = &self.inner;
        if !inner
            .membership
            .wait_ready(inner.config.no_backend_wait)
            .await
        {
            return Err(Failure::NoBackend);
        }
        let channel = match R::ROUTE {
            Route::Requests => &inner.requests,
            Route::Streams => &inner.streams,
        };
        let client = EventServiceClient::new(channel.clone()).max_decoding_message_size(MAX_REPLY);
        let mut request = tonic::Request::new(message);
        if let Some(bearer) = bearer {
            bearer.attach(&mut request);
        }
        // A stream lives past any request deadline: only its opening is bounded.
        if R::ROUTE == Route::Requests {
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        match tokio::time::timeout_at(deadline, R::send(request, client)).await {
            Err(_) => Err(Failure::TimedOut),
            Ok(Ok(response)) => Ok(Answer {
                backend: response.extensions().get::<Backend>().copied(),
                message: response.into_inner(),
            }),
            Ok(Err(status)) => Err(status.into()),
        }
    }
}
