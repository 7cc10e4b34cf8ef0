//! Errors as REST clients see them: the contract's JSON body (`error` and `message` with the same
//! text, `code` the gRPC status name), the one mapping from gRPC codes to HTTP statuses, and the
//! conversions into it from the call policy's errors and from extractor rejections.

use axum::{
    Json,
    extract::rejection::{BytesRejection, PathRejection, QueryRejection},
    response::{IntoResponse, Response},
};
use std::time::Duration;

use eventsys::write_key::KeyConflict;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use tonic::{Code, Status};
use utoipa::ToSchema;

use crate::upstream::{Backend, CallError, Failure};

#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    /// The gRPC code it stands for: the body's `code` names it, a gRPC client gets it.
    pub(crate) code: Code,
    pub(crate) message: String,
    /// The backend that produced the error, when one did.
    pub(crate) backend: Option<Backend>,
    /// `WWW-Authenticate` of a 401.
    pub(crate) challenge: Option<&'static str>,
    /// `Retry-After` of a 429.
    pub(crate) retry_after: Option<Duration>,
    /// A 412's current revision of the event (none: it does not exist for the caller).
    pub(crate) revision: Option<u64>,
}

/// HTTP status and gRPC status name for a gRPC code (the usual gateway table).
pub(crate) fn http_status(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::Ok => (StatusCode::OK, "OK"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "FAILED_PRECONDITION"),
        Code::OutOfRange => (StatusCode::BAD_REQUEST, "OUT_OF_RANGE"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
        Code::Aborted => (StatusCode::CONFLICT, "ABORTED"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        Code::Cancelled => (
            StatusCode::from_u16(499).expect("499 is a valid status"),
            "CANCELLED",
        ),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
        Code::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "DATA_LOSS"),
    }
}

impl ApiError {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            status: http_status(code).0,
            code,
            message: message.into(),
            backend: None,
            challenge: None,
            retry_after: None,
            revision: None,
        }
    }

    /// An error the gateway itself answers with, outside the gRPC table (413, 404 route, …).
    pub(crate) fn http(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            backend: None,
            challenge: None,
            retry_after: None,
            revision: None,
        }
    }

    pub(crate) fn no_backend() -> Self {
        Self::new(Code::Unavailable, "no backend available")
    }

    /// The call's backend was lost mid-call and it could not be sent again.
    pub(crate) fn connection_lost() -> Self {
        Self::new(
            Code::Unavailable,
            "backend connection lost; the request may not have been applied",
        )
    }

    pub(crate) fn not_found() -> Self {
        Self::new(Code::NotFound, "event not found")
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// 413: the body is over the limit, whether declared or found while reading.
    pub(crate) fn too_large() -> Self {
        Self::http(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            "request body too large",
        )
    }
}

impl From<CallError> for ApiError {
    fn from(err: CallError) -> Self {
        let (status, backend) = match err.failure {
            Failure::NoBackend => return Self::no_backend(),
            Failure::Unreachable {
                maybe_applied: false,
            } => return Self::no_backend(),
            Failure::Unreachable {
                maybe_applied: true,
            } => return Self::connection_lost(),
            Failure::TimedOut => return Self::new(Code::DeadlineExceeded, "request timed out"),
            Failure::Status { status, backend } => (status, backend),
        };
        // The backends apply the same token rules; their refusals keep the HTTP shape.
        if status.code() == Code::Unauthenticated {
            return ApiError {
                challenge: Some(r#"Bearer realm="events", error="invalid_token""#),
                ..Self::new(Code::Unauthenticated, "invalid token")
            };
        }
        // A keyed write refused: a reused key is 422 (its code alone would say 400), one in
        // flight is the table's 409, told when to come back.
        match KeyConflict::of(&status) {
            Some(KeyConflict::Reused) => {
                return ApiError {
                    backend,
                    ..Self::http(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        Code::FailedPrecondition,
                        KeyConflict::Reused.message(),
                    )
                };
            }
            Some(KeyConflict::InFlight) => {
                return ApiError {
                    backend,
                    retry_after: Some(Duration::from_secs(1)),
                    ..Self::new(Code::Aborted, KeyConflict::InFlight.message())
                };
            }
            None => {}
        }
        // An `If-Match` that did not hold: 412, with the revision the backend found. (Other
        // FAILED_PRECONDITIONs are the table's 400.)
        if let Some(revision) = precondition_failed(&status) {
            return ApiError {
                backend,
                revision,
                ..Self::http(
                    StatusCode::PRECONDITION_FAILED,
                    Code::FailedPrecondition,
                    status.message(),
                )
            };
        }
        // Not a backend's answer: the gateway could not read the reply (too large, malformed).
        if backend.is_none()
            && matches!(
                status.code(),
                Code::OutOfRange | Code::Internal | Code::Unknown | Code::DataLoss
            )
        {
            tracing::error!(code = ?status.code(), message = status.message(), "unreadable backend reply");
            return Self::http(
                StatusCode::BAD_GATEWAY,
                Code::Internal,
                "a backend sent a reply the gateway cannot read",
            );
        }
        // Backends word their errors for clients; transport and internal failures carry
        // driver text and addresses, which stay in the log.
        let message = match status.code() {
            Code::Unknown | Code::Internal | Code::DataLoss => {
                tracing::error!(code = ?status.code(), message = status.message(), "backend call failed");
                "internal error".to_owned()
            }
            _ => status.message().to_owned(),
        };
        Self {
            backend,
            ..Self::new(status.code(), message)
        }
    }
}

/// A backend's refusal of an `If-Match` that did not hold: `Some` with the event's revision
/// (`None`: it does not exist for the caller); `None` for any other answer.
pub(crate) fn precondition_failed(status: &Status) -> Option<Option<u64>> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    let found = status.metadata().get(eventsys::REVISION_METADATA)?;
    let revision = found.to_str().ok().and_then(|r| r.parse::<u64>().ok());
    Some(revision.filter(|r| *r > 0))
}

