//! `Subscribe` and `WatchChanges` through the gateway, with the REST stream's guarantee: when
//! the backend feeding one ends the stream or dies, the gateway opens it again on another
//! backend after the last `seq` (position) it forwarded, so the client sees no gap and no
//! duplicate. Refusals (a bad topic, a token without the right, a resume point retention
//! dropped) reach the client as they are.

use std::pin::Pin;

use eventsys::{
    backoff::Attempts,
    topics::{Cursor, Patterns},
    v1,
};
use futures::{Stream, stream};
use tokio::time::Instant;
use tonic::{Response, Status, Streaming};

use crate::{
    api::{Credentials, token_expiry},
    http::AppState,
    middleware::{StreamSlot, mark},
    presence::Here,
    upstream::{Bearer, RESUBSCRIBE, Rpc, is_permanent},
};

/// The stream a client reads.
pub(crate) type Items<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;
/// A `Subscribe` as the client reads it.
pub(crate) type Events = Items<v1::Event>;

/// A streaming request the front door resumes: where it starts, and itself from elsewhere.
pub(crate) trait Resumable:
    Rpc<Reply = Streaming<Self::Item>> + Clone + Send + 'static
{
    type Item: Send + 'static;
    /// Where a stream stands: what it has forwarded (shown in the log).
    type Place: std::fmt::Display + Send + 'static;
    /// Where the request starts (its items come after).
    fn start(&self) -> Self::Place;
    /// Moves `place` past `item`; `false` when it was forwarded already (a resumed stream
    /// repeats what it is not sure the client has).
    fn passes(place: &mut Self::Place, item: &Self::Item) -> bool;
    /// The same request, after `place`.
    fn resumed(&self, place: &Self::Place) -> Self;
    /// What it follows, for the log.
    fn describe(&self) -> String;
    /// The topic whose presence a stream of it counts in, if any.
    fn presence_topic(&self) -> Option<&str> {
        None
    }
}

/// Where a `Subscribe` stands: one topic's last `seq`, or each topic's.
pub(crate) enum SubscribePlace {
    Seq(u64),
    Topics(Cursor),
}

impl Resumable for v1::SubscribeRequest {
    type Item = v1::Event;
    type Place = SubscribePlace;
    fn start(&self) -> SubscribePlace {
        let Ok(patterns) = Patterns::parse(self.patterns.iter().map(String::as_str)) else {
            return SubscribePlace::Seq(self.after_seq);
        };
        // The backend refuses what does not read (and then nothing is resumed).
        let at = if self.cursor.is_empty() {
            Cursor::from_positions(self.after_seqs.clone(), &patterns)
        } else {
            Cursor::decode(&self.cursor, &patterns)
        };
        SubscribePlace::Topics(at.unwrap_or_default())
    }
    fn passes(place: &mut SubscribePlace, event: &v1::Event) -> bool {
        match place {
            SubscribePlace::Seq(last) if event.seq > *last => {
                *last = event.seq;
                true
            }
            SubscribePlace::Seq(_) => false,
            SubscribePlace::Topics(at) => {
                // A cursor full to its bound is the backend's to refuse: it ends the stream.
                event.seq > at.get(&event.topic) && at.advance(&event.topic, event.seq).is_ok()
            }
        }
    }
    fn resumed(&self, place: &SubscribePlace) -> Self {
        let (after_seq, after_seqs) = match place {
            SubscribePlace::Seq(last) => (*last, Default::default()),
            SubscribePlace::Topics(at) => (
                0,
                at.iter()
                    .map(|(topic, seq)| (topic.to_owned(), seq))
                    .collect(),
            ),
        };
        v1::SubscribeRequest {
            topic: self.topic.clone(),
            after_seq,
            patterns: self.patterns.clone(),
            filter: self.filter.clone(),
            after_seqs,
            cursor: String::new(),
        }
    }
    fn describe(&self) -> String {
        if self.patterns.is_empty() {
            format!("topic {}", self.topic)
        } else {
            format!("topics {}", self.patterns.join(","))
        }
    }
    /// One topic's stream (not a presence topic's, not patterns) counts in its presence.
    fn presence_topic(&self) -> Option<&str> {
        (self.patterns.is_empty()
            && !self.topic.is_empty()
            && !self.topic.starts_with(eventsys::topics::PRESENCE_PREFIX))
        .then_some(self.topic.as_str())
    }
}

