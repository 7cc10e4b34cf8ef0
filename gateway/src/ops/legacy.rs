//! `/load`, `/benchmark` and `/memstats`: the old service's shapes, now for the whole system
//! (gateway and healthy backends), each with a per-backend breakdown.

use std::time::Duration;

use axum::{Json, extract::State};
use eventsys::{auth::Caller, v1};
use serde::Serialize;
use utoipa::ToSchema;

use crate::upstream::BackendSnapshot;
use crate::{
    api::{ApiError, Credentials},
    http::AppState,
};

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

/// A backend in a per-backend breakdown: its figures when it is healthy and answered in time.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BackendRow<F> {
    /// Its address.
    backend: String,
    healthy: bool,
    #[serde(flatten)]
    figures: Option<F>,
}

fn breakdown<F>(
    reports: &[Report],
    figures: impl Fn(&v1::StatsResponse) -> F,
) -> Vec<BackendRow<F>> {
    reports
        .iter()
        .map(|(snapshot, answer)| BackendRow {
            backend: snapshot.backend.to_string(),
            healthy: answer.is_some(),
            figures: answer.as_ref().map(&figures),
        })
        .collect()
}

/// The body of `GET /load`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Load {
    /// Calls being served by the healthy backends, open streams included.
    in_flight: u64,
    gateway: InFlight,
    /// A backend restarting in a loop shows as unhealthy, or with a short uptime.
    backends: Vec<BackendRow<BackendLoad>>,
    /// One backend stream per topic with SSE clients here: its clients, and who feeds it; most
    /// read first, at most 1,000.
    topics: Vec<TopicLoad>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InFlight {
    /// Requests and streams the gateway is serving.
    in_flight: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BackendLoad {
    in_flight: u64,
    subscribers: u64,
    /// Go's `time.Duration` text (`1h2m3.5s`).
    uptime: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopicLoad {
    topic: String,
    /// SSE clients of the topic on this gateway.
    subscribers: usize,
    /// The backend feeding it, while one does.
    backend: Option<String>,
}

/// `{"in_flight": N}`: calls being served by the healthy backends, open streams included.
#[utoipa::path(get, path = "/load", tag = "operations",
    summary = "Load of the gateway and of each backend",
    responses((status = 200, description = "The load", body = Load)),
    security((), ("bearer" = []), ("access_token" = [])),
)]
pub(crate) async fn load(
    State(state): State<AppState>,
    who: Credentials,
) -> Result<Json<Load>, ApiError> {
    who.may_operate(&state)?;
    // With --public-ops the figures are for anyone, but a topic's name only for whoever may
    // read the topic (an admin, every one), as on /ui/stats.
    let admin = who.caller().is_ok_and(Caller::is_admin);
    let reports = reports(&state, &who).await;
    let in_flight = reports
        .iter()
        .filter_map(|(_, answer)| answer.as_ref())
        .map(|a| a.in_flight)
        .sum();
    Ok(Json(Load {
        in_flight,
        gateway: InFlight {
            in_flight: state.metrics.in_flight(),
        },
        backends: breakdown(&reports, |a| BackendLoad {
            in_flight: a.in_flight,
            subscribers: a.subscribers,
            uptime: go_duration(uptime(a)),
        }),
        topics: state
            .hubs
            .load()
            .into_iter()
            .filter(|hub| admin || who.may_read(&state, &hub.topic).is_ok())
            .take(TOPICS_SHOWN)
            .map(|hub| TopicLoad {
                topic: hub.topic,
                subscribers: hub.subscribers,
                backend: hub.backend.map(|b| b.to_string()),
            })
            .collect(),
    }))
}

/// Topic hubs `/load` lists, most read first.
const TOPICS_SHOWN: usize = 1000;

/// The body of `GET /benchmark`: the gateway's figures (every request passes it), and each
/// backend's.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Benchmark {
    #[serde(flatten)]
    gateway: Throughput,
    backends: Vec<BackendRow<Throughput>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Throughput {
    /// Go's `time.Duration` text (`1h2m3.5s`).
    uptime: String,
    request_count: u64,
    avg_req_per_s: f64,
}

/// `{"uptime", "request_count", "avg_req_per_s"}` of the gateway, which every request passes.
#[utoipa::path(get, path = "/benchmark", tag = "operations",
    summary = "Request counts of the gateway and of each backend",
    responses((status = 200, description = "The counts", body = Benchmark)),
    security((), ("bearer" = []), ("access_token" = [])),
)]
pub(crate) async fn benchmark(
    State(state): State<AppState>,
    who: Credentials,
) -> Result<Json<Benchmark>, ApiError> {
    who.may_operate(&state)?;
    let reports = reports(&state, &who).await;
    let up = state.started.elapsed();
    let count = state.metrics.total_requests();
    Ok(Json(Benchmark {
        gateway: Throughput {
            uptime: go_duration(up),
            request_count: count,
            avg_req_per_s: per_second(count, up),
        },
        backends: breakdown(&reports, |a| Throughput {
            uptime: go_duration(uptime(a)),
            request_count: a.request_count,
            avg_req_per_s: per_second(a.request_count, uptime(a)),
        }),
    }))
}

/// The body of `GET /memstats`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Memstats {
    /// Resident bytes of the gateway plus the healthy backends.
    alloc: u64,
    gateway: Alloc,
    backends: Vec<BackendRow<Alloc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Alloc {
    /// Resident memory, bytes.
    alloc: u64,
}

/// `{"alloc": bytes}`: resident memory of the gateway plus the healthy backends.
#[utoipa::path(get, path = "/memstats", tag = "operations",
    summary = "Resident memory of the gateway and of each backend",
    responses((status = 200, description = "The figures", body = Memstats)),
    security((), ("bearer" = []), ("access_token" = [])),
)]
pub(crate) async fn memstats(
    State(state): State<AppState>,
    who: Credentials,
) -> Result<Json<Memstats>, ApiError> {
    who.may_operate(&state)?;
    let reports = reports(&state, &who).await;
    let gateway = eventsys::process::resident_memory();
    let backends: u64 = reports
        .iter()
        .filter_map(|(_, answer)| answer.as_ref())
        .map(|a| a.resident_memory_bytes)
        .sum();
    Ok(Json(Memstats {
        alloc: gateway + backends,
        gateway: Alloc { alloc: gateway },
        backends: breakdown(&reports, |a| Alloc {
            alloc: a.resident_memory_bytes,
        }),
    }))
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
