//! The one way the gateway calls a backend: wait briefly for a healthy backend, bound the call
//! by the request's deadline (sent along as `grpc-timeout`, so the backend stops work nobody
//! waits for), and send an rpc that is safe to repeat once more elsewhere when its backend is
//! unavailable, while the retry budget allows. Which rpcs are safe to repeat is said once.

use std::{future::Future, time::Duration};

use tokio::{
    task::futures::TaskLocalFuture,
    time::{Instant, Timeout},
};
use tower::retry::budget::{Budget, TpsBudget};

use bytes::Bytes;
use eventsys::{
    Idempotency, idempotency,
    trace::{TRACEPARENT, TraceParent},
    v1::{self, event_service_client::EventServiceClient},
    write_key::IdempotencyKey,
};
use http::HeaderValue;
use tonic::{Code, Status, Streaming, metadata::MetadataValue};

use super::{Backend, Upstream, balancer::BalancedChannel, endpoint::CallFailure, unary};

/// Which balancer a call goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Unary calls, balanced by latency and outstanding calls.
    Requests,
    /// Subscriptions, balanced by open streams.
    Streams,
    /// Writes: balanced like requests, over the backends that commit every backend's writes
    /// when one says so (a SQLite file's elected writer), else over all.
    Writes,
}

/// A caller's token, forwarded to the backends (which apply the same rules): the
/// `authorization: Bearer …` header value, built once when the token is accepted.
#[derive(Debug, Clone)]
pub(crate) struct Bearer(HeaderValue);

impl Bearer {
    /// `None` for a token that cannot be a header value (no valid token is one).
    pub(crate) fn new(token: &str) -> Option<Bearer> {
        let mut value = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        Some(Bearer(value))
    }

    pub(crate) fn header(&self) -> &HeaderValue {
        &self.0
    }

    /// Adds the token to a call made with a tonic client.
    pub(crate) fn attach<T>(&self, request: &mut tonic::Request<T>) {
        if let Ok(mut value) = MetadataValue::try_from(self.0.as_bytes()) {
            value.set_sensitive(true);
            request.metadata_mut().insert("authorization", value);
        }
    }
}

tokio::task_local! {
    /// The deadline of the HTTP request being served, set once by the HTTP side.
    static DEADLINE: Instant;
    /// The trace of the HTTP request being served (its span in the gateway as the parent),
    /// sent along as `traceparent`.
    static TRACE: TraceParent;
}

/// A request's handling with its trace set for the backend calls it makes.
pub(crate) type Traced<F> = TaskLocalFuture<TraceParent, F>;

/// `work` with `trace` carried on to every backend call it makes.
pub(crate) fn traced<F: Future>(trace: TraceParent, work: F) -> Traced<F> {
    TRACE.scope(trace, work)
}

/// The trace of the request being served, if one is set.
pub(crate) fn trace() -> Option<TraceParent> {
    TRACE.try_with(|t| *t).ok()
}

/// `work` (an HTTP request's handling) bounded by `deadline`, which every backend call it
/// makes carries too (and, being inside this bound, need not time itself).
pub(crate) fn within<F: Future>(
    deadline: Instant,
    work: F,
) -> Timeout<TaskLocalFuture<Instant, F>> {
    tokio::time::timeout_at(deadline, DEADLINE.scope(deadline, work))
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
pub(crate) trait Rpc: Send + Sized + 'static {
    type Reply: Send + 'static;
    /// Whether a call lost with its backend may be sent again elsewhere (once).
    const IDEMPOTENCY: Idempotency;
    const ROUTE: Route = Route::Requests;
    /// `/events.v1.EventService/{method}`.
    const PATH: &'static str;
    /// What every attempt sends, made once from the message.
    type Prepared: Clone + Send + Sync + 'static;
    fn prepare(self) -> Self::Prepared;
    /// One attempt through `channel`; `timeout` is sent along as `grpc-timeout`.
    fn send(
        channel: BalancedChannel,
        prepared: Self::Prepared,
        bearer: Option<&Bearer>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<(Self::Reply, Option<Backend>), Status>> + Send;
}

/// A unary method of `events.v1.EventService`: its request, its path and whether it may be
/// repeated.
pub(crate) trait Method: Send + Sync + 'static {
    type Request;
    const PATH: &'static str;
    const IDEMPOTENCY: Idempotency;
    const ROUTE: Route;
}

/// A gRPC client's request for `M` as the client framed it, passed on as it is: the reply comes
/// back framed too (`Bytes`), and neither is decoded in the gateway.
pub(crate) struct Forwarded<M>(Bytes, std::marker::PhantomData<M>);

impl<M> Forwarded<M> {
    /// `framed`: one uncompressed gRPC frame (the caller checked its header).
    pub(crate) fn new(framed: Bytes) -> Self {
        Forwarded(framed, std::marker::PhantomData)
    }
}

