//! A topic hub's ring of recent frames: one writer (the hub), any number of readers, each at
//! its own position. The ring never waits for a reader; one that falls behind what it keeps
//! is told so (`Read::Lagged`) and catches up elsewhere. Bounded by frames and by bytes.

use std::{
    collections::VecDeque,
    sync::{PoisonError, RwLock},
};

use tokio::sync::Notify;

use super::frame::Frame;

/// What a reader finds at its position.
#[derive(Debug)]
pub(crate) enum Read {
    Frame(Frame),
    /// Nothing yet: wait with [`Ring::pushed`].
    Empty,
    /// The frame at this position was dropped to stay within bounds.
    Lagged,
    /// The hub ended (shutdown, or its topic refused): no frame will come.
    Closed,
}

/// The frames a hub keeps for its readers, positions counted from the hub's first frame.
pub(crate) struct Ring {
    /// An `RwLock` because reads far outnumber writes: every reader of a topic reads each
    /// frame, the hub task alone pushes. Std, not tokio's: held for a `VecDeque` access (a
    /// frame is `Bytes`, cloned by reference count) and never across an `.await`; a reader
    /// that finds nothing waits on `pushed` after releasing it.
    state: RwLock<State>,
    /// Woken on every push and on close.
    pushed: Notify,
    max_frames: usize,
}

struct State {
    frames: VecDeque<Frame>,
    /// Position of `frames[0]`; positions count every frame ever pushed.
    first: u64,
    bytes: usize,
    closed: bool,
}

impl Ring {
    pub(crate) fn new(max_frames: usize) -> Ring {
        Ring {
            state: RwLock::new(State {
                frames: VecDeque::new(),
                first: 0,
                bytes: 0,
                closed: false,
            }),
            pushed: Notify::new(),
            max_frames: max_frames.max(1),
        }
    }

    /// Appends `frame`, dropping the oldest ones beyond `max_frames` or `max_bytes` (the newest
    /// frame always stays, whatever its size), and wakes every waiting reader.
    pub(crate) fn push(&self, frame: Frame, max_bytes: usize) {
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            state.bytes += frame.len();
            state.frames.push_back(frame);
            while state.frames.len() > 1
                && (state.frames.len() > self.max_frames || state.bytes > max_bytes)
            {
                let dropped = state.frames.pop_front().expect("more than one frame");
                state.bytes -= dropped.len();
                state.first += 1;
            }
        }
        self.pushed.notify_waiters();
    }

    /// Ends the ring: readers get `Closed` once they have read what it holds.
    pub(crate) fn close(&self) {
        self.state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.pushed.notify_waiters();
    }

    /// The position the next frame will take: a reader starting here gets every frame pushed
    /// from now on.
    pub(crate) fn end(&self) -> u64 {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.first + state.frames.len() as u64
    }

    pub(crate) fn read(&self, position: u64) -> Read {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        if position < state.first {
            return Read::Lagged;
        }
        match state.frames.get((position - state.first) as usize) {
            Some(frame) => Read::Frame(frame.clone()),
            None if state.closed => Read::Closed,
            None => Read::Empty,
        }
    }

    /// Completes after the next push or close. Create it (and `enable` it) before a `read`
    /// that finds `Empty`, so that a push in between is not missed.
    pub(crate) fn pushed(&self) -> tokio::sync::futures::Notified<'_> {
        self.pushed.notified()
    }

    /// Whether it still holds every frame ever pushed (none dropped to stay within bounds).
    pub(crate) fn kept_all(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .first
            == 0
    }

    /// Bytes held now.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn frame(seq: u64, len: usize) -> Frame {
        Frame {
            seq: Some(seq),
            bytes: Bytes::from(vec![b'x'; len]),
            placed: None,
        }
    }

    fn seq(read: Read) -> Option<u64> {
        match read {
            Read::Frame(frame) => frame.seq,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn readers_move_at_their_own_pace_within_the_bounds() {
        let ring = Ring::new(3);
        assert!(matches!(ring.read(0), Read::Empty));
        for s in 1..=3 {
            ring.push(frame(s, 10), 1000);
        }
        assert_eq!(seq(ring.read(0)), Some(1));
        assert_eq!(seq(ring.read(2)), Some(3));
        assert!(matches!(ring.read(3), Read::Empty));
        // A fourth frame drops the first: the reader still there lagged, the others did not.
        ring.push(frame(4, 10), 1000);
        assert!(matches!(ring.read(0), Read::Lagged));
        assert_eq!(seq(ring.read(1)), Some(2));
        assert_eq!(ring.end(), 4);
        // Bytes bind too, but the newest frame always stays.
        ring.push(frame(5, 25), 30);
        assert_eq!(ring.bytes(), 25);
        assert!(matches!(ring.read(3), Read::Lagged));
        assert_eq!(seq(ring.read(4)), Some(5));
        ring.push(frame(6, 100), 30);
        assert_eq!(ring.bytes(), 100);
        assert_eq!(seq(ring.read(5)), Some(6));
        ring.close();
        assert_eq!(seq(ring.read(5)), Some(6));
        assert!(matches!(ring.read(6), Read::Closed));
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_a_push() {
        let ring = std::sync::Arc::new(Ring::new(8));
        let reader = {
            let ring = ring.clone();
            tokio::spawn(async move {
                loop {
                    let pushed = ring.pushed();
                    tokio::pin!(pushed);
                    pushed.as_mut().enable();
                    match ring.read(0) {
                        Read::Empty => pushed.await,
                        read => return seq(read),
                    }
                }
            })
        };
        tokio::task::yield_now().await;
        ring.push(frame(7, 1), 100);
        assert_eq!(reader.await.unwrap(), Some(7));
    }
}
