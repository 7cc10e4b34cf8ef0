//! A client's `Idempotency-Key` as both servers read it (REST header or gRPC metadata), the
//! header that marks a replayed answer, and why a keyed write was refused, carried between
//! processes as a gRPC rich error (`google.rpc.ErrorInfo`) rather than in message text.

use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt};

/// The request header (HTTP) and metadata key (gRPC) naming a write: `Idempotency-Key`.
pub const KEY_HEADER: &str = "idempotency-key";
/// Set to `true` on an answer replayed from a key's stored outcome: `Idempotent-Replayed`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest key, in bytes (as Stripe's API; a UUID needs 36).
pub const MAX_KEY_LEN: usize = 255;

/// A well-formed key: 1 to 255 visible ASCII characters. Kept as sent, so the IETF draft's
/// quoted form (`"abc"`) works as well as a bare one, as long as a client repeats it alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// What a malformed key is told; also the API description's words.
pub const KEY_RULE: &str = "Idempotency-Key must be 1 to 255 visible ASCII characters";

impl IdempotencyKey {
    /// The key in `value` (a header's or metadata's bytes), or the rule it breaks.
    pub fn parse(value: &[u8]) -> Result<IdempotencyKey, &'static str> {
        let visible = (1..=MAX_KEY_LEN).contains(&value.len())
            && value.iter().all(|b| (0x21..=0x7e).contains(b));
        match std::str::from_utf8(value) {
            Ok(text) if visible => Ok(IdempotencyKey(text.to_owned())),
            _ => Err(KEY_RULE),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key a gRPC request's metadata carries, if any; INVALID_ARGUMENT for a malformed one.
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Option<IdempotencyKey>, Status> {
        metadata
            .get(KEY_HEADER)
            .map(|value| IdempotencyKey::parse(value.as_bytes()).map_err(Status::invalid_argument))
            .transpose()
    }
}

/// Why a write with a key was refused. Carried as `ErrorInfo { reason, domain }` in the status
/// details, so the gateway can tell a reused key (HTTP 422) from other refusals of its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyConflict {
    /// The key names an earlier request with another body (or method).
    Reused,
    /// The key's first request is still being served.
    InFlight,
}

/// `ErrorInfo.domain` of our reasons.
const DOMAIN: &str = "events.v1";

impl KeyConflict {
    fn reason(self) -> &'static str {
        match self {
            KeyConflict::Reused => "IDEMPOTENCY_KEY_REUSED",
            KeyConflict::InFlight => "IDEMPOTENCY_KEY_IN_FLIGHT",
        }
    }

    /// The words a client reads.
    pub fn message(self) -> &'static str {
        match self {
            KeyConflict::Reused => {
                "this Idempotency-Key was used for a request with a different body"
            }
            KeyConflict::InFlight => {
                "a request with this Idempotency-Key is still in progress; retry later"
            }
        }
    }

    /// FAILED_PRECONDITION for a reused key (the key is bound to another request), ABORTED for
    /// one in flight (a concurrency conflict, worth retrying): each with its reason attached.
    pub fn status(self) -> Status {
        let code = match self {
            KeyConflict::Reused => Code::FailedPrecondition,
            KeyConflict::InFlight => Code::Aborted,
        };
        let details = ErrorDetails::with_error_info(self.reason(), DOMAIN, []);
        Status::with_error_details(code, self.message(), details)
    }

    /// The conflict a status reports, if it is one of ours.
    pub fn of(status: &Status) -> Option<KeyConflict> {
        if !matches!(status.code(), Code::FailedPrecondition | Code::Aborted) {
            return None;
        }
        let info = status.get_details_error_info()?;
        if info.domain != DOMAIN {
            return None;
        }
        [KeyConflict::Reused, KeyConflict::InFlight]
            .into_iter()
            .find(|c| c.reason() == info.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_up_to_255_bytes() {
        for good in [&b"a"[..], b"\"8e03978e-40d5\"", &[b'x'; 255]] {
            assert!(IdempotencyKey::parse(good).is_ok(), "{good:?}");
        }
        for bad in [
            &b""[..],
            b"has space",
            b"tab\t",
            "é".as_bytes(),
            &[b'x'; 256],
        ] {
            assert_eq!(IdempotencyKey::parse(bad), Err(KEY_RULE), "{bad:?}");
        }
    }

    #[test]
    fn conflicts_survive_the_wire() {
        for conflict in [KeyConflict::Reused, KeyConflict::InFlight] {
            let status = conflict.status();
            let wire = status.into_http::<()>();
            let sent = Status::from_header_map(wire.headers()).unwrap();
            assert_eq!(KeyConflict::of(&sent), Some(conflict));
            assert_eq!(sent.message(), conflict.message());
        }
        assert_eq!(KeyConflict::of(&Status::aborted("other")), None);
    }
}
