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
    upstream::Down,
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
        let downs = backends.iter().filter_map(|b| b.down);
        return Err(ApiError::new(Code::Unavailable, why_not_ready(downs)));
    }
    Ok(Json(Ready {
        status: "ready",
        backends: BackendCount {
            healthy,
            known: backends.len(),
        },
    }))
}

/// "no healthy backend", with how many are down for each reason, so an operator reading the
/// probe knows where to look.
fn why_not_ready(downs: impl IntoIterator<Item = Down>) -> String {
    let mut counts: Vec<(Down, usize)> = Vec::new();
    for down in downs {
        match counts.iter_mut().find(|(d, _)| *d == down) {
            Some((_, n)) => *n += 1,
            None => counts.push((down, 1)),
        }
    }
    if counts.is_empty() {
        return "no healthy backend: none known".to_owned();
    }
    let reasons: Vec<String> = counts
        .iter()
        .map(|(down, n)| match down {
            // A backend says NOT_SERVING while its store does not answer, and when it stops.
            Down::NotServing => {
                format!("{n} NOT_SERVING (their store does not answer, or they are stopping)")
            }
            other => format!("{n} {}", other.as_str()),
        })
        .collect();
    format!("no healthy backend: {}", reasons.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_says_why() {
        assert_eq!(
            why_not_ready([Down::NotServing, Down::Refused, Down::NotServing]),
            "no healthy backend: 2 NOT_SERVING (their store does not answer, or they are \
             stopping), 1 refused"
        );
        assert_eq!(why_not_ready([]), "no healthy backend: none known");
    }
}
