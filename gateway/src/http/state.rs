//! What every handler shares: the upstream, the HTTP-side settings, the per-client limiters, the
//! metrics, and the shutdown signal that ends open SSE streams.

use std::{net::SocketAddr, sync::Arc, time::Duration, time::Instant};

use eventsys::auth::Auth;
use tokio_util::sync::CancellationToken;

use crate::{
    middleware::{Browsers, LimitSettings, Limiters},
    ops::Metrics,
    presence::{Presences, ServiceTokens},
    sse::Hubs,
    upstream::Upstream,
};

/// Settings of the HTTP side.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Interval of SSE keep-alive comments.
    pub(crate) sse_keep_alive: Duration,
    /// Longest an SSE stream stays open (the client then reconnects with `Last-Event-ID`);
    /// `None`: no limit.
    pub(crate) sse_max_duration: Option<Duration>,
    /// How often the gateway reports its streams' presence to the backends.
    pub(crate) presence_interval: Duration,
    /// How long a subject's last stream of a topic may be closed before it is gone.
    pub(crate) presence_debounce: Duration,
    /// Bytes of recent events the topic hubs keep for their SSE clients, all hubs together; a
    /// client further behind catches up from the store.
    pub(crate) sse_buffer: usize,
    /// Largest request body; larger ones get 413.
    pub(crate) body_limit: usize,
    /// The one deadline of a whole REST request (SSE streams excepted), body included.
    pub(crate) request_timeout: Duration,
    pub(crate) limits: LimitSettings,
    /// Which pages may call, and by which host names.
    pub(crate) browsers: Browsers,
    /// One INFO line per request (`--access-log`).
    pub(crate) access_log: bool,
    /// gRPC server reflection on the front door (`--reflection`; by default not in token mode).
    pub(crate) grpc_reflection: bool,
}

impl Settings {
    /// Completes the settings with the address actually listened on (port 0 picks one).
    pub(crate) fn with_listen_addr(mut self, addr: SocketAddr) -> Self {
        self.browsers.hosts.allow_listen_addr(addr);
        self
    }
}

/// Shared by every handler; cloned (one reference count) wherever axum hands state out.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl AppState {
    pub(crate) fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub(crate) struct Shared {
    pub(crate) upstream: Upstream,
    /// Token mode or anonymous, and the policy.
    pub(crate) auth: Arc<Auth>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) limiters: Arc<Limiters>,
    pub(crate) metrics: Arc<Metrics>,
    /// One hub per topic with SSE clients.
    pub(crate) hubs: Hubs,
    /// Who has streams open here, reported to the backends.
    pub(crate) presences: Arc<Presences>,
    /// What the gateway's own calls (presence reports) carry in token mode.
    pub(crate) service: ServiceTokens,
    pub(crate) started: Instant,
    /// Cancelled when the gateway shuts down: open SSE streams end.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled at the shutdown signal, `--shutdown-delay` before `shutdown`: not ready.
    pub(crate) leaving: CancellationToken,
}