impl Resumable for v1::WatchChangesRequest {
    type Item = v1::Change;
    type Place = u64;
    fn start(&self) -> u64 {
        self.after_position
    }
    fn passes(last: &mut u64, change: &v1::Change) -> bool {
        let new = change.position > *last;
        if new {
            *last = change.position;
        }
        new
    }
    fn resumed(&self, last: &u64) -> Self {
        v1::WatchChangesRequest {
            user_id: self.user_id.clone(),
            after_position: *last,
        }
    }
    fn describe(&self) -> String {
        "a change feed".to_owned()
    }
}

impl std::fmt::Display for SubscribePlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscribePlace::Seq(last) => write!(f, "{last}"),
            SubscribePlace::Topics(at) => write!(f, "{} topics' places", at.len()),
        }
    }
}

struct Following<R: Resumable> {
    state: AppState,
    bearer: Option<Bearer>,
    /// The request as first sent; `last` says where it resumes.
    request: R,
    /// What was forwarded: the resume point.
    last: R::Place,
    upstream: Option<Streaming<R::Item>>,
    /// Pauses between attempts to subscribe again.
    pauses: Attempts,
    /// An error was the last item: the stream ends.
    done: bool,
    /// When the client's token expires: the stream ends with UNAUTHENTICATED.
    expires: Option<Instant>,
    _slot: StreamSlot,
    /// The stream counted in its topic's presence while it lasts.
    _here: Option<Here>,
}

/// Opens the first backend stream before answering, so a refusal is the call's status.
pub(crate) async fn open<R: Resumable>(
    state: &AppState,
    who: Credentials,
    request: R,
) -> Result<Response<Items<R::Item>>, Status> {
    let slot = state.limiters.open_stream(who.client())?;
    let first = state
        .upstream
        .call(request.clone(), who.bearer.as_ref())
        .await?;
    // Counted once open, as an SSE stream of the topic is.
    let here = request
        .presence_topic()
        .map(|topic| state.presences.enter(topic, who.subject()));
    let following = Following {
        state: state.clone(),
        expires: who.expires(),
        bearer: who.bearer,
        last: request.start(),
        request,
        upstream: Some(first.message),
        pauses: RESUBSCRIBE.attempts(),
        done: false,
        _slot: slot,
        _here: here,
    };
    let mut response = Response::new(Box::pin(stream::unfold(following, next)) as Items<R::Item>);
    mark(&mut response, first.backend);
    Ok(response)
}

type Next<R> = Option<(Result<<R as Resumable>::Item, Status>, Following<R>)>;

/// The next item for the client, subscribing again as often as a backend stream ends.
async fn next<R: Resumable>(mut f: Following<R>) -> Next<R> {
    if f.done {
        return None;
    }
    loop {
        let Some(upstream) = f.upstream.as_mut() else {
            // Between backends: wait, then subscribe again after the last one forwarded.
            tokio::select! {
                () = f.state.shutdown.cancelled() => return ended(f),
                () = token_expiry(f.expires) => return expired(f),
                () = tokio::time::sleep(f.pauses.next_pause()) => {}
            }
            let request = f.request.resumed(&f.last);
            match f.state.upstream.call(request, f.bearer.as_ref()).await {
                Ok(answer) => {
                    tracing::info!(stream = %f.request.describe(), after = %f.last, backend = ?answer.backend, "grpc subscription resumed");
                    f.upstream = Some(answer.message);
                }
                Err(err) => {
                    let status = Status::from(err);
                    if is_permanent(status.code()) {
                        return last(status, f);
                    }
                    tracing::warn!(stream = %f.request.describe(), error = %status.message(), "grpc resubscribe failed");
                }
            }
            continue;
        };
        let message = tokio::select! {
            () = f.state.shutdown.cancelled() => return ended(f),
            () = token_expiry(f.expires) => return expired(f),
            message = upstream.message() => message,
        };
        match message {
            Ok(Some(item)) => {
                if R::passes(&mut f.last, &item) {
                    f.pauses.reset();
                    return Some((Ok(item), f));
                }
            }
            Err(status) if is_permanent(status.code()) => return last(status, f),
            // The backend ended the stream or went away: another one takes over.
            Ok(None) | Err(_) => {
                tracing::info!(stream = %f.request.describe(), after = %f.last, "grpc subscription lost: resubscribing");
                f.upstream = None;
            }
        }
    }
}

