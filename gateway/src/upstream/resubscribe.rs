//! The one rule for a live stream whose backend stream ended (SSE hubs and catch-ups, the gRPC
//! front door's `Subscribe`): wait a jittered, doubling pause and subscribe again after the
//! last `seq` forwarded, unless the answer is one that no other backend, and no later try,
//! would change.

use std::time::Duration;

use eventsys::backoff::Backoff;
use tonic::Code;

/// Pauses between attempts to subscribe again: 50 ms doubling to 2 s, full jitter, so that
/// the hubs of a lost backend do not all move to the next one at once.
pub(crate) const RESUBSCRIBE: Backoff =
    match Backoff::new(Duration::from_millis(50), Duration::from_secs(2), 1.0) {
        Ok(backoff) => backoff,
        Err(_) => panic!("the resubscribe backoff's bounds are valid"),
    };

/// Whether an answer to a (re)subscription or catch-up ends the client's stream: the request
/// itself is refused (a bad topic or resume point, a token without the right or expired). The
/// client reconnects with a fresh token and its resume point. Everything else (no backend, a
/// lost connection, a backend out of room, a deadline) may pass, and is tried again.
pub(crate) fn is_permanent(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_of_the_request_itself_are_permanent() {
        let permanent = [
            Code::InvalidArgument,
            Code::OutOfRange,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
        ];
        let passing = [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
        ];
        assert_eq!(
            permanent.len() + passing.len(),
            17,
            "every gRPC code is listed"
        );
        for code in permanent {
            assert!(is_permanent(code), "{code:?}");
        }
        for code in passing {
            assert!(!is_permanent(code), "{code:?}");
        }
    }

    #[test]
    fn pauses_run_from_50_ms_to_2_s() {
        assert_eq!(RESUBSCRIBE.min(), Duration::from_millis(50));
        assert_eq!(RESUBSCRIBE.max(), Duration::from_secs(2));
        let mut attempts = RESUBSCRIBE.attempts();
        for _ in 0..20 {
            let pause = attempts.next_pause();
            assert!(pause >= RESUBSCRIBE.min() && pause <= RESUBSCRIBE.max());
        }
    }
}
