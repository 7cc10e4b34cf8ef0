//! The accept loop: one task per connection, HTTP/1.1 or HTTP/2 (by preface or ALPN), plain or
//! TLS. It bounds what a client can hold before the router sees a request: open connections (a
//! cap, refusals logged), time to send a request head (also an idle keep-alive connection's
//! life), a TLS handshake, and HTTP/2 streams per connection.

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{head::HeadWatch, throttle::Throttle};
use crate::ops::Metrics;

/// What one client connection may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Open connections; more are accepted and closed at once, with a log line.
    pub(crate) max_connections: usize,
    /// Time to send a whole request head (HTTP/1.1), which is also how long a keep-alive
    /// connection may sit idle, and to complete a TLS handshake.
    pub(crate) header_timeout: Duration,
    /// Concurrent streams on one HTTP/2 connection.
    pub(crate) max_streams: u32,
    /// Interval of HTTP/2 pings that find dead peers; a ping unanswered for as long closes.
    pub(crate) keepalive: Duration,
}

/// Largest HTTP/1.1 request head, and what a connection buffers of a response.
const MAX_HEAD: usize = 8 * 1024;

/// What an HTTP/2 client sends first; anything that differs from it early is HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client sends enough to tell HTTP/1 from HTTP/2 within `wait`.
async fn sends_within(socket: &TcpStream, wait: Duration) -> bool {
    let sniff = async {
        let mut first = [0u8; H2_PREFACE.len()];
        loop {
            match socket.peek(&mut first).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == first.len() || first[..n] != H2_PREFACE[..n] => return true,
                // Part of the preface so far: wait for the rest.
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(wait, sniff).await.unwrap_or(false)
}

/// Pause after an accept error, so a full descriptor table is not a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

static ACCEPT_ERRORS: Throttle = Throttle::new(Duration::from_secs(1));
static REFUSALS: Throttle = Throttle::new(Duration::from_secs(1));

/// Serves `app` on `listener` until `stop` is cancelled, then waits up to `drain` for open
/// connections to finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = auto::Builder::new(TokioExecutor::new());
    // The buffer bounds what one connection holds of a response its client does not read, and
    // a request head (8 KiB, as Tomcat's and nginx's per-line default; beyond it 431, or 414
    // when the request line is what did not fit: `HeadWatch`). Any
    // larger bound costs every connection 8 KiB more: hyper then keeps 8 KiB free in its read
    // buffer after each read, which doubles it to 16 KiB (measured: an open SSE stream holds
    // 20.5 KiB of gateway memory with 16 or 64 KiB here, 13.8 KiB with 8).
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .keep_alive_interval(limits.keepalive)
        .keep_alive_timeout(limits.keepalive);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE/ENFILE above all: the connection waits in the backlog until a
                // descriptor frees up.
                if let Some(held_back) = ACCEPT_ERRORS.due() {
                    tracing::error!(error = %err, held_back, "cannot accept connections");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connection_refused();
            if let Some(held_back) = REFUSALS.due() {
                tracing::warn!(%peer, max = limits.max_connections, held_back, "connection limit reached: refusing connections");
            }
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut request: http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let http = http.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let open = metrics.connection_opened();
        tokio::spawn(async move {
            let _held = (slot, open);
            let served = match tls {
                None => {
                    // hyper's version detection waits for bytes without a timer of its own.
                    if !sends_within(&socket, limits.header_timeout).await {
                        tracing::debug!(%peer, "connection sent nothing in time");
                        return;
                    }
                    let connection = http.serve_connection_with_upgrades(
                        TokioIo::new(HeadWatch::new(socket)),
                        service,
                    );
                    watcher.watch(connection.into_owned()).await
                }
                Some(tls) => {
                    let handshake = tokio::time::timeout(limits.header_timeout, tls.accept(socket));
                    let Ok(Ok(stream)) = handshake.await else {
                        tracing::debug!(%peer, "TLS handshake failed or timed out");
                        return;
                    };
                    let connection = http.serve_connection_with_upgrades(
                        TokioIo::new(HeadWatch::new(stream)),
                        service,
                    );
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => tracing::warn!("drain deadline passed: closing open connections"),
    }
}
