//! One writer per database file. The processes that share a SQLite file elect one of them, the
//! one holding an exclusive lock on `<file>-writer.lock`, to commit every write; the others
//! send theirs to its writer over a Unix socket beside the file (`<file>-writer.sock`).
//!
//! Why: each write transaction pays for the lock's hand-over and, in a process that did not
//! write last, for reloading the pages another process changed; three processes each batching
//! a third of the writes commit smaller batches at a higher price each. Measured here
//! (docs/perf/log.md, "One writer per file"), one writer commits about 1.7× what three do.
//!
//! Sending is only ever faster, never needed: a write that finds no leader to send to (none
//! elected yet, the socket unusable) is committed by this process itself, which SQLite's
//! locking keeps correct. A write whose leader dies after it was sent may have committed:
//! it is committed again here when that is safe (a create or publish with its id, an update
//! or delete, which the contract marks idempotent), and fails `Unavailable` otherwise. When
//! the leader goes, its lock goes with it and another process takes the lead within
//! `ELECTION_POLL`.

use std::{
    collections::HashMap,
    fs::OpenOptions,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use tokio::{
    net::UnixStream,
    runtime::Handle,
    sync::{Notify, mpsc, oneshot},
};
use tokio_util::{
    codec::{FramedRead, FramedWrite},
    sync::{CancellationToken, DropGuard},
};

use super::writer::{Done, Op, Writer};
use crate::store::{Result, StoreError};
use serve::{listen, serve};
use wire::{Response, Sending, codec};

mod serve;
mod wire;

/// How often a process that does not lead tries the lock: how long the writes wait to be sent
/// again after their leader died (they are committed locally meanwhile).
const ELECTION_POLL: Duration = Duration::from_millis(50);
/// Writes one connection has sent and not had answered; the sender waits for room past it.
const IN_FLIGHT: usize = 1024;

/// What became of a write sent to the leader.
enum Attempt {
    Answered(Result<Done>),
    /// The connection closed before its answer came: committed or not, nobody here knows.
    Lost(Box<Op>),
}

/// A write for the leader, and where to say what became of it.
type Sent = (Op, oneshot::Sender<Attempt>);

/// This process's part in the election, and its way to the leader.
pub(super) struct Lead {
    /// Set once this process holds the lock: its own writer commits every write.
    leading: Arc<AtomicBool>,
    socket: PathBuf,
    /// The connection to the leader, while one is open. Guards only the handle (connecting
    /// happens outside it).
    link: Mutex<Option<mpsc::Sender<Sent>>>,
    /// This process's publish signal, woken when the leader committed one of its publishes.
    published: Arc<Notify>,
    /// Ends the election and, when leading, the serving (releasing the lock).
    _stop: DropGuard,
}

impl Lead {
    /// Joins the election for the database at `db`; `writer` serves the others' writes once
    /// this process leads.
    pub(super) fn join(db: &Path, writer: Arc<Writer>, published: Arc<Notify>) -> Lead {
        let socket = beside(db, "-writer.sock");
        let lock = beside(db, "-writer.lock");
        let leading = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let election = Election {
            lock,
            socket: socket.clone(),
            writer,
            leading: leading.clone(),
            stop: stop.clone(),
            runtime: Handle::current(),
        };
        if let Err(err) = std::thread::Builder::new()
            .name("sqlite-election".into())
            .spawn(move || election.run())
        {
            tracing::warn!(error = %err, "no writer election: this process commits its own writes");
        }
        Lead {
            leading,
            socket,
            link: Mutex::new(None),
            published,
            _stop: stop.drop_guard(),
        }
    }

    /// Whether this process commits the file's writes for the others.
    pub(super) fn leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Commits `op`: by the leader's writer, or by `own` when this process leads or no leader
    /// can be reached.
    pub(super) async fn write(&self, op: Op, own: &Writer) -> Result<Done> {
        if self.leading() {
            return own.write(op).await;
        }
        let Some(link) = self.link().await else {
            return own.write(op).await;
        };
        let name = op.name();
        let publish = matches!(op, Op::Publish(_));
        let (answer, answered) = oneshot::channel();
        if let Err(mpsc::error::SendError((op, _))) = link.send((op, answer)).await {
            // The connection closed before taking it: not sent.
            return own.write(op).await;
        }
        let lost = || StoreError::Unavailable {
            op: name,
            reason: "the process committing this file's writes went away".into(),
        };
        match answered.await {
            Ok(Attempt::Answered(done)) => {
                if publish && done.is_ok() {
                    self.published.notify_waiters();
                }
                done
            }
            // Safe to commit again (`Op::repeatable`): what the gateway would do with it, a hop
            // sooner.
            Ok(Attempt::Lost(op)) if op.repeatable() => own.write(*op).await,
            Ok(Attempt::Lost(_)) | Err(_) => Err(lost()),
        }
    }

    /// The open connection to the leader, or a new one; `None` when none can be opened.
    async fn link(&self) -> Option<mpsc::Sender<Sent>> {
        if let Some(link) = self
            .link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|link| !link.is_closed())
        {
            return Some(link.clone());
        }
        let stream = UnixStream::connect(&self.socket).await.ok()?;
        let (link, sent) = mpsc::channel(IN_FLIGHT);
        tokio::spawn(send(stream, sent));
        let mut held = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        match held.as_ref().filter(|other| !other.is_closed()) {
            // Another write connected meanwhile: use that one (this one closes unused).
            Some(other) => Some(other.clone()),
            None => Some(held.insert(link).clone()),
        }
    }
}