// axum's rejection texts are its own wording (and name Rust types); clients get ours.
impl From<QueryRejection> for ApiError {
    fn from(_: QueryRejection) -> Self {
        Self::bad_request("invalid query string")
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        Self::bad_request("invalid path: it must be valid UTF-8 once percent-decoded")
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large()
        } else {
            Self::bad_request("cannot read the request body")
        }
    }
}

/// Every error's body: the text under both names old clients read, and the gRPC status name.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": "event not found", "message": "event not found", "code": "NOT_FOUND"}))]
pub(crate) struct ErrorBody {
    /// What went wrong, for people.
    error: String,
    /// The same text.
    message: String,
    /// The gRPC status name it maps from (`INVALID_ARGUMENT`, `NOT_FOUND`, …).
    #[schema(pattern = "^[A-Z_]+$")]
    code: &'static str,
    /// On a 412: the event's current revision (absent when it does not exist for the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, minimum = 1, nullable = false)]
    revision: Option<u64>,
}

impl ErrorBody {
    /// The body of an error `code` saying `message`; also for answers written below axum (a
    /// connection's, a stream's last frame).
    pub(crate) fn of(message: String, code: Code) -> ErrorBody {
        ErrorBody {
            error: message.clone(),
            message,
            code: http_status(code).1,
            revision: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            revision: self.revision,
            ..ErrorBody::of(self.message, self.code)
        };
        let challenge = self
            .challenge
            .map(|c| [(header::WWW_AUTHENTICATE, HeaderValue::from_static(c))]);
        // Whole seconds, rounded up: a client told 0 would come straight back.
        let retry_after = self.retry_after.map(|wait| {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            [(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)))]
        });
        (
            self.status,
            self.backend,
            challenge,
            retry_after,
            Json(body),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_the_gateway_table() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::DataLoss, 500),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).0.as_u16(), http, "{code:?}");
        }
    }

    fn answered(status: Status) -> ApiError {
        ApiError::from(CallError {
            failure: Failure::Status {
                status,
                backend: Some(Backend("127.0.0.1:5000".parse().unwrap())),
            },
            retried: false,
        })
    }

    #[test]
    fn a_precondition_that_did_not_hold_is_412_with_the_revision() {
        let mut status = Status::failed_precondition("the event is at revision 4");
        status
            .metadata_mut()
            .insert(eventsys::REVISION_METADATA, "4".parse().unwrap());
        let err = answered(status);
        assert_eq!((err.status.as_u16(), err.revision), (412, Some(4)));
        let mut gone = Status::failed_precondition("event not found");
        gone.metadata_mut()
            .insert(eventsys::REVISION_METADATA, "0".parse().unwrap());
        assert_eq!(answered(gone).revision, None);
        let err = answered(Status::failed_precondition("needs a replica set"));
        assert_eq!((err.status.as_u16(), err.revision), (400, None));
    }

    #[test]
    fn a_reply_the_gateway_cannot_read_is_a_neutral_502() {
        let err = ApiError::from(CallError {
            failure: Failure::Status {
                status: Status::out_of_range(
                    "Error, decoded message length too large: found 17000000 bytes",
                ),
                backend: None,
            },
            retried: false,
        });
        assert_eq!(err.status.as_u16(), 502);
        assert!(!err.message.contains("bytes"), "{}", err.message);
    }

    #[test]
    fn internal_details_do_not_reach_clients() {
        let err = answered(Status::internal("disk I/O error at /var/lib/events.db"));
        assert_eq!(
            (err.status.as_u16(), err.message.as_str()),
            (500, "internal error")
        );
        let err = answered(Status::not_found("event not found"));
        assert_eq!((err.status.as_u16(), err.code), (404, Code::NotFound));
        let err = ApiError::from(CallError {
            failure: Failure::Unreachable {
                maybe_applied: true,
            },
            retried: true,
        });
        assert_eq!(err.status.as_u16(), 503);
        assert!(
            err.message.starts_with("backend connection lost"),
            "{}",
            err.message
        );
        let err = ApiError::from(CallError {
            failure: Failure::NoBackend,
            retried: false,
        });
        assert_eq!(err.message, "no backend available");
    }
}
