//! Subscriptions to a selection: the topics some patterns match, the events a filter accepts.
//! Each topic is served in `seq` order from its own place in a `Cursor`: first what the store
//! holds after it (every topic the patterns match, so topics never delivered start at their
//! beginning), then the selection's ring. The ring carries every event of the selection's
//! topics (a rejected one as a bare place), so a hole in a topic's seqs means something was
//! missed, and the subscriber reads that topic from the store.

use std::{collections::HashMap, sync::Arc, time::Duration};

use eventsys::topics::{
    Cursor, CursorError, MAX_CURSOR_BYTES, MAX_CURSOR_TOPICS, Patterns, Selection, Subject,
};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tonic::Status;

use super::{BATCH, EventStream, Feed, Follower, Shared, StreamOf, shutting_down};
use crate::{
    convert,
    store::{Event, TopicHead},
    subscribe::Encoded,
};

/// Whether `selection` accepts a stored event.
fn accepts(selection: &Selection, event: &Event) -> bool {
    selection.accepts(&subject(event))
}

fn subject(event: &Event) -> Subject<'_> {
    Subject {
        title: &event.title,
        user_id: &event.user_id,
        topic: &event.topic,
        data: event.data.as_ref(),
    }
}

/// Each selection's verdict on `event`: every distinct filter is evaluated once, however many
/// selections (and subscribers) share it.
pub(super) fn verdicts<R>(selections: &[(Arc<Selection>, R)], event: &Event) -> Vec<bool> {
    let mut taken: HashMap<&str, bool> = HashMap::new();
    let subject = subject(event);
    selections
        .iter()
        .map(|(selection, _)| match selection.filter_text() {
            Some(key) => *taken
                .entry(key)
                .or_insert_with(|| selection.accepts(&subject)),
            None => true,
        })
        .collect()
}

type Client = mpsc::Sender<Result<Encoded, Status>>;

/// A subscriber's ring ended without an error of its own.
fn ended(feed: &Feed) -> Status {
    let reason = match &*feed.subscribers().follower.borrow() {
        Follower::Failed(reason) => reason.clone(),
        _ => "change feed stopped: subscribe again with after_seqs".to_owned(),
    };
    Status::unavailable(reason)
}

fn too_many(err: CursorError) -> Status {
    Status::invalid_argument(err.to_string())
}

impl Feed {
    /// Starts a stream of `selection`'s events after each topic's place in `at`: stored ones,
    /// then live; ended once the caller's token expires (`expires`, as in `subscribe`).
    pub(crate) fn subscribe_selection(
        &self,
        selection: Selection,
        at: Cursor,
        expires: Option<Duration>,
    ) -> EventStream {
        self.serving(expires, move |feed, tx| async move {
            feed.serve_selection(selection, at, &tx).await
        })
    }

    /// The topics the selection's patterns match now, refused beyond what a cursor may name
    /// (every topic at its newest seq: more than a stream's cursor can grow to until then).
    pub(crate) async fn topics_of(&self, patterns: &Patterns) -> Result<Vec<TopicHead>, Status> {
        let heads = self.0.store.topics(patterns, MAX_CURSOR_TOPICS + 1).await?;
        let whole = Cursor::from_positions(
            heads.iter().map(|h| (h.topic.clone(), h.last_seq)),
            patterns,
        );
        if whole.and_then(|at| at.encode(patterns)).is_err() {
            return Err(Status::invalid_argument(format!(
                "the topic patterns {patterns} match more than {MAX_CURSOR_TOPICS} topics (or \
                 more than a cursor of {MAX_CURSOR_BYTES} bytes names): narrow them"
            )));
        }
        Ok(heads)
    }

