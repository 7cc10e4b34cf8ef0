//! A hub's task: it subscribes from the hub's place (telling readers of what retention
//! dropped on the way), frames each item once into the ring, and subscribes again elsewhere
//! when its backend ends the stream, until nobody has read for `LINGER`.

use std::sync::{Arc, atomic::Ordering};

use eventsys::gap::{Gap, TopicGap};
use tokio::time::Instant;

use super::{Hub, Hubs, LINGER, Opening, Source};
use crate::{
    api::ApiError,
    http::AppState,
    sse::{
        frame::Frame,
        log_refusal,
        selection::{Ids, Place},
        source::{Item, StreamOf},
    },
    upstream::{CallError, Failure, RESUBSCRIBE},
};

impl Hub {
    /// Subscribes after the hub's place; when retention dropped some of what follows it, from
    /// the oldest kept item instead: a single stream's readers notice the jump and learn of the
    /// gap from the store, a selection's get a gap frame per topic.
    async fn subscribe(&self, state: &AppState, hubs: &Hubs) -> Result<Source, CallError> {
        // Each refusal names a batch of topics; a cursor names at most 1000.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (bearer, place) = {
                let current = self.current();
                let bearer = current.bearer.as_ref().map(|(bearer, _)| bearer.clone());
                (bearer, current.place.clone())
            };
            let refused = match self.of.open(state, &place, bearer.as_ref()).await {
                Ok(source) => return Ok(source),
                Err(err) => err,
            };
            let Failure::Status { status, .. } = &refused.failure else {
                return Err(refused);
            };
            if attempt == 32 {
                return Err(refused);
            }
            let mut current = self.current();
            match &mut current.place {
                Place::Seq(after) => {
                    let Some(gap) = Gap::from_status(status, *after) else {
                        return Err(refused);
                    };
                    tracing::info!(stream = %self.of, ?gap, "dropped by retention while subscribing");
                    *after = gap.resume_after();
                }
                Place::Topics(at) => {
                    let gaps = TopicGap::from_status(status, |topic| at.get(topic));
                    if gaps.is_empty() {
                        return Err(refused);
                    }
                    let StreamOf::Matching(selection) = &self.of else {
                        return Err(refused);
                    };
                    for TopicGap { topic, gap } in gaps {
                        tracing::info!(stream = %self.of, topic, ?gap, "dropped by retention while subscribing");
                        let advanced = at.advance(&topic, gap.resume_after());
                        let Ok(id) = advanced.and_then(|()| selection.id(at)) else {
                            return Err(refused);
                        };
                        self.ring
                            .push(Frame::topic_gap(&topic, gap, &id), hubs.share());
                    }
                }
            }
        }
    }

    /// Takes a backend's item: the frame to push, if it is new. `Err` ends the hub: the
    /// stream would name more topics than a cursor may.
    fn take(&self, item: Item) -> Result<Option<Frame>, String> {
        let mut current = self.current();
        match (item, &mut current.place) {
            (Item::Placed(seq, frame), Place::Seq(last)) => {
                // A resubscription may repeat what was delivered; never a gap (the backend
                // fills them from its store).
                if seq <= *last {
                    return Ok(None);
                }
                *last = seq;
                Ok(frame)
            }
            (Item::Selected(event), Place::Topics(at)) => {
                let StreamOf::Matching(selection) = &self.of else {
                    return Ok(None);
                };
                let prev = at.get(&event.topic);
                if event.seq <= prev {
                    return Ok(None);
                }
                at.advance(&event.topic, event.seq)
                    .map_err(|e| e.to_string())?;
                let id = selection.id(at).map_err(|e| e.to_string())?;
                Ok(Frame::selected(event, prev, &id))
            }
            _ => Ok(None),
        }
    }
}

/// The hub's life: subscribe, frame every event into the ring, resubscribe elsewhere from its
/// place when the backend ends the stream, retire once nobody has read for `LINGER`.
pub(super) async fn run(state: AppState, hub: Arc<Hub>) {
    let hubs = &state.hubs;
    let of = &hub.of;
    let mut source = match hub.subscribe(&state, hubs).await {
        Ok(source) => {
            hub.current().backend = source.backend;
            hub.opened.send_replace(Opening::Open);
            source
        }
        Err(err) => {
            hubs.retire(&hub, true);
            hub.opened.send_replace(Opening::Refused(err.into()));
            return;
        }
    };
    let keep_alive = state.settings.sse_keep_alive;
    let mut quiet_since = Instant::now();
    let mut unread_since = None;
    loop {
        let unread = hub.readers.load(Ordering::Acquire) == 0;
        unread_since = match (unread, unread_since) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, since) => since,
        };
        let retire_at = unread_since.map(|since| since + LINGER);
        let next = tokio::select! {
            _ = state.shutdown.cancelled() => {
                hubs.retire(&hub, true);
                return;
            }
            _ = tokio::time::sleep_until(retire_at.unwrap_or_else(Instant::now)), if retire_at.is_some() => {
                if hubs.retire(&hub, false) {
                    tracing::debug!(stream = %of, "no reader left: hub closed");
                    return;
                }
                continue;
            }
            _ = hub.left.notified(), if !unread => continue,
            _ = tokio::time::sleep_until(quiet_since + keep_alive) => {
                hub.ring.push(Frame::keep_alive(), hubs.share());
                quiet_since = Instant::now();
                continue;
            }
            next = source.message.next() => next,
        };
        match next {
            Ok(Some(item)) => match hub.take(item) {
                Ok(Some(frame)) => {
                    hub.ring.push(frame, hubs.share());
                    quiet_since = Instant::now();
                }
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(stream = %of, %reason, "stream ended");
                    hubs.retire(&hub, true);
                    return;
                }
            },
            ended => {
                let reason = match ended {
                    Err(status) => format!("{:?}: {}", status.code(), status.message()),
                    _ => "stream closed".to_owned(),
                };
                // A backend that became unreachable has taken itself out already; one that
                // ended the stream itself (draining) is taken out by its health checks.
                let from = source.backend;
                tracing::info!(stream = %of, place = %hub.place(), backend = ?from, %reason, "subscription lost: resubscribing");
                state.metrics.sse_resumed("backend_lost");
                match resubscribe(&state, &hub).await {
                    Some(next) => {
                        source = next;
                        hub.current().backend = source.backend;
                    }
                    None => {
                        hubs.retire(&hub, true);
                        return;
                    }
                }
            }
        }
    }
}

/// Subscribes again after the hub's place, backing off with jitter while no backend can take
/// the stream (every hub of a lost backend moves at once otherwise). `None` ends the hub: the
/// gateway shuts down, nobody reads any more, or the topic is refused (a token that expired:
/// readers reconnect with fresh ones and `Last-Event-ID`).
async fn resubscribe(state: &AppState, hub: &Hub) -> Option<Source> {
    let mut pauses = RESUBSCRIBE.attempts();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return None,
            _ = tokio::time::sleep(pauses.next_pause()) => {}
        }
        if hub.readers.load(Ordering::Acquire) == 0 {
            return None;
        }
        match hub.subscribe(state, &state.hubs).await {
            Ok(resumed) => return Some(resumed),
            Err(err) => {
                let err = ApiError::from(err);
                if log_refusal(&hub.of, &err) {
                    return None;
                }
            }
        }
    }
}
