//! Group commit for creates: one task per process inserts every create queued while its last
//! insert was under way with one unordered `insertMany`, so they share one round trip and one
//! journal commit (measured on SecantusDB: 887 µs a document one at a time, 177 µs twenty at a
//! time). A lone create is sent at once (no timer). Unordered, each document stands alone: one
//! whose id is taken fails alone, the others are stored. A command that fails as a whole (a
//! lost connection, a write concern not met) fails each of its creates; those may be stored,
//! and a retry of the same id finds out, as with a single insert.

use mongodb::{
    Collection,
    bson::Document,
    error::{ErrorKind, InsertManyError},
};
use tokio::sync::{mpsc, oneshot};

use super::errors::{DUPLICATE_KEY, mongo_error, write_error};
use crate::store::{Result, StoreError, batching};

/// What became of an inserted document.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Inserted {
    Stored,
    /// Its id is another document's (the unique `id` index).
    Taken,
}

/// A create with where its answer goes.
struct Pending {
    document: Document,
    bytes: usize,
    answer: oneshot::Sender<Result<Inserted>>,
}

/// The queue to this process's inserting task.
pub(super) struct Creates {
    queue: mpsc::Sender<Pending>,
}

impl Creates {
    /// Starts the task, which inserts into `events` until this is dropped.
    pub(super) fn start(events: Collection<Document>) -> Creates {
        let (queue, pending) = mpsc::channel(batching::QUEUE);
        tokio::spawn(run(events, pending));
        Creates { queue }
    }

    /// Inserts `document` (`bytes`: its event's `NewEvent::size`) with the creates queued with
    /// it.
    pub(super) async fn insert(&self, document: Document, bytes: usize) -> Result<Inserted> {
        let stopped = || StoreError::Unavailable {
            op: "create",
            reason: "the store's writer stopped".into(),
        };
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            document,
            bytes,
            answer,
        };
        self.queue.send(pending).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Until the queue's sender is dropped: a batch of what is queued, inserted.
async fn run(events: Collection<Document>, mut pending: mpsc::Receiver<Pending>) {
    while let Some(first) = pending.recv().await {
        let batch = batching::fill(first, &mut pending, |p| p.bytes);
        let inserted = events
            .insert_many(batch.iter().map(|p| &p.document))
            .ordered(false)
            .await;
        // One answer per create, in the batch's order.
        let answers: Vec<Result<Inserted>> = match inserted {
            Ok(_) => batch.iter().map(|_| Ok(Inserted::Stored)).collect(),
            Err(err) => match err.kind.as_ref() {
                ErrorKind::InsertMany(InsertManyError {
                    write_errors,
                    write_concern_error: None,
                    ..
                }) => each(batch.len(), write_errors.as_deref().unwrap_or_default()),
                // Not known to be durable, or not sent: a failure for each.
                _ => batch
                    .iter()
                    .map(|_| Err(mongo_error("create", err.clone())))
                    .collect(),
            },
        };
        for (p, answer) in batch.into_iter().zip(answers) {
            let _ = p.answer.send(answer);
        }
    }
}

/// Each document's outcome of an unordered insert that refused some (`errors`, by index).
fn each(count: usize, errors: &[mongodb::error::IndexedWriteError]) -> Vec<Result<Inserted>> {
    let mut answers: Vec<Result<Inserted>> = (0..count).map(|_| Ok(Inserted::Stored)).collect();
    for error in errors {
        if let Some(answer) = answers.get_mut(error.index) {
            *answer = if error.code == DUPLICATE_KEY {
                Ok(Inserted::Taken)
            } else {
                Err(write_error("create", error.code, &error.message))
            };
        }
    }
    answers
}
