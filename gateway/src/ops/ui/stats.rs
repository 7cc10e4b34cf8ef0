//! `GET /ui/stats`: the dashboard's one stream. Each frame is what the gateway knows now: its
//! traffic over the last interval, every backend as the balancer sees it (health and why not,
//! calls, in flight, open streams, cost) and the topics with SSE clients, cut to what the
//! caller's token may see (traffic and backends for admins; topics it may read).

use std::{
    convert::Infallible,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::{Body, Bytes},
    extract::State,
    response::{IntoResponse, Response},
};
use eventsys::v1;
use futures::stream;
use http::{HeaderValue, header};
use serde::Serialize;

use super::traffic::Sample;
use crate::{
    api::{ApiError, Credentials, token_expiry},
    http::AppState,
    upstream::{Backend, BackendSnapshot},
};

/// Frames come this often, and at once when a backend goes in or out.
const EVERY: Duration = Duration::from_secs(1);
/// Topics a frame lists, most read first.
const TOPICS: usize = 100;

#[derive(Debug, Serialize)]
struct Frame {
    /// Milliseconds since the Unix epoch.
    time_ms: u64,
    /// Admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    traffic: Option<TrafficFrame>,
    /// Admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    backends: Option<Vec<BackendFrame>>,
    topics: Vec<TopicFrame>,
}

#[derive(Debug, Serialize)]
struct TrafficFrame {
    requests_per_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Error answers per second by status (`"503": 1.0`).
    errors_per_s: std::collections::BTreeMap<u16, f64>,
}

#[derive(Debug, Serialize)]
struct BackendFrame {
    backend: String,
    healthy: bool,
    /// Why it is out, when it is.
    down: Option<&'static str>,
    /// Calls the balancers sent it since it was discovered.
    calls: u64,
    calls_per_s: f64,
    in_flight: u64,
    streams: u64,
    /// The request balancer's cost (latency estimate × pending calls).
    cost: f64,
}

#[derive(Debug, Serialize)]
struct TopicFrame {
    topic: String,
    /// This gateway's SSE clients of the topic.
    subscribers: usize,
    backend: Option<String>,
    /// Open streams of the topic over every gateway (presence), when known.
    present: Option<u64>,
    /// The first named subjects among them.
    subjects: Vec<String>,
}

/// Topics of a frame whose presence is asked (one call each per frame).
const PRESENCE_TOPICS: usize = 20;
/// Subjects a frame names per topic.
const SUBJECTS: usize = 10;

/// Fills in the presence of the frame's first topics, asked with the viewer's token (a topic
/// they may not read is left out; a selection's hub, named by its patterns, has none).
async fn with_presence(state: &AppState, who: &Credentials, topics: &mut [TopicFrame]) {
    for topic in topics
        .iter_mut()
        .filter(|t| eventsys::topics::valid_topic(&t.topic))
        .take(PRESENCE_TOPICS)
    {
        let request = v1::PresenceRequest {
            topic: topic.topic.clone(),
            count_only: false,
        };
        if let Ok(answer) = state.upstream.call(request, who.bearer.as_ref()).await {
            topic.present = Some(answer.message.count);
            topic.subjects = answer
                .message
                .subjects
                .into_iter()
                .take(SUBJECTS)
                .map(|s| s.user_id)
                .collect();
        }
    }
}

/// What a stream remembers between frames, to turn counters into rates.
struct Previous {
    at: Instant,
    traffic: Sample,
    calls: Vec<(Backend, u64)>,
}

/// `GET /ui/stats` → `text/event-stream` of `event: stats` frames.
pub(crate) async fn stats(
    State(state): State<AppState>,
    who: Credentials,
) -> Result<Response, ApiError> {
    who.caller()?;
    let admin = who.may_operate(&state).is_ok();
    let slot = state.limiters.open_stream(who.client())?;
    let changes = state.upstream.health_changes();
    let previous = Previous {
        at: Instant::now(),
        traffic: Sample::of(&state.metrics),
        calls: Vec::new(),
    };
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the token expires: a last `event: error` frame, then the end (`None` once said).
    let expires = Some(who.expires());
    let frames = stream::unfold(
        (state, who, admin, slot, changes, previous, tick, expires),
        |(state, who, admin, slot, mut changes, mut previous, mut tick, expires)| async move {
            let expires = expires?;
            tokio::select! {
                _ = state.shutdown.cancelled() => return None,
                () = token_expiry(expires) => {
                    let said = Ok(crate::sse::Frame::token_expired());
                    return Some((said, (state, who, admin, slot, changes, previous, tick, None)));
                }
                _ = tick.tick() => {}
                Ok(()) = changes.changed() => {}
            }
            let mut frame = frame(&state, &who, admin, &mut previous);
            with_presence(&state, &who, &mut frame.topics).await;
            let json = serde_json::to_string(&frame).unwrap_or_default();
            let bytes = Bytes::from(format!("event: stats\ndata: {json}\n\n"));
            Some((
                Ok::<_, Infallible>(bytes),
                (
                    state,
                    who,
                    admin,
                    slot,
                    changes,
                    previous,
                    tick,
                    Some(expires),
                ),
            ))
        },
    );
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(frames),
    )
        .into_response())
}

fn frame(state: &AppState, who: &Credentials, admin: bool, previous: &mut Previous) -> Frame {
    let now = Instant::now();
    let seconds = now.duration_since(previous.at).as_secs_f64().max(0.001);
    let per_second = |n: u64| n as f64 / seconds;
    let (traffic, backends) = if admin {
        let sample = Sample::of(&state.metrics);
        let interval = sample.since(&previous.traffic);
        let traffic = TrafficFrame {
            requests_per_s: per_second(interval.requests()),
            p50_ms: interval.quantile_ms(0.5),
            p99_ms: interval.quantile_ms(0.99),
            errors_per_s: interval
                .errors()
                .map(|(status, n)| (status, per_second(n)))
                .collect(),
        };
        previous.traffic = sample;
        let snapshots = state.upstream.backends();
        let backends: Vec<BackendFrame> = snapshots
            .iter()
            .map(|b| backend_frame(b, &previous.calls, per_second))
            .collect();
        previous.calls = snapshots.iter().map(|b| (b.backend, b.attempts)).collect();
        (Some(traffic), Some(backends))
    } else {
        (None, None)
    };
    previous.at = now;
    let topics = state
        .hubs
        .load()
        .into_iter()
        .filter(|hub| who.may_read(state, &hub.topic).is_ok())
        .take(TOPICS)
        .map(|hub| TopicFrame {
            topic: hub.topic,
            subscribers: hub.subscribers,
            backend: hub.backend.map(|b| b.to_string()),
            present: None,
            subjects: Vec::new(),
        })
        .collect();
    Frame {
        time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        traffic,
        backends,
        topics,
    }
}

fn backend_frame(
    snapshot: &BackendSnapshot,
    before: &[(Backend, u64)],
    per_second: impl Fn(u64) -> f64,
) -> BackendFrame {
    let earlier = before
        .iter()
        .find(|(b, _)| *b == snapshot.backend)
        .map_or(snapshot.attempts, |(_, calls)| *calls);
    BackendFrame {
        healthy: snapshot.healthy(),
        down: snapshot.down.map(|d| d.as_str()),
        calls: snapshot.attempts,
        calls_per_s: per_second(snapshot.attempts.saturating_sub(earlier)),
        in_flight: snapshot.in_flight,
        streams: snapshot.streams,
        cost: snapshot.cost,
        backend: snapshot.backend.to_string(),
    }
}