impl<M: Method> Rpc for Forwarded<M> {
    type Reply = Bytes;
    const IDEMPOTENCY: Idempotency = M::IDEMPOTENCY;
    const ROUTE: Route = M::ROUTE;
    const PATH: &'static str = M::PATH;
    type Prepared = Bytes;
    fn prepare(self) -> Bytes {
        self.0
    }
    fn send(
        channel: BalancedChannel,
        framed: Bytes,
        bearer: Option<&Bearer>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<(Bytes, Option<Backend>), Status>> + Send {
        unary::call_framed(channel, Self::PATH, framed, bearer, timeout)
    }
}

/// A unary rpc, framed by `unary` once and re-sent as is by a retry; and its method's marker.
macro_rules! unary {
    ($method:ident: $request:ty => $reply:ty, $idempotency:expr, $route:expr) => {
        #[doc = concat!("`events.v1.EventService/", stringify!($method), "`.")]
        pub(crate) struct $method;

        impl Method for $method {
            type Request = $request;
            const PATH: &'static str = concat!("/events.v1.EventService/", stringify!($method));
            const IDEMPOTENCY: Idempotency = $idempotency;
            const ROUTE: Route = $route;
        }

        impl Rpc for $request {
            type Reply = $reply;
            const IDEMPOTENCY: Idempotency = <$method as Method>::IDEMPOTENCY;
            const ROUTE: Route = <$method as Method>::ROUTE;
            const PATH: &'static str = <$method as Method>::PATH;
            type Prepared = Bytes;
            fn prepare(self) -> Bytes {
                unary::frame(&self)
            }
            fn send(
                channel: BalancedChannel,
                framed: Bytes,
                bearer: Option<&Bearer>,
                timeout: Option<Duration>,
            ) -> impl Future<Output = Result<($reply, Option<Backend>), Status>> + Send {
                unary::call(channel, Self::PATH, framed, bearer, timeout)
            }
        }
    };
}

/// The unary methods, as marker types for calls passed on framed. Whether each may be sent
/// again is the `.proto`'s `idempotency_level` of its method.
pub(crate) mod method {
    use super::*;

    unary!(CreateEvent: v1::CreateEventRequest => v1::Event, idempotency::CREATE_EVENT, Route::Writes);
    unary!(Publish: v1::PublishRequest => v1::Event, idempotency::PUBLISH, Route::Writes);
    unary!(GetEvent: v1::GetEventRequest => v1::Event, idempotency::GET_EVENT, Route::Requests);
    unary!(ListEvents: v1::ListEventsRequest => v1::ListEventsResponse, idempotency::LIST_EVENTS, Route::Requests);
    unary!(ListAllEvents: v1::ListAllEventsRequest => v1::ListEventsResponse, idempotency::LIST_ALL_EVENTS, Route::Requests);
    unary!(UpdateEvent: v1::UpdateEventRequest => v1::Event, idempotency::UPDATE_EVENT, Route::Writes);
    unary!(DeleteEvent: v1::DeleteEventRequest => v1::DeleteEventResponse, idempotency::DELETE_EVENT, Route::Writes);
    unary!(ListTopicEvents: v1::ListTopicEventsRequest => v1::ListTopicEventsResponse, idempotency::LIST_TOPIC_EVENTS, Route::Requests);
    unary!(ListChanges: v1::ListChangesRequest => v1::ListChangesResponse, idempotency::LIST_CHANGES, Route::Requests);
    unary!(Stats: v1::StatsRequest => v1::StatsResponse, idempotency::STATS, Route::Requests);
    unary!(Presence: v1::PresenceRequest => v1::PresenceResponse, idempotency::PRESENCE, Route::Requests);
    unary!(ReportPresence: v1::ReportPresenceRequest => v1::ReportPresenceResponse, idempotency::REPORT_PRESENCE, Route::Writes);
}

/// A create or publish with the client's idempotency key (if it sent one), sent along as
/// `idempotency-key` metadata by every attempt. Every door's writes come through here, so this
/// is where a write is named (see `NewEvent`).
pub(crate) struct Keyed<R> {
    pub(crate) request: R,
    pub(crate) key: Option<IdempotencyKey>,
}

/// A request that stores a new event under the id it carries. The gateway gives it one (UUID
/// v7) before the first attempt when the client did not, so a retry on another backend stores
/// the event at most once, and a retried publish keeps its `seq`.
pub(crate) trait NewEvent {
    fn id_mut(&mut self) -> &mut String;
}

impl NewEvent for v1::CreateEventRequest {
    fn id_mut(&mut self) -> &mut String {
        &mut self.id
    }
}

impl NewEvent for v1::PublishRequest {
    fn id_mut(&mut self) -> &mut String {
        &mut self.id
    }
}

/// Whether a backend answered a keyed write or replayed an earlier request's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Answered,
    Replayed,
}

