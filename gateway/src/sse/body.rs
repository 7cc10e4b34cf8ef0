//! An SSE response's body: hyper polls it for the client's next frame, and it reads the hub's
//! ring right there, without a future per frame. A frame at hand is returned at once; with
//! none, the body waits on the ring's next push (one reusable allocation, registered before the
//! ring is read again so that no push is missed). Only a catch-up from the store runs as a
//! future of its own, which owns the reader until its page is read.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::Frame;
use tokio::time::Sleep;
use tokio_util::sync::ReusableBoxFuture;

use super::reader::{Reader, Step};

type CatchUp = Pin<Box<dyn Future<Output = (Reader, bool)> + Send>>;

pub(super) struct ReaderBody {
    /// The client's reader, unless a catch-up holds it.
    reader: Option<Reader>,
    /// A catch-up page being read; it gives the reader back, and whether the stream goes on.
    catch_up: Option<CatchUp>,
    /// The wait for the ring's next push, once one is registered (`waiting`).
    pushed: Option<ReusableBoxFuture<'static, ()>>,
    waiting: bool,
    /// `--sse-max-duration`'s end or the token's expiry, for a stream that waits past it.
    ends: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl ReaderBody {
    pub(super) fn new(reader: Reader) -> ReaderBody {
        ReaderBody {
            ends: reader
                .ends()
                .map(|ends| Box::pin(tokio::time::sleep_until(ends))),
            reader: Some(reader),
            catch_up: None,
            pushed: None,
            waiting: false,
            done: false,
        }
    }

    /// Polls until the client's next bytes, the stream's end, or a wait.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            if let Some(catch_up) = &mut self.catch_up {
                let (reader, goes_on) = ready!(catch_up.as_mut().poll(cx));
                self.catch_up = None;
                if !goes_on {
                    return Poll::Ready(None);
                }
                self.reader = Some(reader);
            }
            let Some(reader) = self.reader.as_mut() else {
                return Poll::Ready(None);
            };
            if self.waiting {
                let pushed = self.pushed.as_mut().expect("a registered wait");
                match pushed.poll(cx) {
                    Poll::Ready(()) => self.waiting = false,
                    Poll::Pending => return self.pending(cx),
                }
            }
            match reader.step() {
                Step::Send(bytes) => return Poll::Ready(Some(bytes)),
                Step::End => return Poll::Ready(None),
                Step::Behind => {
                    let mut reader = self.reader.take().expect("the reader");
                    self.catch_up = Some(Box::pin(async move {
                        let goes_on = reader.catch_up().await;
                        (reader, goes_on)
                    }));
                }
                Step::Empty => {
                    let next = reader.pushed();
                    match &mut self.pushed {
                        Some(pushed) => pushed.set(next),
                        None => self.pushed = Some(ReusableBoxFuture::new(next)),
                    }
                    let pushed = self.pushed.as_mut().expect("just set");
                    // The first poll registers the wait; a push since the ring was read
                    // completes it at once, one after is caught by reading the ring again.
                    if pushed.poll(cx).is_ready() || !reader.ring_is_empty() {
                        continue;
                    }
                    self.waiting = true;
                    return self.pending(cx);
                }
            }
        }
    }

    /// Waiting for a push: once `--sse-max-duration` has passed or the token has expired, the
    /// reader's next step says so instead (the end, or the expiry's frame and then the end).
    fn pending(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match self.ends.as_mut().map(|ends| ends.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                self.ends = None;
                self.waiting = false;
                let reader = self.reader.as_mut().expect("a waiting reader");
                match reader.step() {
                    Step::Send(bytes) => Poll::Ready(Some(bytes)),
                    // Past the deadline the reader has nothing else to say.
                    _ => Poll::Ready(None),
                }
            }
            _ => Poll::Pending,
        }
    }
}

impl http_body::Body for ReaderBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let body = self.get_mut();
        if body.done {
            return Poll::Ready(None);
        }
        let next = ready!(body.poll_next(cx));
        if next.is_none() {
            // Drop the reader now: its stream slot and presence end with the stream.
            body.done = true;
            body.reader = None;
            body.catch_up = None;
            body.pushed = None;
        }
        Poll::Ready(next.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
