//! For the gateway's unit tests: backends the test drives (`FakeBackend`: its health answers
//! and every `Subscribe` are the test's to decide), served in the test's own runtime on an
//! in-memory network (the gateway's links dial it instead of TCP for the addresses it knows),
//! and the gateway's state over them as `serve` builds it, from the binary's flags. With
//! `tokio::time::pause` the gateway's timers (health checks, pings, linger, keep-alive,
//! resubscribe pauses) run in virtual time: a test says when, to the millisecond, and waits for
//! nothing real. (Over real sockets paused time runs ahead of bytes in flight: a ping's answer
//! would come "too late".)

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use clap::Parser;
use eventsys::v1::{
    self,
    event_service_server::{EventService, EventServiceServer},
};
use futures::{Stream, StreamExt};
use tokio::{
    io::DuplexStream,
    sync::{mpsc, oneshot, watch},
};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream, WatchStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{Health, HealthServer},
};

use crate::{cli::Config, http::AppState, server};

/// The in-memory network: each fake backend's address, and where its connections go.
static NETWORK: Mutex<BTreeMap<SocketAddr, mpsc::UnboundedSender<DuplexStream>>> =
    Mutex::new(BTreeMap::new());
/// Addresses handed to fake backends: one each, never reused, in a range nothing listens on.
static NEXT_PORT: AtomicU16 = AtomicU16::new(1);

/// A connection to `addr` when it is on the in-memory network (`None`: dial it for real).
pub(crate) fn memory_connect(addr: SocketAddr) -> Option<std::io::Result<DuplexStream>> {
    let network = NETWORK.lock().unwrap_or_else(PoisonError::into_inner);
    let accept = network.get(&addr)?;
    let (client, server) = tokio::io::duplex(64 * 1024);
    Some(match accept.send(server) {
        Ok(()) => Ok(client),
        Err(_) => Err(std::io::ErrorKind::ConnectionRefused.into()),
    })
}

/// How a fake backend answers its health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checks {
    Serving,
    NotServing,
    /// Never answers (a backend whose host went silent).
    Silent,
}

/// One `Subscribe` the gateway sent: the test answers it with a stream it feeds, or a refusal.
pub(crate) struct Subscribed {
    pub(crate) request: v1::SubscribeRequest,
    pub(crate) at: tokio::time::Instant,
    answer: oneshot::Sender<Result<mpsc::Receiver<Result<v1::Event, Status>>, Status>>,
}

impl Subscribed {
    /// Accepts: the stream carries what the test sends, and ends when the sender is dropped.
    pub(crate) fn accept(self) -> mpsc::Sender<Result<v1::Event, Status>> {
        let (events, stream) = mpsc::channel(64);
        let _ = self.answer.send(Ok(stream));
        events
    }

    pub(crate) fn refuse(self, status: Status) {
        let _ = self.answer.send(Err(status));
    }
}

/// A backend on loopback whose health and subscriptions the test decides.
pub(crate) struct FakeBackend {
    pub(crate) addr: SocketAddr,
    checks: watch::Sender<Checks>,
    /// Whether it says it commits every backend's writes (`WRITER_HEALTH`).
    writer: watch::Sender<bool>,
    /// Every `Subscribe` the gateway sends, in order.
    pub(crate) subscribes: mpsc::UnboundedReceiver<Subscribed>,
    stop: CancellationToken,
}

impl FakeBackend {
    pub(crate) async fn start() -> FakeBackend {
        // 127.1.x.y: loopback, yet nothing real listens there.
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let addr = SocketAddr::from((Ipv4Addr::new(127, 1, 0, 1), port));
        let (accept, accepted) = mpsc::unbounded_channel();
        NETWORK
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr, accept);
        let checks = watch::Sender::new(Checks::Serving);
        let writer = watch::Sender::new(false);
        let (subscribed, subscribes) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let incoming = UnboundedReceiverStream::new(accepted).map(Ok::<_, std::io::Error>);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HealthServer::new(FakeHealth(
                    checks.subscribe(),
                    writer.subscribe(),
                )))
                .add_service(EventServiceServer::new(FakeEvents(subscribed)))
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
        );
        FakeBackend {
            addr,
            checks,
            writer,
            subscribes,
            stop,
        }
    }

    /// From now on, health checks are answered so.
    pub(crate) fn checks(&self, checks: Checks) {
        self.checks.send_replace(checks);
    }

    /// From now on, says it commits every backend's writes (`true`) or not.
    pub(crate) fn writer(&self, writer: bool) {
        self.writer.send_replace(writer);
    }

    /// The next `Subscribe` the gateway sends.
    pub(crate) async fn subscribed(&mut self) -> Subscribed {
        self.subscribes
            .recv()
            .await
            .expect("the fake backend serves")
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        NETWORK
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.addr);
        self.stop.cancel();
    }
}

/// The gateway's state over `backends`, configured by the `gateway` binary's `flags`, with
/// its upstream running (stopped when the returned guard drops). Returns once every backend is
/// in the balancers.
pub(crate) async fn gateway(backends: &[&FakeBackend], flags: &[&str]) -> (AppState, StopOnDrop) {
    let (state, stop) = starting(backends, flags);
    healthy(&state, backends.len()).await;
    (state, stop)
}

/// Waits until the balancers hold `n` backends.
pub(crate) async fn healthy(state: &AppState, n: usize) {
    state
        .upstream
        .health_changes()
        .wait_for(|healthy| *healthy == n)
        .await
        .expect("the upstream runs");
}

