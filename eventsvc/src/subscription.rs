//! One `Subscribe` stream: replays a topic's stored events after the client's `seq`, then keeps
//! following the store for new ones. Following by `seq` from the shared store (rather than from
//! in-process broadcasts) is what lets a subscriber see events published on any backend, in
//! order, with no gap or duplicate between replay and live.

use std::{sync::Arc, time::Duration};

use eventsys::v1;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{convert, stats::Stats, store::EventStore};

/// Events fetched from the store per query.
const BATCH: usize = 256;
/// Events queued for a client that is not reading; beyond it the follower waits.
const BUFFER: usize = 64;

pub type EventStream = ReceiverStream<Result<v1::Event, Status>>;

/// What a subscription needs from its backend.
#[derive(Clone)]
pub struct Feed {
    pub store: Arc<dyn EventStore>,
    pub stats: Arc<Stats>,
    /// Woken by this backend's own publishes so local subscribers see them at once.
    pub published: Arc<Notify>,
    /// How often to look for events published through other processes.
    pub poll_interval: Duration,
    /// Cancelled when the backend shuts down: every stream then ends.
    pub shutdown: CancellationToken,
}

impl Feed {
    /// Starts a stream of `topic`'s events with `seq > after_seq`.
    pub fn subscribe(&self, topic: String, after_seq: u64) -> EventStream {
        let (tx, rx) = mpsc::channel(BUFFER);
        let feed = self.clone();
        tokio::spawn(async move {
            let _open = feed.stats.subscriber();
            let ended = feed.follow(&topic, after_seq, &tx).await;
            if let Err(status) = ended {
                // The client may already be gone; then there is no one to tell.
                let _ = tx.try_send(Err(status));
            }
        });
        ReceiverStream::new(rx)
    }

    /// Returns `Ok` when the client went away, or the error that ends its stream.
    async fn follow(
        &self,
        topic: &str,
        mut last: u64,
        tx: &mpsc::Sender<Result<v1::Event, Status>>,
    ) -> Result<(), Status> {
        let shutting_down =
            || Status::unavailable("backend is shutting down: subscribe again with after_seq");
        loop {
            // Registered before the query, so a publish that commits after the query starts
            // still wakes this loop instead of waiting for the next poll.
            let published = self.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();

            let events = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(shutting_down()),
                events = self.store.events_after(topic, last, BATCH) => events?,
            };
            let full = events.len() == BATCH;
            for event in events {
                last = event.seq;
                tokio::select! {
                    _ = self.shutdown.cancelled() => return Err(shutting_down()),
                    sent = tx.send(Ok(convert::event(event))) => {
                        if sent.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(shutting_down()),
                _ = tx.closed() => return Ok(()),
                _ = published => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }
}
