//! `/load`, `/benchmark` and `/memstats`: the old service's shapes, now for the whole system
//! (gateway and healthy backends), each with a per-backend breakdown.

use std::time::Duration;

use axum::{Json, extract::State};
use eventsys::v1;
use serde::Serialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, auth::Credentials};
use crate::upstream::BackendSnapshot;

const STATS_TIMEOUT: Duration = Duration::from_millis(500);

/// A backend with what its `Stats` rpc said, when it is healthy and answered in time.
type Report = (BackendSnapshot, Option<v1::StatsResponse>);

async fn reports(state: &AppState, who: &Credentials) -> Vec<Report> {
    state
        .upstream
        .backend_stats(STATS_TIMEOUT, who.bearer.as_ref())
        .await
}

fn uptime(report: &v1::StatsResponse) -> Duration {
    report.uptime.map_or(Duration::ZERO, |d| {
        Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
    })
}

/// A duration as Go's `time.Duration.String()` prints it (`1h2m3.5s`, `250ms`), the old
/// `/benchmark` format.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return format!("{}µs", d.as_micros());
    }
    if d < Duration::from_secs(1) {
        return format!("{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, (ms / 60_000) % 60);
    let s = (ms % 60_000) as f64 / 1000.0;
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

fn per_second(count: u64, over: Duration) -> f64 {
    if over.is_zero() {
        0.0
    } else {
        count as f64 / over.as_secs_f64()
    }
}

#[derive(Serialize)]
struct Backend {
    backend: String,
    healthy: bool,
    #[serde(flatten)]
    figures: Value,
}

fn breakdown(reports: &[Report], figures: impl Fn(&v1::StatsResponse) -> Value) -> Vec<Backend> {
    reports
        .iter()
        .map(|(snapshot, answer)| Backend {
            backend: snapshot.backend.to_string(),
            healthy: answer.is_some(),
            figures: answer.as_ref().map_or(json!({}), &figures),
        })
        .collect()
}

/// `{"in_flight": N}`: calls being served by the healthy backends, open streams included.
pub(crate) async fn load(
    State(state): State<AppState>,
    who: Credentials,
) -> Result<Json<Value>, ApiError> {
    who.may_operate(&state)?;
    let reports = reports(&state, &who).await;
    let total: u64 = reports
        .iter()
        .filter_map(|(_, answer)| answer.as_ref())
        .map(|a| a.in_flight)
        .sum();
    Ok(Json(json!({
        "in_flight": total,
        "gateway": {"in_flight": state.metrics.in_flight()},
        // A backend restarting in a loop shows as unhealthy, or with a short uptime.
        "backends": breakdown(&reports, |a| json!({
            "in_flight": a.in_flight,
            "subscribers": a.subscribers,
            "uptime": go_duration(uptime(a)),
        })),
        // One backend stream per topic with SSE clients here: its clients, and who feeds it.
        "topics": state.hubs.load().into_iter().take(TOPICS_SHOWN).map(|hub| json!({
            "topic": hub.topic,
            "subscribers": hub.subscribers,
            "backend": hub.backend.map(|b| b.to_string()),
        })).collect::<Vec<_>>(),
    })))
}

/// Topic hubs `/load` lists, most read first.
const TOPICS_SHOWN: usize = 1000;

/// `{"uptime", "request_count", "avg_req_per_s"}` of the gateway, which every request passes.
pub(crate) async fn benchmark(
    State(state): State<AppState>,
    who: Credentials,
) -> Result<Json<Value>, ApiError> {
    who.may_operate(&state)?;
    let reports = reports(&state, &who).await;
    let up = state.started.elapsed();
    let count = state.metrics.total_requests();
    Ok(Json(json!({
        "uptime": go_duration(up),
        "request_count": count,
        "avg_req_per_s": per_second(count, up),
        "backends": breakdown(&reports, |a| json!({
            "uptime": go_duration(uptime(a)),
            "request_count": a.request_count,
            "avg_req_per_s": per_second(a.request_count, uptime(a)),
        })),
    })))
}

/// `{"alloc": bytes}`: resident memory of the gateway plus the healthy backends.
pub(crate) async fn memstats(
    State(state): State<AppState>,
    who: Credentials,
) -> Result<Json<Value>, ApiError> {
    who.may_operate(&state)?;
    let reports = reports(&state, &who).await;
    let gateway = eventsys::process::resident_memory();
    let backends: u64 = reports
        .iter()
        .filter_map(|(_, answer)| answer.as_ref())
        .map(|a| a.resident_memory_bytes)
        .sum();
    Ok(Json(json!({
        "alloc": gateway + backends,
        "gateway": {"alloc": gateway},
        "backends": breakdown(&reports, |a| json!({"alloc": a.resident_memory_bytes})),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_micros(250)), "250µs");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_millis(3_500)), "3.5s");
        assert_eq!(go_duration(Duration::from_secs(62)), "1m2s");
        assert_eq!(go_duration(Duration::from_millis(3_723_250)), "1h2m3.25s");
    }
}
