//! Backends that misbehave, for what the gateway does about it. Each is a `Relay`: a gRPC
//! server in this process that passes every call on to a real backend (so what it answers is
//! the real thing) and adds one fault: answers that come late (`slow`), or a death in the
//! middle of a call, after the real backend has done the work and before the answer leaves
//! (`holding`, then `kill`). It serves `grpc.health.v1` as SERVING, as a backend does, so the gateway
//! takes it into its balancers like any other.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use eventsys::v1::{
    self,
    event_service_client::EventServiceClient,
    event_service_server::{EventService, EventServiceServer},
};
use futures::{FutureExt, Stream, StreamExt, future::BoxFuture};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status, transport::Channel};

/// What a relay does besides relaying.
#[derive(Clone, Default)]
struct Fault {
    /// Every answer leaves this much later than the real backend gave it.
    delay: Duration,
    /// The first call of this method is held once the real backend has answered it, until
    /// the relay is killed (its connections cut, as when its process is killed).
    hold: Option<&'static str>,
    /// Says token mode on its health answers whatever the real backend is (a backend that
    /// claims checks it does not make).
    claims_token_mode: bool,
}

struct Shared {
    backend: EventServiceClient<Channel>,
    fault: Fault,
    /// Cancelled when the relay dies: every connection it holds fails at once.
    dead: CancellationToken,
    /// Whether a call is held (`Fault::hold`); woken when one is.
    held: watch::Sender<bool>,
}

/// A relay to a real backend, serving on `addr`.
pub(crate) struct Relay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Relay {
    /// Answers every event-API call `delay` later than `backend` does.
    pub(crate) async fn slow(backend: SocketAddr, delay: Duration) -> Relay {
        Relay::start(
            backend,
            Fault {
                delay,
                ..Fault::default()
            },
        )
        .await
    }

    /// Holds the first `method` call (as `"Publish"`) once `backend` has answered it, until
    /// `kill`.
    pub(crate) async fn holding(backend: SocketAddr, method: &'static str) -> Relay {
        Relay::start(
            backend,
            Fault {
                hold: Some(method),
                ..Fault::default()
            },
        )
        .await
    }

    /// Relays to `backend` (in anonymous mode: it answers anyone) while its health answers
    /// say token mode: a backend that claims checks it does not make.
    pub(crate) async fn claiming_token_mode(backend: SocketAddr) -> Relay {
        Relay::start(
            backend,
            Fault {
                claims_token_mode: true,
                ..Fault::default()
            },
        )
        .await
    }

