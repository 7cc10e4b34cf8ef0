//! What crosses the writer's socket: length-prefixed JSON frames, a request id in each so the
//! answers may come back in any order.

use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use super::super::writer::{Done, Op};
use crate::store::StoreError;

/// The largest frame: a write of the servers' largest request (4 MiB), encoded, fits.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A write sent to the leader (as the follower writes it: the write stays the follower's
/// until answered, so it can commit it itself if the leader dies first).
#[derive(Serialize)]
pub(super) struct Sending<'a> {
    pub(super) id: u64,
    pub(super) op: &'a Op,
}

/// A write as the leader reads it.
#[derive(Deserialize)]
pub(super) struct Request {
    pub(super) id: u64,
    pub(super) op: Op,
}

/// The leader's answer to the request `id`.
#[derive(Serialize, Deserialize)]
pub(super) struct Response {
    pub(super) id: u64,
    pub(super) answer: std::result::Result<Done, Refusal>,
}

/// A `StoreError` as it crosses the socket (the operation is the sender's own).
#[derive(Serialize, Deserialize)]
pub(super) enum Refusal {
    NotFound,
    AlreadyExists,
    InvalidCursor,
    PreconditionFailed(Option<u64>),
    KeyReused,
    KeyInFlight,
    Unavailable(String),
    Full,
    Unsupported(String),
    Corrupt { id: String, reason: String },
    Internal(String),
}

impl Refusal {
    pub(super) fn of(err: StoreError) -> Refusal {
        match err {
            StoreError::NotFound => Refusal::NotFound,
            StoreError::AlreadyExists => Refusal::AlreadyExists,
            StoreError::InvalidCursor => Refusal::InvalidCursor,
            StoreError::PreconditionFailed { current } => Refusal::PreconditionFailed(current),
            StoreError::KeyReused => Refusal::KeyReused,
            StoreError::KeyInFlight => Refusal::KeyInFlight,
            StoreError::Unavailable { op: _, reason } => Refusal::Unavailable(reason),
            StoreError::Full { op: _ } => Refusal::Full,
            StoreError::Unsupported(what) => Refusal::Unsupported(what),
            StoreError::Corrupt { id, reason } => Refusal::Corrupt { id, reason },
            StoreError::Internal { op: _, source } => Refusal::Internal(source.to_string()),
        }
    }

    pub(super) fn into_error(self, op: &'static str) -> StoreError {
        match self {
            Refusal::NotFound => StoreError::NotFound,
            Refusal::AlreadyExists => StoreError::AlreadyExists,
            Refusal::InvalidCursor => StoreError::InvalidCursor,
            Refusal::PreconditionFailed(current) => StoreError::PreconditionFailed { current },
            Refusal::KeyReused => StoreError::KeyReused,
            Refusal::KeyInFlight => StoreError::KeyInFlight,
            Refusal::Unavailable(reason) => StoreError::Unavailable { op, reason },
            Refusal::Full => StoreError::Full { op },
            Refusal::Unsupported(what) => StoreError::Unsupported(what),
            Refusal::Corrupt { id, reason } => StoreError::Corrupt { id, reason },
            Refusal::Internal(text) => StoreError::Internal {
                op,
                source: text.into(),
            },
        }
    }
}

pub(super) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}
