//! `GET /subscribe/{topic}`: a backend `Subscribe` stream as Server-Sent Events (`event:
//! message`, `id: <seq>`, `data: <event JSON>`), resumable with `Last-Event-ID` or
//! `?lastEventId=`. When the backend serving the stream ends it (shutdown, crash), the stream
//! continues on another backend from the last `seq` delivered, so the client sees no gap; when
//! retention already dropped what the client asks for, it is told so (`event: gap`) first.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::State,
    response::{
        IntoResponse,
        sse::{Event, KeepAlive, Sse},
    },
};
use eventsys::{gap::Gap, v1};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{
    ApiError, AppState,
    auth::Credentials,
    extract::{ResumeAfter, Topic},
    json::EventJson,
    limits::StreamSlot,
};
use crate::upstream::{Answer, Bearer, CallError, Failure};

/// Frames queued for one client, whatever their size (the byte budget binds first unless
/// events are tiny).
const QUEUED_FRAMES: usize = 4096;
/// How long a client may take to make room before its stream is paused: a client reading at
/// its own pace is waited for, one that stopped costs a resubscription later.
const SLOW_CLIENT: Duration = Duration::from_millis(250);
const RESUBSCRIBE_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(2));

type Source = Answer<Streaming<v1::Event>>;
type Frame = (Event, Option<OwnedSemaphorePermit>);

/// `GET /subscribe/{topic}` → 200 `text/event-stream`.
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    who: Credentials,
    Topic(topic): Topic,
    ResumeAfter(after): ResumeAfter,
) -> Result<impl IntoResponse, ApiError> {
    who.may_read(&state, &topic)?;
    let slot = state.limiters.open_stream(who.client())?;
    let budget = state.settings.sse_buffer;
    let stream = Stream {
        state: state.clone(),
        topic,
        bearer: who.bearer,
        bytes: Arc::new(Semaphore::new(budget)),
        budget,
        _slot: slot,
    };
    // Opened before the response starts, so a bad topic or no backend is a plain HTTP error.
    let (first, gap) = stream.open(after).await?;
    let backend = first.backend;
    let (tx, rx) = mpsc::channel(QUEUED_FRAMES);
    let resume_from = match gap {
        Some(gap) => {
            let _ = tx.try_send((gap_frame(gap), None));
            gap.resume_after()
        }
        None => after,
    };
    tokio::spawn(relay(stream, resume_from, first, tx));

    // A frame's bytes leave the budget when the frame is handed to the connection.
    let frames = ReceiverStream::new(rx).map(|(frame, _bytes): Frame| Ok::<_, Infallible>(frame));
    let events =
        Sse::new(frames).keep_alive(KeepAlive::new().interval(state.settings.sse_keep_alive));
    Ok((backend, events))
}

/// One client's subscription: what to subscribe to, as whom, and its byte budget.
struct Stream {
    state: AppState,
    topic: String,
    bearer: Option<Bearer>,
    /// Bytes of frames queued for the client and not yet taken by its connection.
    bytes: Arc<Semaphore>,
    budget: usize,
    /// Counted among open streams until the relay ends.
    _slot: StreamSlot,
}

impl Stream {
    /// Subscribes after `after_seq`; when retention dropped some of what follows it, the gap
    /// and a subscription from the oldest kept event.
    async fn open(&self, after_seq: u64) -> Result<(Source, Option<Gap>), ApiError> {
        let refused = match self.call(after_seq).await {
            Ok(source) => return Ok((source, None)),
            Err(err) => err,
        };
        let gap = match &refused.failure {
            Failure::Status { status, .. } => Gap::from_status(status, after_seq),
            _ => None,
        };
        let Some(gap) = gap else {
            return Err(refused.into());
        };
        let source = self.call(gap.resume_after()).await?;
        Ok((source, Some(gap)))
    }

    async fn call(&self, after_seq: u64) -> Result<Source, CallError> {
        let request = v1::SubscribeRequest {
            topic: self.topic.clone(),
            after_seq,
        };
        self.state
            .upstream
            .call(request, self.bearer.as_ref())
            .await
    }

    /// Takes `size` bytes of the budget (a frame larger than the whole budget takes all of it,
    /// so it waits for an empty queue), waiting a moment for the client to read; `None` when it
    /// has not read enough by then.
    async fn reserve(&self, size: usize) -> Option<OwnedSemaphorePermit> {
        let size = u32::try_from(size.min(self.budget)).unwrap_or(u32::MAX);
        let room = self.bytes.clone().acquire_many_owned(size);
        tokio::time::timeout(SLOW_CLIENT, room).await.ok()?.ok()
    }
}

