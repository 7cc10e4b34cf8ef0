//! Backends on one SQLite file behind a gateway: in this process (`System::start`, the
//! default) or as real processes (`System::launch`, for tests that signal or kill them).

use std::{net::SocketAddr, path::PathBuf};

use super::{
    START_TIMEOUT,
    launch::{Launch, Process},
    local::Local,
    metrics::{Scrape, healthy_backends},
};

/// A running server, however it runs.
pub(crate) trait Served {
    fn addr(&self) -> SocketAddr;
}

impl Served for Local {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Served for Process {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A gateway in front of backends, however they run and whatever their store: what a test of
/// the REST contract needs.
pub(crate) trait Front: Sync {
    /// `http://` the gateway's address and `path`.
    fn url(&self, path: &str) -> String;
    /// How many backends it fronts.
    fn backends(&self) -> usize;
}

impl<S: Served + Sync> Front for System<S> {
    fn url(&self, path: &str) -> String {
        System::url(self, path)
    }

    fn backends(&self) -> usize {
        self.backends.len()
    }
}

/// Backends on one SQLite file behind a gateway, with the gateway holding them all healthy.
pub(crate) struct System<S = Local> {
    pub backends: Vec<S>,
    pub gateway: S,
    pub db: PathBuf,
    /// Sent with `/metrics` reads in token mode.
    admin_token: Option<String>,
    _dir: tempfile::TempDir,
}

impl System<Local> {
    /// `n` backends and a gateway in this process.
    pub(crate) async fn start(n: usize) -> System {
        System::start_with(
            n,
            &[],
            None,
            tempfile::tempdir().expect("temporary directory"),
        )
        .await
    }

    /// `n` backends and a gateway in this process, all given `extra` (e.g. the auth flags);
    /// `/metrics` is read with `admin_token`.
    pub(crate) async fn start_with(
        n: usize,
        extra: &[&str],
        admin_token: Option<String>,
        dir: tempfile::TempDir,
    ) -> System {
        let db = dir.path().join("events.db");
        let mut backends = Vec::new();
        for _ in 0..n {
            backends.push(Local::backend(&db, extra).await);
        }
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let gateway = Local::gateway(&addrs, extra).await;
        System::ready(backends, gateway, admin_token, dir).await
    }
}

impl System<Process> {
    /// `n` backends and a gateway as real processes.
    pub(crate) async fn launch(n: usize) -> System<Process> {
        System::launch_with(
            n,
            &[],
            None,
            tempfile::tempdir().expect("temporary directory"),
        )
        .await
    }

    /// `n` backends and a gateway as real processes, all given `extra`.
    pub(crate) async fn launch_with(
        n: usize,
        extra: &[&str],
        admin_token: Option<String>,
        dir: tempfile::TempDir,
    ) -> System<Process> {
        let db = dir.path().join("events.db");
        let mut backends = Vec::new();
        for _ in 0..n {
            backends.push(Launch::backend(&db).flags(extra).start().await);
        }
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let gateway = Launch::gateway(&addrs).flags(extra).start().await;
        System::ready(backends, gateway, admin_token, dir).await
    }
}

impl<S: Served> System<S> {
    async fn ready(
        backends: Vec<S>,
        gateway: S,
        admin_token: Option<String>,
        dir: tempfile::TempDir,
    ) -> System<S> {
        let system = System {
            db: dir.path().join("events.db"),
            backends,
            gateway,
            admin_token,
            _dir: dir,
        };
        system.wait_healthy(system.backends.len()).await;
        system
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    /// Waits until the gateway's balancer holds `n` backends, as its `/metrics` reports.
    pub(crate) async fn wait_healthy(&self, n: usize) {
        wait_healthy(self.gateway.addr(), self.admin_token.as_deref(), n).await;
    }
}

/// Waits until the gateway at `gateway` holds `n` backends in its balancer, as its `/metrics`
/// reports (read with `admin_token` in token mode).
pub(crate) async fn wait_healthy(gateway: SocketAddr, admin_token: Option<&str>, n: usize) {
    Scrape::gateway(gateway)
        .token(admin_token)
        .until(&format!("{n} healthy backends"), START_TIMEOUT, |text| {
            healthy_backends(text) == n
        })
        .await;
}

/// One backend on a fresh SQLite file behind a gateway, each started with its own flags, and
/// the gateway holding the backend as healthy.
pub(crate) struct Single<S = Local> {
    pub gateway: S,
    /// Kept running (and its store) for as long as the gateway.
    pub backend: S,
    _dir: tempfile::TempDir,
}

impl Single<Local> {
    /// Both in this process.
    pub(crate) async fn start(backend_flags: &[&str], gateway_flags: &[&str]) -> Single {
        let dir = tempfile::tempdir().expect("temporary directory");
        let backend = Local::backend(&dir.path().join("events.db"), backend_flags).await;
        let gateway = Local::gateway(&[backend.addr], gateway_flags).await;
        wait_healthy(gateway.addr, None, 1).await;
        Single {
            gateway,
            backend,
            _dir: dir,
        }
    }
}

impl Single<Process> {
    /// Both as real processes.
    pub(crate) async fn launch(backend_flags: &[&str], gateway_flags: &[&str]) -> Single<Process> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let backend = Launch::backend(&dir.path().join("events.db"))
            .flags(backend_flags)
            .start()
            .await;
        let gateway = Launch::gateway(&[backend.addr])
            .flags(gateway_flags)
            .start()
            .await;
        wait_healthy(gateway.addr, None, 1).await;
        Single {
            gateway,
            backend,
            _dir: dir,
        }
    }
}
