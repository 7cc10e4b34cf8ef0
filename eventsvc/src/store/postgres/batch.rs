//! Group commit for publishes: one task per process sends every publish queued while its last
//! batch was under way in one call of `publish_events`, so they share one round trip and one
//! commit (a topic's publishes are otherwise one commit each: its counter's row stays locked
//! to commit). A lone publish is sent at once (no timer). In the batch each publish runs in a
//! subtransaction of its own: one whose id is taken or whose key is another request's fails
//! alone; a call that fails (a lost connection, a full disk) fails each of its publishes, and
//! nothing of it is applied. An answer leaves after the commit.

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::{
    pg_error,
    rows::{Published, publish_batch},
};
use crate::store::{Event, KeyClaim, Result, StoreError};

/// Publishes waiting for the task; a caller past it waits for room (its request's deadline
/// bounds how long).
const QUEUE: usize = 1024;
/// The most publishes one call sends.
const MAX_BATCH: usize = 256;
/// The most bytes of free text and data one call sends.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// A publish with where its answer goes.
struct Pending {
    event: Event,
    key: Option<KeyClaim>,
    bytes: usize,
    answer: oneshot::Sender<Result<Published>>,
}

/// The queue to this process's publishing task.
pub(super) struct Publisher {
    queue: mpsc::Sender<Pending>,
}

impl Publisher {
    /// Starts the task, which publishes over `pool` until the publisher is dropped.
    pub(super) fn start(pool: Pool, channel: &'static str) -> Publisher {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, pending, channel));
        Publisher { queue }
    }

    /// Publishes `event` (its `seq` the topic's next, `bytes` its `NewEvent::size`), recording
    /// it as `key`'s answer.
    pub(super) async fn publish(
        &self,
        event: Event,
        bytes: usize,
        key: Option<KeyClaim>,
    ) -> Result<Published> {
        let stopped = || StoreError::Unavailable {
            op: "publish",
            reason: "the store's publisher stopped".into(),
        };
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            event,
            key,
            bytes,
            answer,
        };
        self.queue.send(pending).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Until the publisher is dropped: a batch of what is queued, sent.
async fn run(pool: Pool, mut pending: mpsc::Receiver<Pending>, channel: &'static str) {
    while let Some(first) = pending.recv().await {
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match pending.try_recv() {
                Ok(next) => {
                    bytes += next.bytes;
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let sent: Vec<_> = batch.iter().map(|p| (&p.event, p.key.as_ref())).collect();
        let outcome = match pool.get().await {
            Ok(client) => publish_batch(&client, &sent, channel)
                .await
                .map_err(Failure::Pg),
            Err(deadpool_postgres::PoolError::Backend(err)) => Err(Failure::Pg(err)),
            Err(other) => Err(Failure::NoConnection(other.to_string())),
        };
        match outcome {
            Ok(published) if published.len() == batch.len() => {
                for (p, published) in batch.into_iter().zip(published) {
                    let _ = p.answer.send(Ok(published));
                }
            }
            Ok(published) => {
                let reason = format!("{} answers for {} publishes", published.len(), batch.len());
                for p in batch {
                    let _ = p.answer.send(Err(StoreError::Internal {
                        op: "publish",
                        source: reason.clone().into(),
                    }));
                }
            }
            Err(failure) => {
                for p in batch {
                    let _ = p.answer.send(Err(failure.error()));
                }
            }
        }
    }
}

/// Why a batch was not published.
enum Failure {
    Pg(tokio_postgres::Error),
    /// No connection to be had in time.
    NoConnection(String),
}

impl Failure {
    /// The error of each publish of the batch.
    fn error(&self) -> StoreError {
        match self {
            Failure::Pg(err) => pg_error("publish", err),
            Failure::NoConnection(reason) => StoreError::Unavailable {
                op: "publish",
                reason: reason.clone(),
            },
        }
    }
}