    async fn start(backend: SocketAddr, fault: Fault) -> Relay {
        let channel = Channel::from_shared(format!("http://{backend}"))
            .expect("a URL")
            .connect_lazy();
        let claims_token_mode = fault.claims_token_mode;
        let shared = Arc::new(Shared {
            backend: EventServiceClient::new(channel),
            fault,
            dead: CancellationToken::new(),
            held: watch::Sender::new(false),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<EventServiceServer<RelayService>>()
            .await;
        let dead = shared.dead.clone();
        let incoming = futures::stream::unfold(listener, move |listener| {
            let dead = dead.clone();
            async move {
                // A dead relay accepts nothing more, and dropping its listener refuses what
                // comes next, as a dead process's closed port does.
                let accepted = tokio::select! {
                    () = dead.cancelled() => return None,
                    accepted = listener.accept() => accepted,
                };
                let stream = accepted.map(|(socket, _)| Killable::new(socket, &dead));
                Some((stream, listener))
            }
        });
        let service = EventServiceServer::new(RelayService(shared.clone()));
        // Its answers say the backend's auth mode, as the backend's own health answers do (a
        // gateway in token mode lets in only backends that say token mode).
        let mode = if claims_token_mode {
            Some(http::HeaderValue::from_static("jwt"))
        } else {
            backend_mode(backend).await
        };
        let says_mode = tower::util::MapResponseLayer::new(move |mut answer: http::Response<_>| {
            if let Some(mode) = &mode {
                answer
                    .headers_mut()
                    .insert(eventsys::AUTH_MODE_METADATA, mode.clone());
            }
            answer
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(says_mode)
                .add_service(health_service)
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        Relay { addr, shared }
    }

    /// Waits until the relay holds its call: the real backend has done the work.
    pub(crate) async fn held(&self) {
        let mut held = self.shared.held.subscribe();
        held.wait_for(|held| *held).await.expect("the relay lives");
    }

    /// Dies: every connection cut, every call in flight lost, nothing accepted any more.
    pub(crate) fn kill(&self) {
        self.shared.dead.cancel();
    }
}

/// The auth mode `backend`'s health answer says, if it says one.
async fn backend_mode(backend: SocketAddr) -> Option<http::HeaderValue> {
    let channel = Channel::from_shared(format!("http://{backend}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let request = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(request)
        .await
        .ok()?;
    let mode = answer.metadata().get(eventsys::AUTH_MODE_METADATA)?;
    http::HeaderValue::from_bytes(mode.as_bytes()).ok()
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.dead.cancel();
    }
}

/// A connection of the relay's that fails, both ways, once the relay is dead.
struct Killable {
    socket: TcpStream,
    dead: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Killable {
    fn new(socket: TcpStream, dead: &CancellationToken) -> Killable {
        Killable {
            socket,
            dead: Box::pin(dead.clone().cancelled_owned()),
        }
    }

    fn killed(&mut self, cx: &mut Context<'_>) -> bool {
        self.dead.as_mut().poll(cx).is_ready()
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "the relay died")
}

impl AsyncRead for Killable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Killable {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// The gRPC service of a relay.
struct RelayService(Arc<Shared>);

impl RelayService {
    /// Relays one call with `call` on the real backend's client, then applies the fault.
    fn relay<T, R, F>(
        &self,
        method: &'static str,
        request: Request<T>,
        call: F,
    ) -> BoxFuture<'static, Result<Response<R>, Status>>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: FnOnce(
                EventServiceClient<Channel>,
                Request<T>,
            ) -> BoxFuture<'static, Result<Response<R>, Status>>
            + Send
            + 'static,
    {
        let shared = self.0.clone();
        async move {
            // The caller's metadata (its token, its idempotency key) goes on with the call.
            let answer = call(shared.backend.clone(), request).await;
            if shared.fault.hold == Some(method) && !shared.held.send_replace(true) {
                // Never answered: the relay dies first, with the connection this answer
                // would take.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(shared.fault.delay).await;
            answer
        }
        .boxed()
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for RelayService {
    async fn create_event(
        &self,
        request: Request<v1::CreateEventRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        self.relay("CreateEvent", request, |mut c, r| {
            async move { c.create_event(r).await }.boxed()
        })
        .await
    }

    async fn get_event(
        &self,
        request: Request<v1::GetEventRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        self.relay("GetEvent", request, |mut c, r| {
            async move { c.get_event(r).await }.boxed()
        })
        .await
    }

    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        self.relay("ListEvents", request, |mut c, r| {
            async move { c.list_events(r).await }.boxed()
        })
        .await
    }

    async fn list_all_events(
        &self,
        request: Request<v1::ListAllEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        self.relay("ListAllEvents", request, |mut c, r| {
            async move { c.list_all_events(r).await }.boxed()
        })
        .await
    }

    async fn update_event(
        &self,
        request: Request<v1::UpdateEventRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        self.relay("UpdateEvent", request, |mut c, r| {
            async move { c.update_event(r).await }.boxed()
        })
        .await
    }

    async fn delete_event(
        &self,
        request: Request<v1::DeleteEventRequest>,
    ) -> Result<Response<v1::DeleteEventResponse>, Status> {
        self.relay("DeleteEvent", request, |mut c, r| {
            async move { c.delete_event(r).await }.boxed()
        })
        .await
    }

    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        self.relay("Publish", request, |mut c, r| {
            async move { c.publish(r).await }.boxed()
        })
        .await
    }

    async fn list_topic_events(
        &self,
        request: Request<v1::ListTopicEventsRequest>,
    ) -> Result<Response<v1::ListTopicEventsResponse>, Status> {
        self.relay("ListTopicEvents", request, |mut c, r| {
            async move { c.list_topic_events(r).await }.boxed()
        })
        .await
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let answer = self
            .relay("Subscribe", request, |mut c, r| {
                async move { c.subscribe(r).await }.boxed()
            })
            .await?;
        Ok(answer.map(|events| events.boxed()))
    }

    async fn list_changes(
        &self,
        request: Request<v1::ListChangesRequest>,
    ) -> Result<Response<v1::ListChangesResponse>, Status> {
        self.relay("ListChanges", request, |mut c, r| {
            async move { c.list_changes(r).await }.boxed()
        })
        .await
    }

    type WatchChangesStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::Change, Status>> + Send>>;

    async fn watch_changes(
        &self,
        request: Request<v1::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let answer = self
            .relay("WatchChanges", request, |mut c, r| {
                async move { c.watch_changes(r).await }.boxed()
            })
            .await?;
        Ok(answer.map(|changes| changes.boxed()))
    }

    async fn stats(
        &self,
        request: Request<v1::StatsRequest>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        self.relay("Stats", request, |mut c, r| {
            async move { c.stats(r).await }.boxed()
        })
        .await
    }

    async fn presence(
        &self,
        request: Request<v1::PresenceRequest>,
    ) -> Result<Response<v1::PresenceResponse>, Status> {
        self.relay("Presence", request, |mut c, r| {
            async move { c.presence(r).await }.boxed()
        })
        .await
    }

    async fn report_presence(
        &self,
        request: Request<v1::ReportPresenceRequest>,
    ) -> Result<Response<v1::ReportPresenceResponse>, Status> {
        self.relay("ReportPresence", request, |mut c, r| {
            async move { c.report_presence(r).await }.boxed()
        })
        .await
    }
}
