//! `GET /subscribe/{topic}`: a topic's events as Server-Sent Events (`event: message`,
//! `id: <seq>`, `data: <event JSON>`), resumable with `Last-Event-ID` or `?lastEventId=`. All
//! of this gateway's clients of a topic share one backend stream (`hub`), framed once into a
//! ring each client's response reads (`reader`); when retention dropped what a client asks
//! for, it is told so (`event: gap`) first.

mod frame;
mod hub;
mod reader;
mod ring;

use std::time::Duration;

use axum::{extract::State, response::IntoResponse};

pub(crate) use hub::Hubs;

use super::{
    ApiError, AppState,
    auth::Credentials,
    extract::{ResumeAfter, Topic},
};
use reader::Reader;

/// `GET /subscribe/{topic}` → 200 `text/event-stream`, `x-backend` naming the backend that
/// feeds the topic's hub.
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    who: Credentials,
    Topic(topic): Topic,
    ResumeAfter(after): ResumeAfter,
) -> Result<impl IntoResponse, ApiError> {
    who.may_read(&state, &topic)?;
    let slot = state.limiters.open_stream(who.client())?;
    // Opened before the response starts, so a bad topic or no backend is a plain HTTP error.
    let reader = Reader::open(&state, &topic, after, who.bearer, slot).await?;
    Ok((reader.backend(), reader))
}

/// A random share of `up_to` ("full jitter").
fn jitter(up_to: Duration) -> Duration {
    up_to.mul_f64(fastrand::f64())
}

/// Logs why a (re)subscription or catch-up failed; `true` when it never will succeed as
/// asked (the topic or token is refused), which ends the stream: the client reconnects with a
/// fresh token and `Last-Event-ID`.
fn log_refusal(topic: &str, err: &ApiError) -> bool {
    if err.status.is_client_error() {
        tracing::info!(%topic, error = %err.message, "subscription refused: ending the stream");
        true
    } else {
        tracing::warn!(%topic, error = %err.message, "resubscribe failed");
        false
    }
}
