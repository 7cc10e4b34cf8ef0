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
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::{create_in, delete_in, publish_in, signal::Committed, sql_error, update_in};
use crate::store::{Event, EventPatch, NewEvent, Precondition, Result, StoreError, batching};

/// A write, as the writer applies it (and as another process sends it, `lead`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Op {
    Create(NewEvent),
    Update {
        id: Uuid,
        owner: Option<String>,
        patch: EventPatch,
        when: Precondition,
    },
    Delete {
        id: Uuid,
        owner: Option<String>,
        when: Precondition,
    },
    Publish(NewEvent),
}

/// What a write did.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Done {
    /// The event as stored (a create, an update, a publish).
    Event(Box<Event>),
    Deleted,
}

impl Done {
    /// The event, for the writes that answer with one.
    pub(super) fn into_event(self, op: &'static str) -> Result<Event> {
        match self {
            Done::Event(event) => Ok(*event),
            Done::Deleted => Err(StoreError::Internal {
                op,
                source: "the writer answered a deletion".into(),
            }),
        }
    }
}

impl Op {
    /// Whether it may be committed again when nobody knows whether it was: a create or publish
    /// of a given id (the second finds the first stored and answers with it), and updates and
    /// deletes, which the contract marks IDEMPOTENT (the gateway repeats them on another
    /// backend too; a delete that had applied is answered NOT_FOUND, as its repeat there).
    pub(super) fn repeatable(&self) -> bool {
        match self {
            Op::Create(new) | Op::Publish(new) => new.id.is_some(),
            Op::Update { .. } | Op::Delete { .. } => true,
        }
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            Op::Create(..) => "create",
            Op::Update { .. } => "update",
            Op::Delete { .. } => "delete",
            Op::Publish(..) => "publish",
        }
    }

    /// The free text and data it stores, roughly: what bounds a batch besides its count.
    fn bytes(&self) -> usize {
        match self {
            Op::Create(event) | Op::Publish(event) => event.size(),
            Op::Update { patch, .. } => patch.title.len() + patch.description.len(),
            Op::Delete { .. } => 0,
        }
    }

    /// Applies it on `conn` (a savepoint in the batch's transaction): what it did, and whether
    /// followers have something new (a new event published, a change recorded in a feed).
    fn apply(self, conn: &Connection) -> (Result<Done>, bool) {
        let done = match self {
            Op::Create(new) => create_in(conn, new).map(|(stored, new)| (event(stored), new)),
            Op::Update {
                id,
                owner,
                patch,
                when,
            } => update_in(conn, id, owner, patch, when).map(|(stored, new)| (event(stored), new)),
            Op::Delete { id, owner, when } => {
                delete_in(conn, id, owner, when).map(|recorded| (Done::Deleted, recorded))
            }
            Op::Publish(new) => publish_in(conn, new).map(|(stored, new)| (event(stored), new)),
        };
        match done {
            Ok((done, new)) => (Ok(done), new),
            Err(err) => (Err(err), false),
        }
    }
}

fn event(event: Event) -> Done {
    Done::Event(Box::new(event))
}

/// A queued write: its size (`Op::bytes`, reckoned by the caller, not the writer), the write,
/// and where its answer goes.
type Queued = (usize, Op, oneshot::Sender<Result<Done>>);

/// Why a batch did not commit.
enum Failure {
    Sql(rusqlite::Error),
    /// SQLite rolled the transaction back itself after a write's error (a full disk, an I/O
    /// error); `full`: that error was the file's size limit or the disk's.
    RolledBack {
        full: bool,
    },
}

impl Failure {
    /// The error of a write `op` of the batch.
    fn error(&self, op: &'static str) -> StoreError {
        match self {
            Failure::Sql(err) => sql_error(op, err),
            Failure::RolledBack { full: true } => StoreError::Full { op },
            Failure::RolledBack { full: false } => StoreError::Unavailable {
                op,
                reason: "the transaction was rolled back".into(),
            },
        }
    }
}

/// A write applied in its savepoint, its answer held until the batch commits.
struct Applied {
    op: &'static str,
    done: Result<Done>,
    /// A new event was published, or a change recorded in a feed: followers are woken.
    published: bool,
    answer: oneshot::Sender<Result<Done>>,
}

impl Applied {
    /// Answers with `failure`: its batch did not commit. A write that had failed alone keeps
    /// its own error.
    fn undo(self, failure: &Failure) {
        let Applied {
            op,
            done,
            published: _,
            answer,
        } = self;
        let _ = answer.send(done.and(Err(failure.error(op))));
    }
}