/// Forwards events to the client until it leaves or the gateway shuts down, moving to another
/// backend whenever the current one ends the stream.
async fn relay(stream: Stream, mut last: u64, mut source: Source, tx: mpsc::Sender<Frame>) {
    let (state, topic) = (&stream.state, &stream.topic);
    let ends = state
        .settings
        .sse_max_duration
        .map(|d| tokio::time::Instant::now() + d);
    loop {
        let next = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tx.closed() => return,
            // The client reconnects with Last-Event-ID and loses nothing.
            _ = tokio::time::sleep_until(ends.unwrap_or_else(tokio::time::Instant::now)), if ends.is_some() => return,
            next = source.message.message() => next,
        };
        match next {
            Ok(Some(event)) => {
                let seq = event.seq;
                let Some((frame, size)) = frame(event) else {
                    last = seq;
                    continue;
                };
                let slot = match stream.reserve(size).await {
                    // Tiny events fill the frame count before the bytes.
                    Some(bytes) => match tokio::time::timeout(SLOW_CLIENT, tx.reserve()).await {
                        Ok(Ok(slot)) => Some((slot, bytes)),
                        Ok(Err(_)) => return,
                        Err(_) => None,
                    },
                    None => None,
                };
                let Some((slot, bytes)) = slot else {
                    match resume_when_drained(&stream, last, &tx, source, ends).await {
                        Some(next) => source = next,
                        None => return,
                    }
                    continue;
                };
                slot.send((frame, Some(bytes)));
                last = seq;
            }
            ended => {
                let reason = match ended {
                    Err(status) => format!("{:?}: {}", status.code(), status.message()),
                    _ => "stream closed".to_owned(),
                };
                // A backend that became unreachable has taken itself out already; one that
                // ended the stream itself (draining) is taken out by its health checks.
                let from = source.backend;
                tracing::info!(%topic, last_seq = last, backend = ?from, %reason, "subscription lost: resubscribing");
                state.metrics.sse_resumed("backend_lost");
                // Every stream of a lost backend moves at once otherwise.
                let spread = jitter(RESUBSCRIBE_BACKOFF.0);
                match reopen(&stream, last, &tx, spread).await {
                    Some(next) => source = next,
                    None => return,
                }
            }
        }
    }
}

/// The client reads slower than events arrive. Unread events would sit in gateway memory or in
/// the backend connection's HTTP/2 flow-control window, which every request to that backend
/// shares, so the backend stream is let go; once the client has read half its budget, the
/// stream is taken up again from `last` (the backend replays what was missed from its store).
async fn resume_when_drained(
    stream: &Stream,
    last: u64,
    tx: &mpsc::Sender<Frame>,
    source: Source,
    ends: Option<tokio::time::Instant>,
) -> Option<Source> {
    drop(source);
    let (state, topic) = (&stream.state, &stream.topic);
    tracing::debug!(%topic, last_seq = last, "slow SSE client: pausing its backend stream");
    let half = u32::try_from(stream.budget / 2).unwrap_or(u32::MAX).max(1);
    tokio::select! {
        _ = state.shutdown.cancelled() => return None,
        _ = tx.closed() => return None,
        _ = tokio::time::sleep_until(ends.unwrap_or_else(tokio::time::Instant::now)), if ends.is_some() => return None,
        drained = stream.bytes.acquire_many(half) => drop(drained.ok()?),
    };
    // The frame count must have room too.
    drop(tx.reserve_many(QUEUED_FRAMES / 2).await.ok()?);
    state.metrics.sse_resumed("slow_client");
    reopen(stream, last, tx, Duration::ZERO).await
}

/// Subscribes again after `last` (after a `first` pause), backing off with jitter while no
/// backend can take the stream. A token that no longer passes (it expired while the stream was
/// open) ends the stream: the client reconnects with a fresh one and `Last-Event-ID`.
async fn reopen(
    stream: &Stream,
    last: u64,
    tx: &mpsc::Sender<Frame>,
    first: Duration,
) -> Option<Source> {
    let (state, topic) = (&stream.state, &stream.topic);
    let (mut backoff, max) = RESUBSCRIBE_BACKOFF;
    let mut pause = first;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return None,
            _ = tx.closed() => return None,
            _ = tokio::time::sleep(pause) => {}
        }
        match stream.open(last).await {
            Ok((source, gap)) => {
                if let Some(gap) = gap {
                    tracing::info!(%topic, ?gap, "events dropped by retention while resuming");
                    tx.send((gap_frame(gap), None)).await.ok()?;
                }
                return Some(source);
            }
            Err(err) if err.status.is_client_error() => {
                tracing::info!(%topic, error = %err.message, "subscription refused: ending the stream");
                return None;
            }
            Err(err) => tracing::warn!(%topic, error = %err.message, "resubscribe failed"),
        }
        pause = jitter(backoff);
        backoff = (backoff * 2).min(max);
    }
}

/// A random share of `up_to` ("full jitter").
fn jitter(up_to: Duration) -> Duration {
    up_to.mul_f64(fastrand::f64())
}

/// An event as a frame, and its size in the client's budget.
fn frame(event: v1::Event) -> Option<(Event, usize)> {
    let seq = event.seq;
    match serde_json::to_string(&EventJson::from(event)) {
        Ok(data) => {
            let size = data.len();
            let frame = Event::default()
                .event("message")
                .id(seq.to_string())
                .data(data);
            Some((frame, size))
        }
        Err(err) => {
            tracing::error!(seq, error = %err, "cannot encode event");
            None
        }
    }
}

/// `event: gap`, sent before the first event after a gap.
fn gap_frame(gap: Gap) -> Event {
    let data = serde_json::json!({
        "requestedAfter": gap.requested_after,
        "oldestAvailable": gap.oldest_available,
    });
    Event::default().event("gap").data(data.to_string())
}
