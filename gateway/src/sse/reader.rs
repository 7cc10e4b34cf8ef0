//! One SSE client's stream: its hub's ring read directly, from the position it joined at. A
//! client behind the ring (it joined late, resumed with `Last-Event-ID`, or read too slowly)
//! first registers at the ring's end, then catches up from the store page by page, and reads
//! on from the ring where the store left off: no gap, no duplicate, nothing waits for it.

use std::collections::{BTreeMap, VecDeque};

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use eventsys::{backoff::Attempts, gap::Gap};
use http::{HeaderValue, header};
use tokio::time::Instant;

use super::{
    body::ReaderBody,
    frame::{Frame, Placed},
    hub::{Joined, Member},
    log_refusal,
    ring::Read,
    selection::{Ids, Place},
    source::{History, StreamOf, TopicPage, topic_history},
};
use crate::{
    api::ApiError,
    http::AppState,
    middleware::StreamSlot,
    presence::Here,
    upstream::{Backend, Bearer, RESUBSCRIBE},
};

/// Events per catch-up page: what a client behind holds at the gateway at most, besides what
/// its connection has buffered.
const CATCH_UP_PAGE: u32 = 32;

pub(crate) struct Reader {
    state: AppState,
    /// The client's place in its stream's hub (which it reads through).
    hub: Member,
    bearer: Option<Bearer>,
    /// Next position to read in the ring.
    position: u64,
    /// What the client has: the last `seq` (position) sent, or each topic's.
    place: Place,
    /// Events up to the ring's are to be read from the store first.
    behind: bool,
    /// A selection's topics to read from the store first, each with a `seq` the store's
    /// answer is sure to cover (the hub had it when it was noticed).
    behind_topics: BTreeMap<String, u64>,
    /// A selection's topics where the client may be past the hub's frames (by the place it
    /// has): until the hub's frames reach it, the client is sent its own cursor.
    ahead: BTreeMap<String, u64>,
    /// Frames of a catch-up page, not sent yet.
    pending: VecDeque<Bytes>,
    /// Pauses between catch-up pages that failed.
    retry: Attempts,
    /// `--sse-max-duration`'s end: the stream ends (the client resumes with `Last-Event-ID`).
    ends: Option<Instant>,
    /// When the client's token expires: a last `event: error` frame, then the end.
    expires: Option<Instant>,
    _slot: StreamSlot,
    /// The stream counted in its topic's presence while it lasts.
    _here: Option<Here>,
}

impl Reader {
    /// A client of `of` resuming after `after`. Whatever would keep it from starting (no
    /// backend, a refused token) is an error before the response starts.
    pub(crate) async fn open(
        state: &AppState,
        of: &StreamOf,
        after: Place,
        (bearer, expires): (Option<Bearer>, Option<Instant>),
        slot: StreamSlot,
    ) -> Result<Reader, ApiError> {
        let Joined {
            member,
            position,
            covered,
            hub_place,
        } = state
            .hubs
            .join(state, of, after.clone(), bearer.clone().zip(expires))
            .await?;
        let mut reader = Reader {
            state: state.clone(),
            hub: member,
            bearer,
            position,
            place: after,
            behind: false,
            behind_topics: BTreeMap::new(),
            ahead: BTreeMap::new(),
            pending: VecDeque::new(),
            retry: RESUBSCRIBE.attempts(),
            ends: state.settings.sse_max_duration.map(|d| Instant::now() + d),
            expires,
            _slot: slot,
            _here: None,
        };
        // Unless the ring holds everything after `after` (the hub it opened starts right after
        // it), what the hub had before the client joined is read from the store.
        if !covered {
            if let Place::Topics(at) = &reader.place {
                // Any topic it has may be past the hub.
                reader.ahead = at.iter().map(|(t, s)| (t.to_owned(), s)).collect();
            }
            reader.fall_behind(&hub_place);
        }
        if reader.is_behind() {
            reader.page().await?;
        }
        Ok(reader)
    }

    /// The hub is at `hub` (at or past the client's ring position): what it has that the
    /// client may not is read from the store.
    fn fall_behind(&mut self, hub: &Place) {
        match (&self.place, hub) {
            (Place::Topics(at), Place::Topics(hub)) => {
                for (topic, seq) in hub.iter() {
                    if seq > at.get(topic) {
                        let covered = self.behind_topics.entry(topic.to_owned()).or_default();
                        *covered = (*covered).max(seq);
                    }
                }
            }
            _ => self.behind = true,
        }
    }

    fn is_behind(&self) -> bool {
        self.behind || !self.behind_topics.is_empty()
    }

    fn selection(&self) -> Option<&eventsys::topics::Selection> {
        match &self.hub.of {
            StreamOf::Matching(selection) => Some(selection),
            _ => None,
        }
    }

