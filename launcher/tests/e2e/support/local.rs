//! Servers in the test's own process: the real backend and gateway, served by their libraries'
//! `serve(listener, …, shutdown)` on `127.0.0.1:0` in the test's runtime and configured by the
//! binaries' own flags and rules (`eventsvc::backend_from`, `gateway::config_from`). Nothing is
//! spawned, nothing waits for a process to start: the socket is bound before `serve` runs, so a
//! client's first connection waits in its backlog. For the tests where the process is not the
//! point; `launch` has real processes for the others.

use std::{fmt::Display, net::SocketAddr, path::Path};

use eventsys::v1::event_service_client::EventServiceClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::clients::{grpc_channel, http};

/// A server running in this process, shut down (it drains, as on SIGTERM) when dropped.
pub(crate) struct Local {
    pub addr: SocketAddr,
    /// A backend's Prometheus endpoint.
    metrics: Option<SocketAddr>,
    stop: CancellationToken,
}

/// A listener on a free loopback port.
async fn free_port() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port")
}

impl Local {
    /// A backend over the SQLite file at `db`, with the `eventsvc` binary's `flags`.
    pub(crate) async fn backend(db: &Path, flags: &[&str]) -> Local {
        Local::backend_on(free_port().await, db, flags).await
    }

    /// `backend` on `listener` (a port the test chose before).
    pub(crate) async fn backend_on(listener: TcpListener, db: &Path, flags: &[&str]) -> Local {
        let store = format!("sqlite://{}", db.display());
        let mut args = vec!["eventsvc", "--store", &store];
        args.extend_from_slice(flags);
        let addr = listener.local_addr().expect("bound address");
        let backend = eventsvc::backend_from(args, addr)
            .await
            .unwrap_or_else(|err| panic!("backend {flags:?}: {err}"));
        Local::serve_backend(listener, backend).await
    }

    /// `backend` (built by the test, over a store of its own) on `listener`, with its metrics
    /// on a port of their own.
    pub(crate) async fn serve_backend(listener: TcpListener, backend: eventsvc::Backend) -> Local {
        let addr = listener.local_addr().expect("bound address");
        let metrics = free_port().await;
        let metrics_addr = metrics.local_addr().expect("bound address");
        let backend = backend.metrics(metrics);
        Local::spawn(addr, Some(metrics_addr), move |stop| {
            eventsvc::serve(listener, backend, stop.cancelled_owned())
        })
    }

    /// A gateway over `backends`, with the `gateway` binary's `flags`.
    pub(crate) async fn gateway(backends: &[SocketAddr], flags: &[&str]) -> Local {
        let list = backends
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec!["gateway", "--backends", &list];
        args.extend_from_slice(flags);
        let listener = free_port().await;
        let addr = listener.local_addr().expect("bound address");
        let config = gateway::config_from(args, addr)
            .await
            .unwrap_or_else(|err| panic!("gateway {flags:?}: {err}"));
        Local::spawn(addr, None, move |stop| {
            gateway::serve(listener, config, stop.cancelled_owned())
        })
    }

    fn spawn<F, E>(
        addr: SocketAddr,
        metrics: Option<SocketAddr>,
        serve: impl FnOnce(CancellationToken) -> F,
    ) -> Local
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let stop = CancellationToken::new();
        let served = serve(stop.clone());
        tokio::spawn(async move {
            if let Err(err) = served.await {
                panic!("server on {addr} failed: {err}");
            }
        });
        Local {
            addr,
            metrics,
            stop,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) async fn channel(&self) -> Channel {
        grpc_channel(self.addr).await
    }

    pub(crate) async fn client(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel().await)
    }

    /// A backend's metrics exposition.
    pub(crate) async fn metrics(&self) -> String {
        let addr = self.metrics.expect("a backend's metrics endpoint");
        http()
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("metrics reachable")
            .text()
            .await
            .expect("metrics text")
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
