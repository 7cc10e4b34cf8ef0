//! One SSE client's stream: its hub's ring read directly, from the position it joined at. A
//! client behind the ring (it joined late, resumed with `Last-Event-ID`, or read too slowly)
//! first registers at the ring's end, then catches up from the store page by page, and reads
//! on from the ring where the store left off: no gap, no duplicate, nothing waits for it.

use std::{collections::VecDeque, convert::Infallible, time::Duration};

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use eventsys::{backoff::Attempts, gap::Gap};
use http::{HeaderValue, header};
use tokio::time::Instant;

use super::{
    frame::Frame,
    hub::{Joined, Member},
    log_refusal,
    ring::Read,
    source::{History, StreamOf},
};
use crate::{
    api::ApiError,
    http::AppState,
    middleware::StreamSlot,
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
    /// `seq` (position) of the last item sent.
    last: u64,
    /// Events up to the ring's are to be read from the store first.
    behind: bool,
    /// Frames of a catch-up page, not sent yet.
    pending: VecDeque<Bytes>,
    /// Pauses between catch-up pages that failed.
    retry: Attempts,
    ends: Option<Instant>,
    _slot: StreamSlot,
}

impl Reader {
    /// A client of `of` resuming after `after`. Whatever would keep it from starting (no
    /// backend, a refused token) is an error before the response starts.
    pub(crate) async fn open(
        state: &AppState,
        of: &StreamOf,
        after: u64,
        bearer: Option<Bearer>,
        slot: StreamSlot,
    ) -> Result<Reader, ApiError> {
        let Joined {
            member,
            position,
            opened_it,
        } = state.hubs.join(state, of, after, bearer.clone()).await?;
        let mut reader = Reader {
            state: state.clone(),
            hub: member,
            bearer,
            position,
            last: after,
            // The hub it opened starts right after `after`.
            behind: !opened_it,
            pending: VecDeque::new(),
            retry: RESUBSCRIBE.attempts(),
            ends: state.settings.sse_max_duration.map(|d| Instant::now() + d),
            _slot: slot,
        };
        if reader.behind {
            reader.page().await?;
        }
        Ok(reader)
    }

    /// The backend feeding this client's stream now.
    pub(crate) fn backend(&self) -> Option<Backend> {
        self.hub.backend()
    }

    /// The next bytes for the client; `None` ends the stream.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some(bytes);
            }
            if self.ends.is_some_and(|ends| Instant::now() >= ends) {
                // The client reconnects with Last-Event-ID and loses nothing.
                return None;
            }
            if self.behind {
                // Boxed: the history call's future is large and rarely alive, and the stream
                // is kept for as long as the client stays.
                if !Box::pin(self.catch_up()).await {
                    return None;
                }
                continue;
            }
            let ring = &self.hub.ring;
            let pushed = ring.pushed();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            match ring.read(self.position) {
                Read::Frame(frame) => {
                    self.position += 1;
                    match frame.seq {
                        None => return Some(frame.bytes),
                        Some(seq) if seq <= self.last => {}
                        Some(seq) if seq == self.last + 1 => {
                            self.last = seq;
                            return Some(frame.bytes);
                        }
                        // The hub moved on (it resumed past retention): the store has what
                        // lies between, and this event.
                        Some(_) => self.behind = true,
                    }
                }
                Read::Lagged => {
                    // Rejoin at the end first: what is pushed from now on is read from the
                    // ring, what came before from the store.
                    self.position = ring.end();
                    self.behind = true;
                    self.state.metrics.sse_resumed("slow_client");
                }
                Read::Closed => return None,
                Read::Empty => {
                    let far = Instant::now() + Duration::from_secs(86_400);
                    tokio::select! {
                        _ = pushed => {}
                        _ = tokio::time::sleep_until(self.ends.unwrap_or(far)), if self.ends.is_some() => return None,
                    }
                }
            }
        }
    }

    /// One page of catch-up; on a failure that may pass, waits and says to try again. `false`
    /// ends the stream (shutdown, or the client's token is refused now).
    async fn catch_up(&mut self) -> bool {
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

    /// Reads the stored items after `last` into `pending`, one page; clears `behind` when the
    /// store has no more.
    async fn page(&mut self) -> Result<(), ApiError> {
        let History {
            oldest_available,
            frames,
            more,
        } = {
            let _turn = self.state.hubs.catch_ups.acquire().await;
            self.hub
                .of
                .history(&self.state, self.last, CATCH_UP_PAGE, self.bearer.as_ref())
                .await?
        };
        if oldest_available > self.last.saturating_add(1) {
            let gap = Gap {
                requested_after: self.last,
                oldest_available,
            };
            tracing::info!(stream = %self.hub.of, ?gap, "dropped by retention before a reader caught up");
            self.pending.push_back(Frame::gap(gap));
        }
        for (seq, frame) in frames {
            if seq <= self.last {
                continue;
            }
            if let Some(frame) = frame {
                self.pending.push_back(frame.bytes);
            }
            self.last = seq;
        }
        self.behind = more;
        Ok(())
    }
}

impl IntoResponse for Reader {
    fn into_response(self) -> Response {
        let frames = futures::stream::unfold(self, |mut reader| async move {
            let bytes = reader.next().await?;
            Some((Ok::<_, Infallible>(bytes), reader))
        });
        let mut response = Body::from_stream(frames).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}
