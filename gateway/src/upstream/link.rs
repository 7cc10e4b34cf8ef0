//! One HTTP/2 connection per backend, written to straight from the calling task. A tonic
//! `Channel` puts a `Buffer` worker, hyper's dispatch channel and a task per request body
//! between a handler and the socket; here a call is one `send_request` on h2's shared stream
//! state, and the connection's own task only reads, writes and pings.

mod body;
mod dial;
mod tls;

use std::{
    io,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use h2::client::SendRequest;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http_body_util::BodyExt;
use tower::Service;

use super::Backend;

pub(crate) use body::RecvBody;
pub(crate) use dial::LinkSettings;
pub(crate) use tls::BackendTls;

/// Why a call found no answer on the link.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("cannot connect: {0}")]
    Dial(Arc<io::Error>),
    #[error("HTTP/2: {0}")]
    Http2(#[from] h2::Error),
    #[error("request body: {0}")]
    Body(tonic::Status),
}

/// The shared handle on one backend's connection: cheap to clone, (re)connected on demand.
#[derive(Clone)]
pub(crate) struct Link {
    shared: Arc<LinkShared>,
}

struct LinkShared {
    settings: Arc<LinkSettings>,
    scheme: Scheme,
    authority: Authority,
    backend: Backend,
    /// Idle, dialing or open. A std mutex: held to read or swap the state (a `SendRequest`
    /// clone, a shared dial future), never across an `.await`: callers await the dial or the
    /// call after releasing it, so one slow dial never holds up another backend's link.
    state: Mutex<State>,
    /// Told when an open connection ends without the gateway ending it.
    lost: tokio::sync::Notify,
}

type Dialing = Shared<BoxFuture<'static, Result<SendRequest<Bytes>, Arc<io::Error>>>>;

enum State {
    /// No connection: the next call dials.
    Idle,
    /// A dial is under way (in its own task); every caller waits for the same one.
    Dialing(Dialing),
    /// Connected; `generation` tells this connection's end from a later one's. Cancelling
    /// `sever` ends the connection's task, failing every call on it.
    Open {
        sender: SendRequest<Bytes>,
        generation: u64,
        sever: tokio_util::sync::CancellationToken,
    },
}

impl Link {
    /// A link to `backend`; nothing is dialed until the first call.
    pub(crate) fn new(backend: Backend, settings: Arc<LinkSettings>) -> Link {
        let scheme = if settings.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let authority = Authority::try_from(backend.to_string())
            .expect("a socket address is a valid authority");
        Link {
            shared: Arc::new(LinkShared {
                settings,
                scheme,
                authority,
                backend,
                state: Mutex::new(State::Idle),
                lost: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Sends one gRPC request and waits for its response headers; the body streams after.
    pub(crate) async fn send(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<RecvBody>, LinkError> {
        let (mut parts, body) = request.into_parts();
        let message = collect(body).await?;
        let sender = self.sender().await?;
        let mut sender = sender.ready().await?;
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from_parts({
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(self.shared.scheme.clone());
            uri.authority = Some(self.shared.authority.clone());
            uri.path_and_query = Some(path);
            uri
        })
        .expect("scheme, authority and path make a URI");
        parts.version = http::Version::HTTP_2;
        let request = http::Request::from_parts(parts, ());
        let (response, mut stream) = sender.send_request(request, message.is_empty())?;
        if !message.is_empty() {
            // Buffered by h2 beyond the stream's window; requests are bounded by the HTTP
            // side's body limit long before that matters.
            stream.send_data(message, true)?;
        }
        Ok(response.await?.map(RecvBody::new))
    }

    /// Drops the connection now: every call on it fails at once (as unreachable, so a call
    /// that may be repeated goes to another backend). For a backend that stopped answering:
    /// on a network that loses packets nothing else would end those calls before their
    /// deadline. The next call dials again.
    pub(crate) fn sever(&self) {
        let mut state = self.shared.lock();
        if let State::Open { sever, .. } = &*state {
            sever.cancel();
            *state = State::Idle;
        }
    }

    /// Completes when an open connection to the backend ends (it closed or reset it, or
    /// stopped answering pings) — not when the gateway severed it.
    pub(crate) async fn lost(&self) {
        self.shared.lost.notified().await;
    }

    /// The open connection's sender, dialing first when there is none.
    async fn sender(&self) -> Result<SendRequest<Bytes>, LinkError> {
        let dialing = {
            let mut state = self.shared.lock();
            match &*state {
                State::Open { sender, .. } => return Ok(sender.clone()),
                State::Dialing(dialing) => dialing.clone(),
                State::Idle => {
                    let dial = tokio::spawn(dial::dial(self.shared.clone()));
                    let dialing = async move {
                        dial.await
                            .unwrap_or_else(|e| Err(Arc::new(io::Error::other(e.to_string()))))
                    }
                    .boxed()
                    .shared();
                    *state = State::Dialing(dialing.clone());
                    dialing
                }
            }
        };
        dialing.await.map_err(LinkError::Dial)
    }
}

impl LinkShared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The request message as one buffer: a unary or server-streaming call's body is one frame,
/// ready at once (tonic encodes it when polled).
async fn collect(body: tonic::body::Body) -> Result<Bytes, LinkError> {
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(LinkError::Body)?.into_data() else {
            continue;
        };
        match &first {
            None => first = Some(data),
            Some(head) => {
                if more.is_empty() {
                    more.extend_from_slice(head);
                }
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(if more.is_empty() {
        first.unwrap_or_default()
    } else {
        more.freeze()
    })
}

/// What tonic clients (health checks, per-backend `Stats`) are built on.
impl Service<http::Request<tonic::body::Body>> for Link {
    type Response = http::Response<RecvBody>;
    type Error = LinkError;
    type Future = BoxFuture<'static, Result<http::Response<RecvBody>, LinkError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let link = self.clone();
        Box::pin(async move { link.send(request).await })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    /// A backend that accepts the connection and the call, then falls silent (a host gone
    /// behind a dead link): it neither answers the call nor the keepalive pings.
    async fn silent_backend() -> (Backend, tokio::sync::oneshot::Receiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend(listener.local_addr().unwrap());
        let (called, got_call) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(socket).await.unwrap();
            let request = connection.accept().await;
            let _ = called.send(());
            // Held, never polled again: no frame is read or answered from here on.
            let _held = (connection, request);
            std::future::pending::<()>().await;
        });
        (backend, got_call)
    }

    #[tokio::test]
    async fn a_call_to_a_backend_that_falls_silent_fails_at_the_unanswered_ping() {
        let (backend, got_call) = silent_backend().await;
        let settings = LinkSettings {
            keepalive_interval: Duration::from_millis(200),
            keepalive_timeout: Duration::from_millis(200),
            ..LinkSettings::plain()
        };
        let link = Link::new(backend, Arc::new(settings));
        let request = http::Request::new(tonic::body::Body::empty());
        let call = tokio::spawn({
            let link = link.clone();
            async move { link.send(request).await }
        });
        got_call.await.unwrap();
        // Without pings this call would wait for ever; a guard against a hang, not a timing.
        let outcome = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("the dead connection is noticed")
            .unwrap();
        match outcome {
            Err(LinkError::Http2(_)) => {}
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a silent backend answered"),
        }
        // The link is idle again: the next call dials anew.
        assert!(matches!(*link.shared.lock(), State::Idle));
    }
}
