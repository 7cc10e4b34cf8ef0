//! A backend as the gateway knows it: its typed address, the counters the balancer weighs and
//! the stats endpoints report, and a snapshot of them for readers outside `upstream`.

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
};

/// The backend that served (or failed) a call. Carried as a response extension and in the
/// call policy's errors, never as a header parsed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Backend(pub(crate) SocketAddr);

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether a backend is in the balancers, and if not why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    Up,
    Down(Down),
}

/// Why a backend is out of the balancers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Down {
    /// Not health-checked yet.
    Unchecked = 1,
    /// Its health check failed: the connection was refused or the call errored.
    Refused,
    /// It said NOT_SERVING (draining, or its store is not ready).
    NotServing,
    /// Its health checks missed their deadline, three in a row.
    MissedDeadlines,
    /// A call found it unreachable.
    Unreachable,
    /// It runs in anonymous mode while this gateway is in token mode: it would serve anyone the
    /// calls the gateway passes on without reading them.
    Anonymous,
}

impl Down {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Down::Unchecked => "not checked yet",
            Down::Refused => "refused",
            Down::NotServing => "NOT_SERVING",
            Down::MissedDeadlines => "missed deadlines",
            Down::Unreachable => "unreachable",
            Down::Anonymous => "anonymous mode",
        }
    }

    fn from_u8(value: u8) -> Option<Down> {
        [
            Down::Unchecked,
            Down::Refused,
            Down::NotServing,
            Down::MissedDeadlines,
            Down::Unreachable,
            Down::Anonymous,
        ]
        .into_iter()
        .find(|d| *d as u8 == value)
    }
}

/// What the gateway counts for one backend address, shared by both balancers' endpoints.
#[derive(Debug)]
pub(crate) struct BackendStats {
    backend: Backend,
    /// 0: up; else a `Down`.
    health: AtomicU8,
    in_flight: AtomicU64,
    streams: AtomicU64,
    attempts: AtomicU64,
    failures: AtomicU64,
    cost_bits: AtomicU64,
}

/// One backend's figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BackendSnapshot {
    pub(crate) backend: Backend,
    /// Why the balancers do not hold it now; `None` while they do.
    pub(crate) down: Option<Down>,
    /// Calls sent to it and not finished, open streams included.
    pub(crate) in_flight: u64,
    /// Server-streaming calls open now.
    pub(crate) streams: u64,
    /// Calls sent since it was discovered.
    pub(crate) attempts: u64,
    /// Calls that found it unreachable since it was discovered.
    pub(crate) failures: u64,
    /// The last cost the request or write balancer weighed it at: latency estimate (ns) ×
    /// (pending + 1), floored.
    pub(crate) cost: f64,
}

impl BackendStats {
    pub(crate) fn new(backend: Backend) -> Self {
        Self {
            backend,
            health: AtomicU8::new(Down::Unchecked as u8),
            in_flight: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            cost_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn set_health(&self, health: Health) {
        let value = match health {
            Health::Up => 0,
            Health::Down(down) => down as u8,
        };
        self.health.store(value, Ordering::Relaxed);
    }

    pub(crate) fn streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }

    pub(crate) fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Unary calls in flight: what latency-based balancing multiplies by.
    pub(crate) fn unary(&self) -> u64 {
        self.in_flight
            .load(Ordering::Relaxed)
            .saturating_sub(self.streams())
    }

    pub(crate) fn count_attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_cost(&self, cost: f64) {
        self.cost_bits.store(cost.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> BackendSnapshot {
        BackendSnapshot {
            backend: self.backend,
            down: Down::from_u8(self.health.load(Ordering::Relaxed)),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            streams: self.streams(),
            attempts: self.attempts(),
            failures: self.failures.load(Ordering::Relaxed),
            cost: f64::from_bits(self.cost_bits.load(Ordering::Relaxed)),
        }
    }
}

impl BackendSnapshot {
    /// Whether the balancers hold it now.
    pub(crate) fn healthy(&self) -> bool {
        self.down.is_none()
    }
}

/// Counts a call in flight (and, for a stream, an open stream) until dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    stats: Arc<BackendStats>,
    stream: bool,
}

impl InFlight {
    pub(crate) fn new(stats: Arc<BackendStats>, stream: bool) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        if stream {
            stats.streams.fetch_add(1, Ordering::Relaxed);
        }
        Self { stats, stream }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.stream {
            self.stats.streams.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
