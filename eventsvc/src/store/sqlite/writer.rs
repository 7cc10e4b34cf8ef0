//! Group commit: one thread per process owns a write connection and commits the writes that
//! queued while its last commit was under way as one transaction, so they share one fsync.
//! A lone write is committed at once (no timer); a busy process pays one fsync per batch, not
//! per write. Each write runs in a savepoint of its own, so one that fails (a taken id, a key
//! that is another request's) is rolled back alone; a batch that fails as a whole (a full
//! disk, an I/O error, the lock not had in time) fails each of its writes, and nothing of it
//! is applied. A write is answered only after its batch's commit returned, so what is
//! acknowledged is on disk as before (`synchronous=FULL`).

use std::sync::Arc;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::{create_in, delete_in, publish_in, sql_error, update_in};
use crate::store::{Event, EventPatch, NewEvent, Result, StoreError};

/// Writes waiting for the writer; a caller past it waits for room (its request's deadline
/// bounds how long).
const QUEUE: usize = 1024;
/// The most writes one transaction commits.
const MAX_BATCH: usize = 256;
/// The most bytes of free text and data one transaction commits (the queue holds at most
/// `QUEUE` requests of the servers' 4 MiB request limit).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// A write, with where its answer goes.
pub(super) enum Write {
    Create(NewEvent, oneshot::Sender<Result<Event>>),
    Update {
        id: Uuid,
        owner: Option<String>,
        patch: EventPatch,
        answer: oneshot::Sender<Result<Event>>,
    },
    Delete {
        id: Uuid,
        owner: Option<String>,
        answer: oneshot::Sender<Result<()>>,
    },
    Publish(NewEvent, oneshot::Sender<Result<Event>>),
}

impl Write {
    fn op(&self) -> &'static str {
        match self {
            Write::Create(..) => "create",
            Write::Update { .. } => "update",
            Write::Delete { .. } => "delete",
            Write::Publish(..) => "publish",
        }
    }

    /// The free text and data it stores, roughly: what bounds a batch besides its count.
    fn bytes(&self) -> usize {
        match self {
            Write::Create(event, _) | Write::Publish(event, _) => event.size(),
            Write::Update { patch, .. } => patch.title.len() + patch.description.len(),
            Write::Delete { .. } => 0,
        }
    }

    /// Applies it on `conn` (a savepoint in the batch's transaction); what to answer once the
    /// batch commits.
    fn apply(self, conn: &Connection) -> Applied {
        match self {
            Write::Create(new, answer) => Applied::Event("create", create_in(conn, new), answer),
            Write::Update {
                id,
                owner,
                patch,
                answer,
            } => Applied::Event("update", update_in(conn, id, owner, patch), answer),
            Write::Delete { id, owner, answer } => {
                Applied::Deleted(delete_in(conn, id, owner), answer)
            }
            Write::Publish(new, answer) => Applied::Published(publish_in(conn, new), answer),
        }
    }

    /// Answers it with `failure` without applying it.
    fn fail(self, failure: &Failure) {
        let err = failure.error(self.op());
        match self {
            Write::Create(_, answer) | Write::Publish(_, answer) | Write::Update { answer, .. } => {
                let _ = answer.send(Err(err));
            }
            Write::Delete { answer, .. } => {
                let _ = answer.send(Err(err));
            }
        }
    }
}

/// Why a batch did not commit.
enum Failure {
    Sql(rusqlite::Error),
    /// SQLite rolled the transaction back itself (a full disk, an I/O error).
    RolledBack,
}

impl Failure {
    /// The error of a write `op` of the batch.
    fn error(&self, op: &'static str) -> StoreError {
        match self {
            Failure::Sql(err) => sql_error(op, err),
            Failure::RolledBack => StoreError::Unavailable {
                op,
                reason: "the transaction was rolled back".into(),
            },
        }
    }
}

/// A write applied in its savepoint, its answer held until the batch commits.
enum Applied {
    /// A create's or an update's.
    Event(&'static str, Result<Event>, oneshot::Sender<Result<Event>>),
    Deleted(Result<()>, oneshot::Sender<Result<()>>),
    /// The event, and whether it is new (not a repeat of an earlier publish).
    Published(Result<(Event, bool)>, oneshot::Sender<Result<Event>>),
}

impl Applied {
    fn failed(&self) -> bool {
        match self {
            Applied::Event(_, result, _) => result.is_err(),
            Applied::Deleted(result, _) => result.is_err(),
            Applied::Published(result, _) => result.is_err(),
        }
    }

