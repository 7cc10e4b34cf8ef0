//! `GET /subscribe/{topic}`: a backend `Subscribe` stream as Server-Sent Events (`event:
//! message`, `id: <seq>`, `data: <event JSON>`), resumable with `Last-Event-ID` or
//! `?lastEventId=`. When the backend serving the stream ends it (shutdown, crash), the stream
//! continues on another backend from the last `seq` delivered, so the client sees no gap.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::{
        IntoResponse,
        sse::{Event, KeepAlive, Sse},
    },
};
use eventsys::v1;
use tokio::sync::{mpsc, mpsc::error::TrySendError};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{
    ApiError, AppState,
    auth::Credentials,
    extract::{ResumeAfter, Topic},
    json::EventJson,
};
use crate::upstream::{Answer, Bearer};

/// Events buffered for a client that reads slowly; the relay then waits for it.
const BUFFER: usize = 64;
const RESUBSCRIBE_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(2));

type Source = Answer<Streaming<v1::Event>>;

/// `GET /subscribe/{topic}` → 200 `text/event-stream`.
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    who: Credentials,
    Topic(topic): Topic,
    ResumeAfter(after): ResumeAfter,
) -> Result<impl IntoResponse, ApiError> {
    who.may_read(&state, &topic)?;
    let stream = Stream {
        state: state.clone(),
        topic,
        bearer: who.bearer,
    };
    // Opened before the response starts, so a bad topic or no backend is a plain HTTP error.
    let first = stream.open(after).await?;
    let backend = first.backend;
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(relay(stream, after, first, tx));

    let events = Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(state.settings.sse_keep_alive));
    Ok((backend, events))
}

/// One client's subscription: what to subscribe to, and as whom.
struct Stream {
    state: AppState,
    topic: String,
    bearer: Option<Bearer>,
}

impl Stream {
    async fn open(&self, after_seq: u64) -> Result<Source, ApiError> {
        let request = v1::SubscribeRequest {
            topic: self.topic.clone(),
            after_seq,
        };
        Ok(self
            .state
            .upstream
            .call(request, self.bearer.as_ref())
            .await?)
    }
}

/// Forwards events to the client until it leaves or the gateway shuts down, moving to another
/// backend whenever the current one ends the stream.
async fn relay(
    stream: Stream,
    mut last: u64,
    mut source: Source,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
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
                let Some(frame) = frame(event) else {
                    last = seq;
                    continue;
                };
                match tx.try_send(Ok(frame)) {
                    Ok(()) => last = seq,
                    Err(TrySendError::Closed(_)) => return,
                    Err(TrySendError::Full(_)) => {
                        match resume_when_drained(&stream, last, &tx, source, ends).await {
                            Some(next) => source = next,
                            None => return,
                        }
                    }
                }
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
                match reopen(&stream, last, &tx).await {
                    Some(next) => source = next,
                    None => return,
                }
            }
        }
    }
}

/// The client reads slower than events arrive. Unread events would sit in the backend
/// connection's HTTP/2 flow-control window, which every request to that backend shares, so the
/// backend stream is let go; once the client has drained half its buffer, the stream is taken
/// up again from `last` (the backend replays what was missed from its store).
async fn resume_when_drained(
    stream: &Stream,
    last: u64,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
    source: Source,
    ends: Option<tokio::time::Instant>,
) -> Option<Source> {
    drop(source);
    let (state, topic) = (&stream.state, &stream.topic);
    tracing::debug!(%topic, last_seq = last, "slow SSE client: pausing its backend stream");
    tokio::select! {
        _ = state.shutdown.cancelled() => return None,
        _ = tokio::time::sleep_until(ends.unwrap_or_else(tokio::time::Instant::now)), if ends.is_some() => return None,
        drained = tx.reserve_many(BUFFER / 2) => drained.ok()?,
    };
    state.metrics.sse_resumed("slow_client");
    reopen(stream, last, tx).await
}

/// Subscribes again after `last`, backing off while no backend can take the stream. A token
/// that no longer passes (it expired while the stream was open) ends the stream: the client
/// reconnects with a fresh one and `Last-Event-ID`.
async fn reopen(
    stream: &Stream,
    last: u64,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
) -> Option<Source> {
    let (state, topic) = (&stream.state, &stream.topic);
    let (mut backoff, max) = RESUBSCRIBE_BACKOFF;
    loop {
        match stream.open(last).await {
            Ok(answer) => return Some(answer),
            Err(err) if err.status.is_client_error() => {
                tracing::info!(%topic, error = %err.message, "subscription refused: ending the stream");
                return None;
            }
            Err(err) => tracing::warn!(%topic, error = %err.message, "resubscribe failed"),
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return None,
            _ = tx.closed() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(max);
    }
}

fn frame(event: v1::Event) -> Option<Event> {
    let seq = event.seq;
    match Event::default()
        .event("message")
        .id(seq.to_string())
        .json_data(EventJson::from(event))
    {
        Ok(frame) => Some(frame),
        Err(err) => {
            tracing::error!(seq, error = %err, "cannot encode event");
            None
        }
    }
}