    /// One subscription; `Ok` when the client went away, else the status that ends it.
    async fn serve_selection(
        &self,
        selection: Selection,
        mut at: Cursor,
        tx: &Client,
    ) -> Result<(), Status> {
        let of = StreamOf::Matching(selection.clone());
        let mut registration = self.register(&of).await?;
        if !self.catch_up_all(&selection, &mut at, tx, false).await? {
            return Ok(());
        }
        loop {
            let next = tokio::select! {
                _ = self.0.shutdown.cancelled() => return Err(shutting_down()),
                _ = tx.closed() => return Ok(()),
                next = registration.rx.recv() => next,
            };
            let item = match next {
                Ok(item) => item,
                Err(RecvError::Lagged(_)) => {
                    // Rejoin at the ring's end before reading the store, as a topic's
                    // subscriber does.
                    registration.rx = registration.rx.resubscribe();
                    if !self.catch_up_all(&selection, &mut at, tx, true).await? {
                        return Ok(());
                    }
                    continue;
                }
                Err(RecvError::Closed) => return Err(ended(self)),
            };
            if !self.take(&selection, item, &mut at, tx).await? {
                return Ok(());
            }
        }
    }

    /// One item of the selection's ring; `Ok(false)` when the client is gone.
    async fn take(
        &self,
        selection: &Selection,
        item: Shared,
        at: &mut Cursor,
        tx: &Client,
    ) -> Result<bool, Status> {
        let Shared { topic, seq, event } = item;
        let last = at.get(&topic);
        if seq <= last {
            return Ok(true);
        }
        if seq > last.saturating_add(1) {
            // A hole: the store has what lies between, and this event.
            return self.catch_up_topic(selection, &topic, at, tx).await;
        }
        if let Some(event) = event
            && !self.send(tx, event).await?
        {
            return Ok(false);
        }
        at.advance(&topic, seq).map_err(too_many)?;
        Ok(true)
    }

    /// Reads every topic of the selection from the store after its place; `lagged`: the
    /// subscriber fell behind its ring, and is closed if too far behind.
    async fn catch_up_all(
        &self,
        selection: &Selection,
        at: &mut Cursor,
        tx: &Client,
        lagged: bool,
    ) -> Result<bool, Status> {
        let heads = tokio::select! {
            _ = self.0.shutdown.cancelled() => return Err(shutting_down()),
            heads = self.topics_of(selection.patterns()) => heads?,
        };
        if lagged {
            let behind: u64 = heads
                .iter()
                .map(|h| h.last_seq.saturating_sub(at.get(&h.topic)))
                .sum();
            if behind > self.0.settings.max_lag {
                self.0.stats.closed_too_far_behind();
                tracing::warn!(stream = %selection, behind, "subscriber too far behind: closing it");
                return Err(Status::resource_exhausted(format!(
                    "subscriber fell {behind} events behind (limit {}): subscribe again with \
                     after_seqs (each topic's last seq)",
                    self.0.settings.max_lag
                )));
            }
            self.0.stats.caught_up();
            tracing::info!(stream = %selection, behind, "subscriber fell behind: catching up from the store");
        }
        for head in heads {
            if !self.catch_up_topic(selection, &head.topic, at, tx).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sends the stored events of `topic` after its place that the filter accepts, moving the
    /// place past all it read; `Ok(false)` when the client is gone.
    async fn catch_up_topic(
        &self,
        selection: &Selection,
        topic: &str,
        at: &mut Cursor,
        tx: &Client,
    ) -> Result<bool, Status> {
        loop {
            let stored = tokio::select! {
                _ = self.0.shutdown.cancelled() => return Err(shutting_down()),
                stored = self.0.store.events_after(topic, at.get(topic), BATCH) => stored?,
            };
            let full = stored.len() == BATCH;
            for event in stored {
                let seq = event.seq;
                if accepts(selection, &event)
                    && !self.send(tx, Encoded::from(convert::event(event))).await?
                {
                    return Ok(false);
                }
                at.advance(topic, seq).map_err(too_many)?;
            }
            if !full {
                return Ok(true);
            }
        }
    }
}
