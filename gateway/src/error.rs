//! Errors as REST clients see them: the contract's JSON body (`error` and `message` with the same
//! text, `code` the gRPC status name) and the one mapping from gRPC codes to HTTP statuses.

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode};
use tonic::{Code, Status};

use crate::endpoint::{BACKEND_HEADER, UNREACHABLE};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The backend that produced the error, when one did.
    pub backend: Option<HeaderValue>,
    /// The error came from a retry: an earlier attempt failed without a response, so it may
    /// or may not have taken effect.
    pub after_retry: bool,
}

/// HTTP status and gRPC status name for a gRPC code (the usual gateway table).
pub fn http_status(code: Code) -> (StatusCode, &'static str) {
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
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let (status, name) = http_status(code);
        Self {
            status,
            code: name,
            message: message.into(),
            backend: None,
            after_retry: false,
        }
    }

    /// An error the gateway itself answers with, outside the gRPC table (413, 404 route, …).
    pub fn http(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            backend: None,
            after_retry: false,
        }
    }

    pub fn no_backend() -> Self {
        Self::new(Code::Unavailable, "no backend available")
    }

    pub fn not_found() -> Self {
        Self::new(Code::NotFound, "event not found")
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        let backend = status
            .metadata()
            .get(BACKEND_HEADER)
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
        // Backends word their errors for clients; transport and internal failures carry
        // driver text and addresses, which stay in the log.
        let message = match status.code() {
            Code::Unavailable if status.metadata().get(UNREACHABLE).is_some() => {
                "no backend available".to_owned()
            }
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.message,
            "message": self.message,
            "code": self.code,
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(backend) = self.backend {
            response.headers_mut().insert(BACKEND_HEADER, backend);
        }
        response
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

    #[test]
    fn internal_details_do_not_reach_clients() {
        let err = ApiError::from(Status::internal("disk I/O error at /var/lib/events.db"));
        assert_eq!(
            (err.status.as_u16(), err.message.as_str()),
            (500, "internal error")
        );
        let err = ApiError::from(Status::not_found("event not found"));
        assert_eq!((err.status.as_u16(), err.code), (404, "NOT_FOUND"));
    }
}
