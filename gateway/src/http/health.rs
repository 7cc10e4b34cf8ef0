//! `GET /healthz` (the process serves HTTP) and `GET /readyz` (it can serve the API: at least
//! one healthy backend, and not shutting down), for load balancers and Kubernetes probes. Never
//! authenticated, never rate-limited, not counted as API traffic (no `Credentials`, no tracking).

use axum::{Json, extract::State};
use serde_json::{Value, json};
use tonic::Code;

use super::{ApiError, AppState};

/// `GET /healthz` → 200 `{"status":"ok"}` while the process serves.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz` → 200 with the healthy backend count; 503 with the contract's error body when
/// no backend is healthy or the gateway is draining.
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::new(
            Code::Unavailable,
            "the gateway is shutting down",
        ));
    }
    let backends = state.upstream.backends();
    let healthy = backends.iter().filter(|b| b.healthy).count();
    if healthy == 0 {
        return Err(ApiError::new(Code::Unavailable, "no healthy backend"));
    }
    Ok(Json(json!({
        "status": "ready",
        "backends": {"healthy": healthy, "known": backends.len()},
    })))
}
