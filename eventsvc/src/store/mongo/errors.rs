//! Driver errors as the store's: each MongoDB error is mapped once, here.

use mongodb::error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR, WriteFailure};

use crate::store::StoreError;

/// MongoDB's code for a write refused for want of disk space.
const OUT_OF_DISK_SPACE: i32 = 14031;

/// MongoDB's code for a second document with a unique index's value.
pub(super) const DUPLICATE_KEY: i32 = 11000;

/// A second document with a unique index's value (an event id already stored).
pub(super) fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|e| e.code == DUPLICATE_KEY)),
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// A full disk is `Full`; errors that say the server cannot be reached (now) are
/// `Unavailable`, so the gateway retries elsewhere; anything else is a fault.
pub(super) fn mongo_error(op: &'static str, err: mongodb::error::Error) -> StoreError {
    let code = match err.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        _ => None,
    };
    if code == Some(OUT_OF_DISK_SPACE) {
        return StoreError::Full { op };
    }
    let unreachable = matches!(
        *err.kind,
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
    ) || err.contains_label("RetryableWriteError")
        || err.contains_label(TRANSIENT_TRANSACTION_ERROR);
    StoreError::from_driver(op, err, unreachable)
}

/// One document's refusal in a command that wrote several: `Full` for want of disk space, else
/// a fault (the server's words kept for the log, never sent to a client).
pub(super) fn write_error(op: &'static str, code: i32, message: &str) -> StoreError {
    if code == OUT_OF_DISK_SPACE {
        return StoreError::Full { op };
    }
    StoreError::Internal {
        op,
        source: format!("write error {code}: {message}").into(),
    }
}

/// The first line of a driver error, for a one-line start-up failure.
pub(super) fn one_line(err: &mongodb::error::Error) -> String {
    let text = err.to_string();
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_are_unavailable_and_the_rest_internal() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = mongo_error("get", mongodb::error::Error::from(refused));
        assert!(
            matches!(err, StoreError::Unavailable { op: "get", .. }),
            "{err:?}"
        );
        let err = mongo_error("get", mongodb::error::Error::custom("bug"));
        assert!(matches!(err, StoreError::Internal { .. }), "{err:?}");
    }
}