/// The queue to this process's writer thread.
pub(super) struct Writer {
    queue: mpsc::Sender<Queued>,
}

impl Writer {
    /// Starts the writer on `conn`; after each batch that published it wakes `published`
    /// (this process's followers) and tells `committed` (the other processes').
    pub(super) fn start(
        conn: Connection,
        published: Arc<Notify>,
        committed: Committed,
    ) -> std::io::Result<Writer> {
        let (queue, writes) = mpsc::channel(batching::QUEUE);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, writes, &published, &committed))?;
        Ok(Writer { queue })
    }

    /// Writes waiting in the queue.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Queues `op` and waits for its answer.
    pub(super) async fn write(&self, op: Op) -> Result<Done> {
        let name = op.name();
        let stopped = || StoreError::Unavailable {
            op: name,
            reason: "the store's writer stopped".into(),
        };
        let (answer, answered) = oneshot::channel();
        self.queue
            .send((op.bytes(), op, answer))
            .await
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Until every sender is gone: a batch of what is queued, committed.
fn run(
    mut conn: Connection,
    mut writes: mpsc::Receiver<Queued>,
    published: &Notify,
    committed: &Committed,
) {
    while let Some(first) = writes.blocking_recv() {
        // The write lock first, then the batch: what queued while another process held the
        // lock joins this commit instead of waiting for the next.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate);
        let batch: Vec<_> = batching::fill(first, &mut writes, |(size, ..)| *size)
            .into_iter()
            .map(|(_, op, answer)| (op, answer))
            .collect();
        let published_any = match tx {
            Ok(tx) => commit(tx, batch),
            Err(err) => {
                fail(batch, &Failure::Sql(err));
                false
            }
        };
        if published_any {
            published.notify_waiters();
            committed.tell();
        }
    }
}

/// Runs a savepoint statement (cached: SQLite parses it once per connection, where
/// `Transaction::savepoint` would parse it per write).
fn savepoint(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Answers each write of `batch` with `failure`, without applying it.
fn fail(batch: impl IntoIterator<Item = (Op, oneshot::Sender<Result<Done>>)>, failure: &Failure) {
    for (op, answer) in batch {
        let _ = answer.send(Err(failure.error(op.name())));
    }
}

/// Commits `batch` in `tx` and answers every write; whether it published.
fn commit(tx: Transaction<'_>, batch: Vec<(Op, oneshot::Sender<Result<Done>>)>) -> bool {
    let mut applied = Vec::with_capacity(batch.len());
    let mut writes = batch.into_iter();
    while let Some((op, answer)) = writes.next() {
        let name = op.name();
        let mut full = false;
        let failure = match savepoint(&tx, "SAVEPOINT write") {
            Ok(()) => {
                let (done, published) = op.apply(&tx);
                full = matches!(done, Err(StoreError::Full { .. }));
                // A failed write leaves nothing behind; the others are kept. On some errors
                // (a full disk among them) SQLite has rolled the whole transaction back
                // already, savepoints included: the batch fails below.
                let ended = if done.is_err() && !tx.is_autocommit() {
                    savepoint(&tx, "ROLLBACK TO write")
                        .and_then(|()| savepoint(&tx, "RELEASE write"))
                } else if done.is_err() {
                    Ok(())
                } else {
                    savepoint(&tx, "RELEASE write")
                };
                applied.push(Applied {
                    op: name,
                    done,
                    published,
                    answer,
                });
                ended.err().map(Failure::Sql)
            }
            Err(err) => {
                let failure = Failure::Sql(err);
                let _ = answer.send(Err(failure.error(name)));
                Some(failure)
            }
        };
        let rolled_back = tx.is_autocommit();
        let failure = match failure {
            None if !rolled_back => continue,
            None => Failure::RolledBack { full },
            Some(failure) => failure,
        };
        // The batch fails as a whole: what was applied is undone, what was not is not tried.
        drop(tx);
        for done in applied {
            done.undo(&failure);
        }
        fail(writes, &failure);
        return false;
    }
    match tx.commit() {
        Ok(()) => applied.into_iter().fold(false, |any, applied| {
            let Applied {
                op: _,
                done,
                published,
                answer,
            } = applied;
            let _ = answer.send(done);
            any | published
        }),
        Err(err) => {
            let failure = Failure::Sql(err);
            for done in applied {
                done.undo(&failure);
            }
            false
        }
    }
}