impl<R> Rpc for Keyed<R>
where
    R: Rpc<Prepared = Bytes, Reply = v1::Event> + NewEvent,
{
    type Reply = (v1::Event, Outcome);
    const IDEMPOTENCY: Idempotency = R::IDEMPOTENCY;
    const ROUTE: Route = R::ROUTE;
    const PATH: &'static str = R::PATH;
    type Prepared = (Bytes, Option<HeaderValue>);
    fn prepare(mut self) -> Self::Prepared {
        let id = self.request.id_mut();
        if id.is_empty() {
            *id = uuid::Uuid::now_v7().to_string();
        }
        // A parsed key is visible ASCII: always a header value.
        let key = self
            .key
            .and_then(|key| HeaderValue::from_str(key.as_str()).ok());
        (self.request.prepare(), key)
    }
    fn send(
        channel: BalancedChannel,
        (framed, key): Self::Prepared,
        bearer: Option<&Bearer>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<(Self::Reply, Option<Backend>), Status>> + Send {
        unary::call_keyed(channel, Self::PATH, framed, key, bearer, timeout)
    }
}

/// Subscriptions go through tonic's client, whose decoder turns the stream into messages.
macro_rules! streaming {
    ($request:ty => $item:ty, $method:ident, $path:literal, $idempotency:expr) => {
        impl Rpc for $request {
            type Reply = Streaming<$item>;
            const IDEMPOTENCY: Idempotency = $idempotency;
            const ROUTE: Route = Route::Streams;
            const PATH: &'static str = $path;
            type Prepared = Self;
            fn prepare(self) -> Self {
                self
            }
            async fn send(
                channel: BalancedChannel,
                message: Self,
                bearer: Option<&Bearer>,
                _: Option<Duration>,
            ) -> Result<(Self::Reply, Option<Backend>), Status> {
                let mut client =
                    EventServiceClient::new(channel).max_decoding_message_size(MAX_REPLY);
                let mut request = tonic::Request::new(message);
                if let Some(bearer) = bearer {
                    bearer.attach(&mut request);
                }
                if let Some(trace) = trace()
                    && let Ok(value) = trace.to_string().parse()
                {
                    request.metadata_mut().insert(TRACEPARENT, value);
                }
                let response = client.$method(request).await?;
                let backend = response.extensions().get::<Backend>().copied();
                Ok((response.into_inner(), backend))
            }
        }
    };
}

streaming!(v1::SubscribeRequest => v1::Event, subscribe, "/events.v1.EventService/Subscribe", idempotency::SUBSCRIBE);
streaming!(v1::WatchChangesRequest => v1::Change, watch_changes, "/events.v1.EventService/WatchChanges", idempotency::WATCH_CHANGES);

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
    /// The backend the call went to could not be reached (it is out of the balancers now);
    /// `maybe_applied`: the request had reached it before the connection was lost.
    Unreachable { maybe_applied: bool },
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

impl CallError {
    /// The request's deadline passed before the call ended.
    pub(crate) fn timed_out() -> CallError {
        CallError {
            failure: Failure::TimedOut,
            retried: false,
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        let mut source = std::error::Error::source(&status);
        while let Some(err) = source {
            match err.downcast_ref::<CallFailure>() {
                Some(CallFailure::Unreachable { sent, .. }) => {
                    return Failure::Unreachable {
                        maybe_applied: *sent,
                    };
                }
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
    /// Whether the request may have been applied although no answer came.
    fn maybe_applied(&self) -> bool {
        matches!(
            self,
            Failure::Unreachable {
                maybe_applied: true
            }
        )
    }

    /// What a retry's failure says of the whole call, the first attempt having failed with
    /// `first`: a retry that reached no backend does not undo a first attempt that may have
    /// applied, so the caller is told it may have been.
    fn after(self, first: &Failure) -> Failure {
        match self {
            Failure::NoBackend | Failure::Unreachable { .. } if first.maybe_applied() => {
                Failure::Unreachable {
                    maybe_applied: true,
                }
            }
            retry => retry,
        }
    }

    /// Unavailable, whoever said so: another backend may answer. Anything else the gateway
    /// could not decode is the backend's fault, said without the decoder's words.
    fn may_retry(&self) -> bool {
        match self {
            Failure::Unreachable { .. } => true,
            Failure::Status { status, .. } => status.code() == Code::Unavailable,
            Failure::NoBackend | Failure::TimedOut => false,
        }
    }
}

impl Upstream {
    /// Sends `request` to the backend its route's balancer picks; an rpc that is safe to
    /// repeat goes once more elsewhere if that backend is unavailable. The request is prepared
    /// (for a unary rpc, encoded) once; a second attempt sends the same bytes.
    pub(crate) async fn call<R: Rpc>(
        &self,
        request: R,
        bearer: Option<&Bearer>,
    ) -> Result<Answer<R::Reply>, CallError> {
        let own = Instant::now() + self.inner.config.request_timeout;
        // The HTTP side's deadline, when there is one and it comes first, already bounds this
        // whole future (its expiry drops it): a timer of our own would only cost.
        let (deadline, timer) = match deadline() {
            Some(given) if given <= own => (given, None),
            _ => (own, Some(own)),
        };
        self.inner.retries.deposit();
        let prepared = request.prepare();
        let again = R::IDEMPOTENCY.may_repeat().then(|| prepared.clone());
        let failure = match self
            .attempt::<R>(R::ROUTE, prepared, bearer, deadline, timer)
            .await
        {
            Ok(answer) => return Ok(answer),
            Err(failure) => failure,
        };
        match again {
            Some(prepared) if failure.may_retry() && self.inner.retries.withdraw() => {
                tracing::debug!(?failure, "retrying on another backend");
                // A write balancer may hold the one backend that just failed; the request
                // balancer holds every healthy one.
                let route = match R::ROUTE {
                    Route::Writes => Route::Requests,
                    route => route,
                };
                self.attempt::<R>(route, prepared, bearer, deadline, timer)
                    .await
                    .map_err(|retry| CallError {
                        failure: retry.after(&failure),
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
        route: Route,
        prepared: R::Prepared,
        bearer: Option<&Bearer>,
        deadline: Instant,
        timer: Option<Instant>,
    ) -> Result<Answer<R::Reply>, Failure> {
        let inner = &self.inner;
        if !inner
            .membership
            .wait_ready(inner.config.no_backend_wait)
            .await
        {
            return Err(Failure::NoBackend);
        }
        let channel = match route {
            Route::Requests => &inner.requests,
            Route::Streams => &inner.streams,
            Route::Writes => &inner.writes,
        };
        // A stream lives past any request deadline: only its opening is bounded.
        let timeout =
            (route != Route::Streams).then(|| deadline.saturating_duration_since(Instant::now()));
        let sent = R::send(channel.clone(), prepared, bearer, timeout);
        let outcome = match timer {
            Some(at) => match tokio::time::timeout_at(at, sent).await {
                Ok(outcome) => outcome,
                Err(_) => return Err(Failure::TimedOut),
            },
            None => sent.await,
        };
        match outcome {
            Ok((message, backend)) => Ok(Answer { message, backend }),
            // The backend's own timer for the `grpc-timeout` we sent ran out (tonic answers
            // that CANCELLED), and its answer raced ours: either way the deadline passed.
            Err(status) if status.code() == Code::Cancelled && Instant::now() >= deadline => {
                Err(Failure::TimedOut)
            }
            Err(status) => Err(status.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventsys::v1::event_service_server::SERVICE_NAME;

    #[test]
    fn a_retry_that_reached_no_backend_keeps_the_first_attempts_maybe_applied() {
        let lost = || Failure::Unreachable {
            maybe_applied: true,
        };
        let refused = || Failure::Unreachable {
            maybe_applied: false,
        };
        assert!(Failure::NoBackend.after(&lost()).maybe_applied());
        assert!(refused().after(&lost()).maybe_applied());
        assert!(!Failure::NoBackend.after(&refused()).maybe_applied());
        assert!(matches!(
            Failure::NoBackend.after(&refused()),
            Failure::NoBackend
        ));
        // Anything but "nowhere reached" is the retry's own answer.
        assert!(matches!(
            Failure::TimedOut.after(&lost()),
            Failure::TimedOut
        ));
    }

    #[test]
    fn paths_name_the_contracts_service_and_methods() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(eventsys::FILE_DESCRIPTOR_SET).unwrap();
        let methods: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| {
                file.service.iter().flat_map(move |service| {
                    let name = format!("{}.{}", file.package(), service.name());
                    service
                        .method
                        .iter()
                        .map(move |m| format!("/{name}/{}", m.name()))
                })
            })
            .collect();
        for path in [
            v1::CreateEventRequest::PATH,
            v1::PublishRequest::PATH,
            v1::GetEventRequest::PATH,
            v1::ListEventsRequest::PATH,
            v1::UpdateEventRequest::PATH,
            v1::DeleteEventRequest::PATH,
            v1::ListTopicEventsRequest::PATH,
            v1::SubscribeRequest::PATH,
            v1::ListChangesRequest::PATH,
            v1::WatchChangesRequest::PATH,
            v1::PresenceRequest::PATH,
            v1::ReportPresenceRequest::PATH,
        ] {
            assert!(path.starts_with(&format!("/{SERVICE_NAME}/")), "{path}");
            assert!(
                methods.iter().any(|m| m == path),
                "{path} not in {methods:?}"
            );
        }
    }
}