/// The client's token expired: UNAUTHENTICATED ends the stream; the client subscribes again,
/// after the last item it has, with a fresh token.
fn expired<R: Resumable>(f: Following<R>) -> Next<R> {
    let status = Status::unauthenticated(format!(
        "token expired: subscribe again after {} with a fresh token",
        f.last
    ));
    last(status, f)
}

/// `status` as the stream's last item.
fn last<R: Resumable>(status: Status, mut f: Following<R>) -> Next<R> {
    f.done = true;
    f.upstream = None;
    Some((Err(status), f))
}

/// The gateway is shutting down: the client is told where to resume.
fn ended<R: Resumable>(f: Following<R>) -> Next<R> {
    let status = Status::unavailable(format!(
        "the gateway is shutting down: subscribe again after {}",
        f.last
    ));
    last(status, f)
}

#[cfg(test)]
mod tests {
    //! The front door's `Subscribe` across backend streams, under paused time.

    use futures::StreamExt;
    use tonic::{Code, metadata::MetadataMap};

    use super::*;
    use crate::testing::{self, FakeBackend, advance, event};

    /// Opens a client's `Subscribe` of `t` in the background (its first backend stream is the
    /// test's to answer).
    fn subscribe(
        state: &AppState,
        after_seq: u64,
    ) -> tokio::task::JoinHandle<Result<Response<Events>, Status>> {
        let who = Credentials::of_grpc(&MetadataMap::new(), None, state).unwrap();
        let request = v1::SubscribeRequest {
            topic: "t".into(),
            after_seq,
            ..Default::default()
        };
        let state = state.clone();
        tokio::spawn(async move { open(&state, who, request).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_backend_stream_resumes_after_the_last_seq_forwarded() {
        testing::bounded(async {
            let mut backend = FakeBackend::start().await;
            let (state, _stop) = testing::gateway(&[&backend], &[]).await;
            let opening = subscribe(&state, 0);
            let first = backend.subscribed().await;
            assert_eq!(first.request.after_seq, 0);
            let events = first.accept();
            let mut client = opening.await.unwrap().expect("opened").into_inner();
            events.send(Ok(event("t", 1))).await.unwrap();
            events.send(Ok(event("t", 2))).await.unwrap();
            assert_eq!(client.next().await.unwrap().unwrap().seq, 1);
            assert_eq!(client.next().await.unwrap().unwrap().seq, 2);

            // The backend's stream ends: the next attempt comes after a pause, from seq 2, and
            // what it repeats is not forwarded twice.
            drop(events);
            let ended = tokio::time::Instant::now();
            let reading = tokio::spawn(async move {
                let mut seqs = Vec::new();
                while let Some(Ok(event)) = client.next().await {
                    seqs.push(event.seq);
                    if seqs.len() == 2 {
                        break;
                    }
                }
                seqs
            });
            let again = backend.subscribed().await;
            assert_eq!(again.request.after_seq, 2);
            assert!(
                again.at - ended >= RESUBSCRIBE.min(),
                "resubscribed without a pause"
            );
            let events = again.accept();
            for seq in [2, 3, 4] {
                events.send(Ok(event("t", seq))).await.unwrap();
            }
            assert_eq!(reading.await.unwrap(), [3, 4]);
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_refusal_reaches_the_client_and_ends_its_stream() {
        testing::bounded(async {
            let mut backend = FakeBackend::start().await;
            let (state, _stop) = testing::gateway(&[&backend], &[]).await;
            let opening = subscribe(&state, 0);
            let events = backend.subscribed().await.accept();
            let mut client = opening.await.unwrap().expect("opened").into_inner();
            drop(events);
            // The client reads on (the front door works as it is read).
            let reading = tokio::spawn(async move {
                let item = client.next().await;
                (item, client.next().await.is_none())
            });
            backend
                .subscribed()
                .await
                .refuse(Status::permission_denied("the token expired"));
            let (item, ended) = reading.await.unwrap();
            let refused = item.expect("an item").expect_err("the refusal");
            assert_eq!(refused.code(), Code::PermissionDenied);
            assert!(ended, "the stream went on");
            advance(std::time::Duration::from_secs(60)).await;
            assert!(backend.subscribes.try_recv().is_err(), "tried again");
        })
        .await;
    }
}