    /// Counts the stream in its topic's presence for as long as it lasts.
    pub(crate) fn present(mut self, here: Here) -> Self {
        self._here = Some(here);
        self
    }

    /// The backend feeding this client's stream now.
    pub(crate) fn backend(&self) -> Option<Backend> {
        self.hub.backend()
    }

    /// What the client gets next without waiting: what is pending, the ring's next frame, or
    /// word that the store must be read first (`Step::Behind`) or the ring has nothing yet.
    pub(super) fn step(&mut self) -> Step {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Step::Send(bytes);
            }
            if self
                .expires
                .is_some_and(|expires| Instant::now() >= expires)
            {
                // Said once; the stream ends right after it.
                self.expires = None;
                self.ends = Some(Instant::now());
                return Step::Send(Frame::token_expired());
            }
            if self.ends.is_some_and(|ends| Instant::now() >= ends) {
                // The client reconnects with Last-Event-ID and loses nothing.
                return Step::End;
            }
            if self.is_behind() {
                return Step::Behind;
            }
            match self.hub.ring.read(self.position) {
                Read::Frame(frame) => {
                    self.position += 1;
                    match self.take(frame) {
                        Taken::Send(bytes) => return Step::Send(bytes),
                        Taken::Skip => {}
                        Taken::End => return Step::End,
                    }
                }
                Read::Lagged => {
                    // Rejoin at the end first: what is pushed from now on is read from the
                    // ring, what came before from the store.
                    self.position = self.hub.ring.end();
                    let hub = self.hub.place();
                    self.fall_behind(&hub);
                    self.state.metrics.sse_resumed("slow_client");
                }
                Read::Empty => return Step::Empty,
                Read::Closed => return Step::End,
            }
        }
    }

    /// Whether the ring has nothing at the client's position yet (checked again once a wait
    /// for the next push is registered, so that a push in between is not missed).
    pub(super) fn ring_is_empty(&self) -> bool {
        matches!(self.hub.ring.read(self.position), Read::Empty)
    }

    /// Completes after the hub's next push or close; owns its hub, so a body can keep it.
    pub(super) fn pushed(&self) -> impl Future<Output = ()> + Send + 'static {
        self.hub.pushed()
    }

    /// When the stream ends (`--sse-max-duration`) or its token expires, whichever is first.
    pub(super) fn ends(&self) -> Option<Instant> {
        match (self.ends, self.expires) {
            (Some(ends), Some(expires)) => Some(ends.min(expires)),
            (ends, expires) => ends.or(expires),
        }
    }

    /// What to do with a frame of the ring.
    fn take(&mut self, frame: Frame) -> Taken {
        let Frame { seq, bytes, placed } = frame;
        let Some(seq) = seq else {
            return Taken::Send(bytes);
        };
        match (&mut self.place, placed) {
            (Place::Seq(last), None) => {
                if seq <= *last {
                    return Taken::Skip;
                }
                if seq == *last + 1 {
                    *last = seq;
                    return Taken::Send(bytes);
                }
                // The hub moved on (it resumed past retention): the store has what lies
                // between, and this event.
                self.behind = true;
                Taken::Skip
            }
            (Place::Topics(at), Some(placed)) => {
                let Placed {
                    topic,
                    prev,
                    gap,
                    kind,
                    data,
                } = placed;
                let mine = at.get(&topic);
                if self.ahead.get(&*topic).is_some_and(|a| *a <= seq) {
                    // The hub has reached the client here.
                    self.ahead.remove(&*topic);
                }
                if seq <= mine {
                    return Taken::Skip;
                }
                if prev > mine {
                    let covered = self.behind_topics.entry(topic.to_string()).or_default();
                    *covered = (*covered).max(seq);
                    return Taken::Skip;
                }
                if at.advance(&topic, seq).is_err() {
                    return Taken::End;
                }
                let Some(selection) = self.selection() else {
                    return Taken::End;
                };
                let Place::Topics(at) = &self.place else {
                    return Taken::End;
                };
                if !gap && self.ahead.is_empty() {
                    return Taken::Send(bytes);
                }
                // Its own id: where it stands is not where the hub does.
                let Ok(id) = selection.id(at) else {
                    return Taken::End;
                };
                if gap {
                    // The client's own gap: from where it stood.
                    let gap = Gap {
                        requested_after: mine,
                        oldest_available: seq + 1,
                    };
                    return Taken::Send(Frame::topic_gap(&topic, gap, &id).bytes);
                }
                Taken::Send(Frame::with_id(kind, &id, &data))
            }
            _ => Taken::Skip,
        }
    }

    /// One page of catch-up; on a failure that may pass, waits and says to try again. `false`
    /// ends the stream (shutdown, or the client's token is refused now).
    pub(super) async fn catch_up(&mut self) -> bool {
        let shutdown = self.state.shutdown.clone();
        let err = tokio::select! {
            _ = shutdown.cancelled() => return false,
            paged = self.page() => match paged {
                Ok(()) => {
                    self.retry.reset();
                    return true;
                }
                Err(err) => err,
            },
        };
        if log_refusal(&self.hub.of, &err) {
            return false;
        }
        tokio::select! {
            _ = self.state.shutdown.cancelled() => false,
            _ = tokio::time::sleep(self.retry.next_pause()) => true,
        }
    }

    /// Reads one page of what the client is behind on into `pending`.
    async fn page(&mut self) -> Result<(), ApiError> {
        match self.place {
            Place::Seq(_) => self.seq_page().await,
            Place::Topics(_) => self.topic_page().await,
        }
    }

    /// Reads the stored items after the last into `pending`, one page; clears `behind` when
    /// the store has no more.
    async fn seq_page(&mut self) -> Result<(), ApiError> {
        let last = self.place.seq();
        let History {
            oldest_available,
            frames,
            more,
        } = {
            let _turn = self.state.hubs.catch_ups.acquire().await;
            self.hub
                .of
                .history(&self.state, last, CATCH_UP_PAGE, self.bearer.as_ref())
                .await?
        };
        let Place::Seq(last) = &mut self.place else {
            return Ok(());
        };
        if oldest_available > last.saturating_add(1) {
            let gap = Gap {
                requested_after: *last,
                oldest_available,
            };
            tracing::info!(stream = %self.hub.of, ?gap, "dropped by retention before a reader caught up");
            self.pending.push_back(Frame::gap(gap));
        }
        for (seq, frame) in frames {
            if seq <= *last {
                continue;
            }
            if let Some(frame) = frame {
                self.pending.push_back(frame.bytes);
            }
            *last = seq;
        }
        self.behind = more;
        Ok(())
    }

    /// Reads one page of the first topic the client is behind on into `pending`, each frame
    /// with the client's own cursor.
    async fn topic_page(&mut self) -> Result<(), ApiError> {
        let Some((topic, covered)) = self
            .behind_topics
            .first_key_value()
            .map(|(t, c)| (t.clone(), *c))
        else {
            return Ok(());
        };
        let (Some(selection), Place::Topics(at)) = (self.selection().cloned(), &self.place) else {
            return Ok(());
        };
        let after = at.get(&topic);
        let TopicPage {
            oldest_available,
            events,
            through,
            more,
        } = {
            let _turn = self.state.hubs.catch_ups.acquire().await;
            let bearer = self.bearer.as_ref();
            topic_history(
                &selection,
                &self.state,
                &topic,
                after,
                CATCH_UP_PAGE,
                bearer,
            )
            .await?
        };
        let Place::Topics(at) = &mut self.place else {
            return Ok(());
        };
        let too_many = |e: eventsys::topics::CursorError| ApiError::bad_request(e.to_string());
        if oldest_available > after.saturating_add(1) {
            let gap = Gap {
                requested_after: after,
                oldest_available,
            };
            tracing::info!(stream = %self.hub.of, topic, ?gap, "dropped by retention before a reader caught up");
            at.advance(&topic, gap.resume_after()).map_err(too_many)?;
            let id = selection.id(at).map_err(too_many)?;
            self.pending
                .push_back(Frame::topic_gap(&topic, gap, &id).bytes);
        }
        for event in events {
            let prev = at.get(&topic);
            if event.seq <= prev {
                continue;
            }
            at.advance(&topic, event.seq).map_err(too_many)?;
            let id = selection.id(at).map_err(too_many)?;
            if let Some(frame) = Frame::selected(event, prev, &id) {
                self.pending.push_back(frame.bytes);
            }
        }
        at.advance(&topic, through).map_err(too_many)?;
        if !more {
            // The store's answer covers what the hub had when this was noticed.
            at.advance(&topic, covered).map_err(too_many)?;
            self.behind_topics.remove(&topic);
            // The hub's frames may not have reached this place yet.
            self.ahead.insert(topic.clone(), at.get(&topic));
        }
        Ok(())
    }
}

/// What a client gets next, as far as can be told without waiting.
pub(super) enum Step {
    Send(Bytes),
    /// The stream ends (shutdown, `--sse-max-duration`, a full cursor, a closed hub).
    End,
    /// The store has what comes next: [`Reader::catch_up`].
    Behind,
    /// Nothing yet: wait for [`Reader::pushed`].
    Empty,
}

/// What a reader does with a frame of the ring.
enum Taken {
    Send(Bytes),
    Skip,
    /// The stream cannot go on (its cursor is full): the client reconnects and is told.
    End,
}

impl IntoResponse for Reader {
    fn into_response(self) -> Response {
        let mut response = Body::new(ReaderBody::new(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}