/// `gateway`, returning at once: its health checks have not run yet.
pub(crate) fn starting(backends: &[&FakeBackend], flags: &[&str]) -> (AppState, StopOnDrop) {
    let list = backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec!["gateway", "--backends", &list];
    args.extend_from_slice(flags);
    let config = Config::try_parse_from(args)
        .expect("valid flags")
        .validate()
        .expect("a valid configuration");
    let stop = CancellationToken::new();
    let state = server::state(
        config.upstream,
        config.settings,
        config.auth,
        config.service,
        stop.clone(),
        CancellationToken::new(),
    );
    (state, StopOnDrop(stop))
}

/// Stops the gateway's tasks when the test ends.
pub(crate) struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Runs other tasks, without letting (paused) time pass, until `done`.
pub(crate) async fn until(done: impl Fn() -> bool) {
    while !done() {
        tokio::task::yield_now().await;
    }
}

/// Lets `by` of virtual time pass, running every task that is due meanwhile.
pub(crate) async fn advance(by: Duration) {
    tokio::time::sleep(by).await;
}

/// The health checks' answers, and whether it is the writer (asked as `WRITER_HEALTH`).
struct FakeHealth(watch::Receiver<Checks>, watch::Receiver<bool>);

type Statuses = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

fn answer(checks: Checks) -> Option<HealthCheckResponse> {
    let status = match checks {
        Checks::Serving => ServingStatus::Serving,
        Checks::NotServing => ServingStatus::NotServing,
        Checks::Silent => return None,
    };
    Some(HealthCheckResponse {
        status: status as i32,
    })
}

#[tonic::async_trait]
impl Health for FakeHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let mut checks = *self.0.borrow();
        if request.get_ref().service == eventsys::WRITER_HEALTH
            && checks == Checks::Serving
            && !*self.1.borrow()
        {
            checks = Checks::NotServing;
        }
        match answer(checks) {
            Some(answer) => Ok(Response::new(answer)),
            None => std::future::pending().await,
        }
    }

    type WatchStream = Statuses;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<Statuses>, Status> {
        let statuses = WatchStream::new(self.0.clone())
            .filter_map(|checks| async move { answer(checks).map(Ok) });
        Ok(Response::new(Box::pin(statuses)))
    }
}

struct FakeEvents(mpsc::UnboundedSender<Subscribed>);

type Events = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

fn not_here<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("the fake backend only subscribes"))
}

#[tonic::async_trait]
impl EventService for FakeEvents {
    type SubscribeStream = Events;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Events>, Status> {
        let (answer, answered) = oneshot::channel();
        let subscribed = Subscribed {
            request: request.into_inner(),
            at: tokio::time::Instant::now(),
            answer,
        };
        self.0
            .send(subscribed)
            .map_err(|_| Status::unavailable("the test is over"))?;
        let stream = answered
            .await
            .map_err(|_| Status::unavailable("the test did not answer"))??;
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn create_event(
        &self,
        _: Request<v1::CreateEventRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        not_here()
    }

    async fn get_event(
        &self,
        _: Request<v1::GetEventRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        not_here()
    }

    async fn list_events(
        &self,
        _: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        not_here()
    }

    async fn list_all_events(
        &self,
        _: Request<v1::ListAllEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        not_here()
    }

    async fn update_event(
        &self,
        _: Request<v1::UpdateEventRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        not_here()
    }

    async fn delete_event(
        &self,
        _: Request<v1::DeleteEventRequest>,
    ) -> Result<Response<v1::DeleteEventResponse>, Status> {
        not_here()
    }

    async fn publish(&self, _: Request<v1::PublishRequest>) -> Result<Response<v1::Event>, Status> {
        not_here()
    }

    async fn list_topic_events(
        &self,
        _: Request<v1::ListTopicEventsRequest>,
    ) -> Result<Response<v1::ListTopicEventsResponse>, Status> {
        not_here()
    }

    async fn list_changes(
        &self,
        _: Request<v1::ListChangesRequest>,
    ) -> Result<Response<v1::ListChangesResponse>, Status> {
        not_here()
    }

    type WatchChangesStream = Pin<Box<dyn Stream<Item = Result<v1::Change, Status>> + Send>>;

    async fn watch_changes(
        &self,
        _: Request<v1::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        not_here()
    }

    async fn stats(
        &self,
        _: Request<v1::StatsRequest>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        not_here()
    }

    async fn presence(
        &self,
        _: Request<v1::PresenceRequest>,
    ) -> Result<Response<v1::PresenceResponse>, Status> {
        not_here()
    }

    async fn report_presence(
        &self,
        _: Request<v1::ReportPresenceRequest>,
    ) -> Result<Response<v1::ReportPresenceResponse>, Status> {
        not_here()
    }
}

/// An event of `topic` at `seq`, as a backend sends it.
pub(crate) fn event(topic: &str, seq: u64) -> v1::Event {
    v1::Event {
        id: uuid::Uuid::new_v4().to_string(),
        topic: topic.to_owned(),
        title: format!("{seq}"),
        seq,
        created_at: Some(prost_types::Timestamp::default()),
        ..Default::default()
    }
}

/// Runs a paused-time test's `body`, failing it when it has not finished within an hour of
/// virtual time: the gateway's health checks keep the clock moving, so a test waiting for
/// something that never comes fails in a moment instead of hanging.
pub(crate) async fn bounded<F: std::future::Future>(body: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), body)
        .await
        .expect("the test waited an hour of virtual time for what never came")
}
