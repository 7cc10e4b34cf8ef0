//! `GET /healthz` (the process serves HTTP) and `GET /readyz` (it can serve the API: at least
//! one healthy backend, and not shutting down), for load balancers and Kubernetes probes. Never
//! authenticated, never rate-limited, not counted as API traffic (no `Credentials`, no tracking).

use axum::{Json, extract::State};
use serde::Serialize;
use tonic::Code;
use utoipa::ToSchema;

use crate::{
    api::{ApiError, ErrorBody},
    http::AppState,
};

/// The body of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Live {
    #[schema(example = "ok")]
    status: &'static str,
}

/// The body of a ready `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Ready {
    #[schema(example = "ready")]
    status: &'static str,
    backends: BackendCount,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BackendCount {
    /// Backends passing health checks.
    healthy: usize,
    /// Backends configured or discovered.
    known: usize,
}

/// `GET /healthz` → 200 `{"status":"ok"}` while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "probes",
    summary = "Liveness: the process serves HTTP",
    responses((status = 200, description = "Alive", body = Live)),
)]
pub(crate) async fn healthz() -> Json<Live> {
    Json(Live { status: "ok" })
}

/// `GET /readyz` → 200 with the healthy backend count; 503 with the contract's error body when
/// no backend is healthy or the gateway is draining.
#[utoipa::path(get, path = "/readyz", tag = "probes",
    summary = "Readiness: a backend is healthy and the gateway is not draining",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "No healthy backend, or shutting down", body = ErrorBody),
    ),
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if state.leaving.is_cancelled() {
        return Err(ApiError::new(
            Code::Unavailable,
            "the gateway is shutting down",
        ));
    }
    let backends = state.upstream.backends();
    let healthy = backends.iter().filter(|b| b.healthy()).count();
    if healthy == 0 {
        return Err(ApiError::new(Code::Unavailable, "no healthy backend"));
    }
    Ok(Json(Ready {
        status: "ready",
        backends: BackendCount {
            healthy,
            known: backends.len(),
        },
    }))
}
