//! What every handler shares: the upstream, the HTTP-side settings, the metrics, and the
//! shutdown signal that ends open SSE streams.

use std::{sync::Arc, time::Duration, time::Instant};

use eventsys::auth::Auth;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::upstream::Upstream;

/// Settings of the HTTP side.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Interval of SSE keep-alive comments.
    pub(crate) sse_keep_alive: Duration,
    /// Longest an SSE stream stays open (the client then reconnects with `Last-Event-ID`);
    /// `None`: no limit.
    pub(crate) sse_max_duration: Option<Duration>,
    /// Largest request body; larger ones get 413.
    pub(crate) body_limit: usize,
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) upstream: Upstream,
    /// Token mode or anonymous, and the policy.
    pub(crate) auth: Arc<Auth>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) started: Instant,
    /// Cancelled when the gateway shuts down: open SSE streams end.
    pub(crate) shutdown: CancellationToken,
}