    /// Answers with what it did (its batch committed); whether it published a new event.
    fn answer(self) -> bool {
        match self {
            Applied::Event(_, result, answer) => {
                let _ = answer.send(result);
                false
            }
            Applied::Deleted(result, answer) => {
                let _ = answer.send(result);
                false
            }
            Applied::Published(result, answer) => {
                let new = matches!(result, Ok((_, true)));
                let _ = answer.send(result.map(|(event, _)| event));
                new
            }
        }
    }

    /// Answers with `failure`: its batch did not commit. A write that had failed alone keeps
    /// its own error.
    fn undo(self, failure: &Failure) {
        match self {
            Applied::Event(_, Err(own), answer) => {
                let _ = answer.send(Err(own));
            }
            Applied::Event(op, Ok(_), answer) => {
                let _ = answer.send(Err(failure.error(op)));
            }
            Applied::Published(Err(own), answer) => {
                let _ = answer.send(Err(own));
            }
            Applied::Published(Ok(_), answer) => {
                let _ = answer.send(Err(failure.error("publish")));
            }
            Applied::Deleted(Err(own), answer) => {
                let _ = answer.send(Err(own));
            }
            Applied::Deleted(Ok(()), answer) => {
                let _ = answer.send(Err(failure.error("delete")));
            }
        }
    }
}

/// The queue to this process's writer thread.
pub(super) struct Writer {
    /// Each write with its size (`Write::bytes`, reckoned by the caller, not the writer).
    queue: mpsc::Sender<(usize, Write)>,
}

impl Writer {
    /// Starts the writer on `conn`; it wakes `published` after each batch that published.
    pub(super) fn start(conn: Connection, published: Arc<Notify>) -> std::io::Result<Writer> {
        let (queue, writes) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, writes, &published))?;
        Ok(Writer { queue })
    }

    /// Writes waiting in the queue.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Queues `write` and waits for its answer (`answer` is the receiving end of its sender).
    pub(super) async fn write<T>(
        &self,
        write: Write,
        answer: oneshot::Receiver<Result<T>>,
    ) -> Result<T> {
        let op = write.op();
        let stopped = || StoreError::Unavailable {
            op,
            reason: "the store's writer stopped".into(),
        };
        self.queue
            .send((write.bytes(), write))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Until every sender is gone: a batch of what is queued, committed.
fn run(mut conn: Connection, mut writes: mpsc::Receiver<(usize, Write)>, published: &Notify) {
    while let Some((mut bytes, first)) = writes.blocking_recv() {
        // The write lock first, then the batch: what queued while another process held the
        // lock joins this commit instead of waiting for the next.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match writes.try_recv() {
                Ok((size, write)) => {
                    bytes += size;
                    batch.push(write);
                }
                Err(_) => break,
            }
        }
        let published_any = match tx {
            Ok(tx) => commit(tx, batch),
            Err(err) => {
                let failure = Failure::Sql(err);
                for write in batch {
                    write.fail(&failure);
                }
                false
            }
        };
        if published_any {
            published.notify_waiters();
        }
    }
}

/// Commits `batch` in `tx` and answers every write; whether it published.
fn commit(mut tx: Transaction<'_>, batch: Vec<Write>) -> bool {
    let mut applied = Vec::with_capacity(batch.len());
    let mut writes = batch.into_iter();
    while let Some(write) = writes.next() {
        let done = tx.savepoint().map(|savepoint| {
            let done = write.apply(&savepoint);
            // A failed write leaves nothing behind; the others are kept.
            let ended = if done.failed() {
                savepoint.finish()
            } else {
                savepoint.commit()
            };
            (done, ended)
        });
        let failure = match done {
            Ok((done, Ok(()))) => {
                applied.push(done);
                if !tx.is_autocommit() {
                    continue;
                }
                Failure::RolledBack
            }
            Ok((done, Err(err))) => {
                applied.push(done);
                Failure::Sql(err)
            }
            Err(err) => Failure::Sql(err),
        };
        // The batch fails as a whole: what was applied is undone, what was not is not tried.
        drop(tx);
        for done in applied {
            done.undo(&failure);
        }
        for write in writes {
            write.fail(&failure);
        }
        return false;
    }
    match tx.commit() {
        Ok(()) => applied
            .into_iter()
            .fold(false, |any, done| done.answer() | any),
        Err(err) => {
            let failure = Failure::Sql(err);
            for done in applied {
                done.undo(&failure);
            }
            false
        }
    }
}
