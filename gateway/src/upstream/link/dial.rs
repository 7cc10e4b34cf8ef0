//! Connecting a link: TCP (and TLS with ALPN h2), the HTTP/2 handshake with our windows and
//! limits, and the connection's task, which pings the backend so that a silent peer (a
//! blackholed host) fails its streams instead of holding them for ever.

use std::{
    io,
    sync::{Arc, atomic::AtomicU64, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use h2::{
    Ping,
    client::{Builder, Connection, SendRequest},
};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use eventsys::coalesce::Coalesce;

use super::{BackendTls, LinkShared, State};

/// HTTP/2 flow-control windows towards each backend (hyper's defaults are 2 and 5 MiB).
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Reset streams each backend connection remembers (h2's default is 10). SSE streams of slow
/// clients are paused by resetting them, often; data the backend sent before it saw a reset
/// must land on a remembered stream, as a forgotten one counts as the backend misbehaving.
const RESET_STREAMS_REMEMBERED: usize = 16 * 1024;

/// Headers a backend may send on one response.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// What received small DATA frames waiting to be read may cost in framing overhead before h2
/// closes the connection as a flood (each frame under 256 bytes counts 256 − its length). h2's
/// default, half the connection window (2 MiB here), is about 10,000 buffered events: one
/// publish fanned out to thousands of SSE streams on one connection reached it, closing the
/// connection and every stream on it (`too_many_data_frames`). 32 MiB is some 130,000 frames,
/// around 13 MB of bookkeeping at worst, next to the windows' 4 MiB of payload.
const DATA_FRAME_BUDGET: usize = 32 * 1024 * 1024;

/// How every link connects.
#[derive(Clone)]
pub(crate) struct LinkSettings {
    pub(crate) connect_timeout: Duration,
    /// A ping every `keepalive_interval`, answered within `keepalive_timeout` or the
    /// connection is closed.
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) tls: Option<BackendTls>,
}

#[cfg(test)]
impl LinkSettings {
    /// Plain TCP with the defaults the gateway uses, for tests.
    pub(crate) fn plain() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Dials `link`'s backend and records the outcome in its state: the open connection, whose
/// task is started here, or idle again after a failure.
pub(super) async fn dial(link: Arc<LinkShared>) -> Result<SendRequest<Bytes>, Arc<io::Error>> {
    let settings = link.settings.clone();
    let dialed = tokio::time::timeout(settings.connect_timeout, async {
        // Unit tests' backends live on an in-memory network, where paused time cannot run
        // ahead of bytes in flight (it does over real sockets).
        #[cfg(test)]
        if let Some(io) = crate::testing::memory_connect(link.backend.0) {
            return handshake(io?, &link).await;
        }
        let tcp = TcpStream::connect(link.backend.0).await?;
        tcp.set_nodelay(true)?;
        match &settings.tls {
            None => handshake(tcp, &link).await,
            Some(tls) => {
                let name = tls
                    .name
                    .clone()
                    .unwrap_or(ServerName::IpAddress(link.backend.0.ip().into()));
                let stream = TlsConnector::from(tls.config.clone())
                    .connect(name, tcp)
                    .await?;
                handshake(stream, &link).await
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")));
    let mut state = link.lock();
    match dialed {
        Ok((sender, generation, sever)) => {
            *state = State::Open {
                sender: sender.clone(),
                generation,
                sever,
            };
            Ok(sender)
        }
        Err(err) => {
            *state = State::Idle;
            Err(Arc::new(err))
        }
    }
}

/// The HTTP/2 handshake over `io`; spawns the connection's task.
async fn handshake<T>(
    io: T,
    link: &Arc<LinkShared>,
) -> io::Result<(SendRequest<Bytes>, u64, CancellationToken)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
        .max_header_list_size(MAX_HEADER_LIST)
        .data_frame_budget(DATA_FRAME_BUDGET)
        .enable_push(false)
        .handshake(Coalesce::new(io))
        .await
        .map_err(io::Error::other)?;
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    let sever = CancellationToken::new();
    tokio::spawn(drive(
        connection,
        Arc::downgrade(link),
        generation,
        sever.clone(),
    ));
    Ok((sender, generation, sever))
}

/// Runs one connection until it ends, a ping goes unanswered or it is severed; then marks its link
/// idle (unless a newer connection has replaced it), so the next call dials again.
async fn drive<T>(
    mut connection: Connection<Coalesce<T>, Bytes>,
    link: std::sync::Weak<LinkShared>,
    generation: u64,
    sever: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (interval, timeout, backend) = match link.upgrade() {
        Some(link) => (
            link.settings.keepalive_interval,
            link.settings.keepalive_timeout,
            link.backend,
        ),
        None => return,
    };
    let mut pings = connection.ping_pong().expect("taken once, here");
    let keepalive = async {
        loop {
            tokio::time::sleep(interval).await;
            match tokio::time::timeout(timeout, pings.ping(Ping::opaque())).await {
                Ok(Ok(_)) => continue,
                Ok(Err(err)) => return format!("ping failed: {err}"),
                Err(_) => return format!("no ping answer within {timeout:?}"),
            }
        }
    };
    let (reason, severed) = tokio::select! {
        ended = &mut connection => match ended {
            Ok(()) => ("closed".to_owned(), false),
            Err(err) => (err.to_string(), false),
        },
        reason = keepalive => (reason, false),
        () = sever.cancelled() => ("severed: the backend stopped answering".to_owned(), true),
    };
    tracing::debug!(%backend, %reason, "backend connection ended");
    if let Some(link) = link.upgrade() {
        {
            let mut state = link.lock();
            if matches!(&*state, State::Open { generation: g, .. } if *g == generation) {
                *state = State::Idle;
            }
        }
        if !severed {
            link.lost.notify_waiters();
        }
    }
}
