//! Group commit's one rule, shared by every store's writer: a batch is the write that woke the
//! writer and whatever queued behind it meanwhile, up to `MAX_WRITES` and `MAX_BYTES`. There
//! is no timer: a lone write is a batch of one, committed at once.

use tokio::sync::mpsc;

/// Writes waiting for a store's writer; a caller past it waits for room (its request's deadline
/// bounds how long).
pub(crate) const QUEUE: usize = 1024;
/// The most writes one batch commits.
pub(crate) const MAX_WRITES: usize = 256;
/// The most bytes of free text and data one batch commits (`NewEvent::size`); the queue holds
/// at most `QUEUE` requests of the servers' 4 MiB request limit.
pub(crate) const MAX_BYTES: usize = 8 * 1024 * 1024;

/// `first` and what `queue` holds now, within the bounds; `size` is a write's bytes.
pub(crate) fn fill<T>(
    first: T,
    queue: &mut mpsc::Receiver<T>,
    size: impl Fn(&T) -> usize,
) -> Vec<T> {
    let mut bytes = size(&first);
    let mut batch = vec![first];
    while batch.len() < MAX_WRITES && bytes < MAX_BYTES {
        let Ok(next) = queue.try_recv() else { break };
        bytes += size(&next);
        batch.push(next);
    }
    batch
}
