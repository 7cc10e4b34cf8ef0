//! Group commit for creates and publishes: one task per process sends every write queued while
//! its last batch was under way in one call of `write_events`, so they share one round trip and
//! one commit (a topic's publishes are otherwise one commit each: its counter's row stays
//! locked to commit). A lone write is sent at once (no timer). In the batch each write runs in
//! a subtransaction of its own: one whose id is taken or whose key is another request's fails
//! alone; a call that fails (a lost connection, a full disk) fails each of its writes, and
//! nothing of it is applied. An answer leaves after the commit.

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::{
    pg_error,
    rows::{Written, write_batch},
};
use crate::store::{Event, KeyClaim, Result, StoreError, batching};

/// Which write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Create,
    Publish,
}

impl Kind {
    fn op(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Publish => "publish",
        }
    }
}

/// A write with where its answer goes.
struct Pending {
    kind: Kind,
    event: Event,
    key: Option<KeyClaim>,
    bytes: usize,
    answer: oneshot::Sender<Result<Written>>,
}

/// The queue to this process's writing task.
pub(super) struct Writer {
    queue: mpsc::Sender<Pending>,
}

impl Writer {
    /// Starts the task, which writes over `pool` until the writer is dropped.
    pub(super) fn start(pool: Pool, channel: &'static str) -> Writer {
        let (queue, pending) = mpsc::channel(batching::QUEUE);
        tokio::spawn(run(pool, pending, channel));
        Writer { queue }
    }

    /// Stores `event` (a publish's `seq` the topic's next; `bytes` its `NewEvent::size`),
    /// recording it as `key`'s answer.
    pub(super) async fn write(
        &self,
        kind: Kind,
        event: Event,
        bytes: usize,
        key: Option<KeyClaim>,
    ) -> Result<Written> {
        let stopped = || StoreError::Unavailable {
            op: kind.op(),
            reason: "the store's writer stopped".into(),
        };
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            kind,
            event,
            key,
            bytes,
            answer,
        };
        self.queue.send(pending).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Until the writer is dropped: a batch of what is queued, sent.
async fn run(pool: Pool, mut pending: mpsc::Receiver<Pending>, channel: &'static str) {
    while let Some(first) = pending.recv().await {
        let batch = batching::fill(first, &mut pending, |p| p.bytes);
        let sent: Vec<_> = batch
            .iter()
            .map(|p| (p.kind == Kind::Publish, &p.event, p.key.as_ref()))
            .collect();
        let outcome = match pool.get().await {
            Ok(client) => write_batch(&client, &sent, channel)
                .await
                .map_err(Failure::Pg),
            Err(err) => Err(Failure::from(err)),
        };
        match outcome {
            Ok(written) if written.len() == batch.len() => {
                for (p, written) in batch.into_iter().zip(written) {
                    let _ = p.answer.send(Ok(written));
                }
            }
            Ok(written) => {
                let reason = format!("{} answers for {} writes", written.len(), batch.len());
                for p in batch {
                    let _ = p.answer.send(Err(StoreError::Internal {
                        op: p.kind.op(),
                        source: reason.clone().into(),
                    }));
                }
            }
            Err(failure) => {
                for p in batch {
                    let _ = p.answer.send(Err(failure.error(p.kind.op())));
                }
            }
        }
    }
}

/// Why a batch (of writes here, of changes in `changes`) was not written.
pub(super) enum Failure {
    Pg(tokio_postgres::Error),
    /// No connection to be had in time.
    NoConnection(String),
}

impl From<deadpool_postgres::PoolError> for Failure {
    fn from(err: deadpool_postgres::PoolError) -> Failure {
        match err {
            deadpool_postgres::PoolError::Backend(err) => Failure::Pg(err),
            other => Failure::NoConnection(other.to_string()),
        }
    }
}

impl Failure {
    /// The error of each write (`op`) of the batch.
    pub(super) fn error(&self, op: &'static str) -> StoreError {
        match self {
            Failure::Pg(err) => pg_error(op, err),
            Failure::NoConnection(reason) => StoreError::Unavailable {
                op,
                reason: reason.clone(),
            },
        }
    }
}
