//! The `events.v1` gRPC contract, generated from `proto/` by the top-level `build.rs` (message
//! types, tonic client and server, the descriptor set behind server reflection), and the small
//! pieces both binaries share: JSON ↔ `Struct`, W3C `traceparent`, and (feature `process`)
//! process plumbing.

#[cfg(feature = "auth")]
pub mod auth;
pub mod backoff;
#[cfg(feature = "process")]
pub mod coalesce;
pub mod gap;
pub mod host;
pub mod json;
#[cfg(feature = "process")]
pub mod listen;
#[cfg(feature = "process")]
pub mod otlp;
#[cfg(feature = "process")]
pub mod process;
#[cfg(feature = "process")]
mod tls_args;
#[cfg(feature = "process")]
pub use tls_args::TlsArgs;
pub mod topics;
pub mod trace;
pub mod write_key;

/// Package `events.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("events.v1");
}

/// Whether a method may be sent again after its call was lost (the `.proto`'s
/// `idempotency_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads: repeat freely.
    NoSideEffects,
    /// Repeating has the effect of doing it once.
    Idempotent,
    /// Not declared: repeating could do it twice.
    Unknown,
}

impl Idempotency {
    /// Whether a lost call may be sent again.
    pub const fn may_repeat(self) -> bool {
        !matches!(self, Idempotency::Unknown)
    }
}

/// Each method's `Idempotency`, as its `.proto` declares it (`idempotency::GET_EVENT`).
pub mod idempotency {
    use super::Idempotency;
    include!(concat!(env!("OUT_DIR"), "/idempotency.rs"));
}

/// The `grpc.health.v1` service name a backend reports SERVING under while it commits the writes
/// of every backend sharing its store (the elected writer of a SQLite file), so the gateway
/// sends writes there first rather than through another backend's hop to it.
pub const WRITER_HEALTH: &str = "events.v1.EventService/writer";

/// The gRPC metadata a backend's health answers carry: `jwt` in token mode, else `none`. A
/// gateway in token mode refuses a backend that does not say `jwt`: it would serve the calls
/// the gateway passes on without reading them to anyone, token or not.
pub const AUTH_MODE_METADATA: &str = "events-auth";

/// The gRPC metadata of a FAILED_PRECONDITION that an `if_revision` or `if_exists` did not
/// hold: the event's revision, `0` when it does not exist for the caller.
pub const REVISION_METADATA: &str = "events-revision";

/// Encoded `FileDescriptorSet` of `proto/` and its imports, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/events_descriptor.bin"));
