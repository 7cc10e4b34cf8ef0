//! `Subscribe` through the gateway, with the REST stream's guarantee: when the backend feeding
//! it ends the stream or dies, the gateway subscribes again on another backend after the last
//! `seq` it forwarded, so the client sees no gap and no duplicate. Refusals (a bad topic, a
//! token without the right, a resume point retention dropped) reach the client as they are.

use std::pin::Pin;

use eventsys::{backoff::Attempts, v1};
use futures::{Stream, stream};
use tonic::{Response, Status, Streaming};

use crate::{
    api::Credentials,
    http::AppState,
    middleware::{StreamSlot, mark},
    upstream::{Bearer, RESUBSCRIBE, is_permanent},
};

/// The stream a client reads.
pub(crate) type Events = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

struct Following {
    state: AppState,
    bearer: Option<Bearer>,
    topic: String,
    /// The last `seq` forwarded: the resume point.
    last: u64,
    upstream: Option<Streaming<v1::Event>>,
    /// Pauses between attempts to subscribe again.
    pauses: Attempts,
    /// An error was the last item: the stream ends.
    done: bool,
    _slot: StreamSlot,
}

/// Opens the first backend stream before answering, so a refusal is the call's status.
pub(crate) async fn open(
    state: &AppState,
    who: Credentials,
    request: v1::SubscribeRequest,
) -> Result<Response<Events>, Status> {
    let slot = state.limiters.open_stream(who.client())?;
    let first = state
        .upstream
        .call(request.clone(), who.bearer.as_ref())
        .await?;
    let following = Following {
        state: state.clone(),
        bearer: who.bearer,
        topic: request.topic,
        last: request.after_seq,
        upstream: Some(first.message),
        pauses: RESUBSCRIBE.attempts(),
        done: false,
        _slot: slot,
    };
    let mut response = Response::new(Box::pin(stream::unfold(following, next)) as Events);
    mark(&mut response, first.backend);
    Ok(response)
}

/// The next event for the client, subscribing again as often as a backend stream ends.
async fn next(mut f: Following) -> Option<(Result<v1::Event, Status>, Following)> {
    if f.done {
        return None;
    }
    loop {
        let Some(upstream) = f.upstream.as_mut() else {
            // Between backends: wait, then subscribe again after the last seq forwarded.
            tokio::select! {
                () = f.state.shutdown.cancelled() => return ended(f),
                () = tokio::time::sleep(f.pauses.next_pause()) => {}
            }
            let request = v1::SubscribeRequest {
                topic: f.topic.clone(),
                after_seq: f.last,
            };
            match f.state.upstream.call(request, f.bearer.as_ref()).await {
                Ok(answer) => {
                    tracing::info!(topic = %f.topic, after = f.last, backend = ?answer.backend, "grpc subscription resumed");
                    f.upstream = Some(answer.message);
                }
                Err(err) => {
                    let status = Status::from(err);
                    if is_permanent(status.code()) {
                        return last(status, f);
                    }
                    tracing::warn!(topic = %f.topic, error = %status.message(), "grpc resubscribe failed");
                }
            }
            continue;
        };
        let message = tokio::select! {
            () = f.state.shutdown.cancelled() => return ended(f),
            message = upstream.message() => message,
        };
        match message {
            Ok(Some(event)) if event.seq <= f.last => {}
            Ok(Some(event)) => {
                f.last = event.seq;
                f.pauses.reset();
                return Some((Ok(event), f));
            }
            Err(status) if is_permanent(status.code()) => return last(status, f),
            // The backend ended the stream or went away: another one takes over.
            Ok(None) | Err(_) => {
                tracing::info!(topic = %f.topic, after = f.last, "grpc subscription lost: resubscribing");
                f.upstream = None;
            }
        }
    }
}

/// `status` as the stream's last item.
fn last(status: Status, mut f: Following) -> Option<(Result<v1::Event, Status>, Following)> {
    f.done = true;
    f.upstream = None;
    Some((Err(status), f))
}

/// The gateway is shutting down: the client is told where to resume.
fn ended(f: Following) -> Option<(Result<v1::Event, Status>, Following)> {
    let status = Status::unavailable(format!(
        "the gateway is shutting down: subscribe again after seq {}",
        f.last
    ));
    last(status, f)
}