/// `db`'s path with `suffix` appended to its file name.
pub(super) fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// writer. When it ends, every write still waiting goes back, `Lost`.
async fn send(stream: UnixStream, mut sent: mpsc::Receiver<Sent>) {
    let (read, write) = stream.into_split();
    let mut answers = FramedRead::new(read, codec());
    let mut requests = FramedWrite::new(write, codec());
    let mut waiting: HashMap<u64, Sent> = HashMap::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            // At most `IN_FLIGHT` waiting: the leader reads as many from one connection
            // before it waits for answers to be taken, so sending never blocks on it.
            write = sent.recv(), if waiting.len() < IN_FLIGHT => {
                let Some(first) = write else { break };
                // What queued meanwhile goes out in the same flush: one socket write a burst.
                let mut next = Some(first);
                let mut written = Ok(());
                while let Some((op, answer)) = next.take() {
                    next_id += 1;
                    match serde_json::to_vec(&Sending { id: next_id, op: &op }) {
                        Ok(frame) => {
                            if written.is_ok() {
                                written = requests.feed(frame.as_slice()).await;
                            }
                            waiting.insert(next_id, (op, answer));
                        }
                        Err(_) => {
                            let _ = answer.send(Attempt::Answered(Err(StoreError::Internal {
                                op: op.name(),
                                source: "the write could not be encoded".into(),
                            })));
                        }
                    }
                    if waiting.len() < IN_FLIGHT {
                        next = sent.try_recv().ok();
                    }
                }
                if written.is_err() || SinkExt::<&[u8]>::flush(&mut requests).await.is_err() {
                    break;
                }
            }
            frame = answers.next() => {
                let Some(Ok(frame)) = frame else { break };
                let Ok(Response { id, answer }) = serde_json::from_slice(&frame) else {
                    break;
                };
                if let Some((op, to)) = waiting.remove(&id) {
                    let done = answer.map_err(|refusal| refusal.into_error(op.name()));
                    let _ = to.send(Attempt::Answered(done));
                }
            }
        }
    }
    // Closed: each write sent and not answered, and each still queued, goes back to its caller.
    sent.close();
    let queued = std::iter::from_fn(|| sent.try_recv().ok());
    for (op, to) in waiting.into_values().chain(queued) {
        let _ = to.send(Attempt::Lost(Box::new(op)));
    }
}

/// The election, on a thread of its own: polls the lock until it is had (or the store closes),
/// then hands the serving to the runtime.
struct Election {
    lock: PathBuf,
    socket: PathBuf,
    writer: Arc<Writer>,
    leading: Arc<AtomicBool>,
    stop: CancellationToken,
    runtime: Handle,
}

impl Election {
    fn run(self) {
        let Election {
            lock,
            socket,
            writer,
            leading,
            stop,
            runtime,
        } = self;
        let opened = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock);
        let lock_file = match opened {
            Ok(file) => file,
            Err(err) => {
                tracing::warn!(lock = %lock.display(), error = %err,
                    "cannot join the writer election: this process commits its own writes");
                return;
            }
        };
        loop {
            if stop.is_cancelled() {
                return;
            }
            match lock_file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => std::thread::sleep(ELECTION_POLL),
                Err(std::fs::TryLockError::Error(err)) => {
                    tracing::warn!(lock = %lock.display(), error = %err,
                        "cannot join the writer election: this process commits its own writes");
                    return;
                }
            }
        }
        // Leading: whatever socket is there is a dead leader's.
        leading.store(true, Ordering::Release);
        let _ = std::fs::remove_file(&socket);
        let _entered = runtime.enter();
        match listen(&socket) {
            Ok((listener, owner)) => {
                tracing::info!(socket = %socket.display(), "committing the writes of every process on this file");
                runtime.spawn(serve(listener, owner, socket, lock_file, writer, stop));
            }
            // The others find no socket and commit their own writes.
            Err(err) => tracing::warn!(socket = %socket.display(), error = %err,
                "leading, but the others cannot send their writes here"),
        }
    }
}

#[cfg(test)]
mod tests;
