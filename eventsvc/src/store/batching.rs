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

/// Whether a batch of `writes` writes and `bytes` bytes takes another.
fn has_room(writes: usize, bytes: usize) -> bool {
    writes < MAX_WRITES && bytes < MAX_BYTES
}

/// `first` and what `queue` holds now, within the bounds; `size` is a write's bytes.
pub(crate) fn fill<T>(
    first: T,
    queue: &mut mpsc::Receiver<T>,
    size: impl Fn(&T) -> usize,
) -> Vec<T> {
    fill_while(first, queue, size, |_| true).0
}

/// `fill`, up to the first queued write `admit` turns away, which is handed back (it starts the
/// next batch).
pub(crate) fn fill_while<T>(
    first: T,
    queue: &mut mpsc::Receiver<T>,
    size: impl Fn(&T) -> usize,
    mut admit: impl FnMut(&T) -> bool,
) -> (Vec<T>, Option<T>) {
    let mut bytes = size(&first);
    let mut batch = vec![first];
    while has_room(batch.len(), bytes) {
        let Ok(next) = queue.try_recv() else { break };
        if !admit(&next) {
            return (batch, Some(next));
        }
        bytes += size(&next);
        batch.push(next);
    }
    (batch, None)
}

/// How many of `queued` (at least one, when any) the next batch takes, from the front.
pub(crate) fn take<T>(queued: &[T], size: impl Fn(&T) -> usize) -> usize {
    let mut bytes = 0;
    let mut taken = 0;
    for write in queued {
        if taken > 0 && !has_room(taken, bytes) {
            break;
        }
        bytes += size(write);
        taken += 1;
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue holding `sizes`, in order.
    fn queued(sizes: &[usize]) -> mpsc::Receiver<usize> {
        let (tx, rx) = mpsc::channel(QUEUE);
        for &size in sizes {
            tx.try_send(size).unwrap();
        }
        rx
    }

    #[test]
    fn a_batch_stops_at_its_count_or_its_bytes_and_always_takes_one() {
        let mut many = queued(&[1; QUEUE - 1]);
        assert_eq!(fill(1, &mut many, |s| *s).len(), MAX_WRITES);
        assert_eq!(many.len(), QUEUE - MAX_WRITES, "the rest wait");

        // Bytes: the write that reaches the bound is the last taken.
        let half = MAX_BYTES / 2;
        let mut big = queued(&[half, half, 1]);
        assert_eq!(fill(1, &mut big, |s| *s), [1, half, half]);
        let mut huge = queued(&[1]);
        assert_eq!(fill(2 * MAX_BYTES, &mut huge, |s| *s), [2 * MAX_BYTES]);

        let sizes = vec![1; MAX_WRITES + 5];
        assert_eq!(take(&sizes, |s| *s), MAX_WRITES);
        assert_eq!(take(&[half, half, 1, 1], |s| *s), 2);
        assert_eq!(take(&[2 * MAX_BYTES, 1], |s| *s), 1);
        assert_eq!(take(&[] as &[usize], |s| *s), 0);
    }

    #[test]
    fn a_write_turned_away_is_handed_back_and_the_rest_stay_queued() {
        let mut queue = queued(&[2, 3, 4]);
        let (batch, next) = fill_while(1, &mut queue, |s| *s, |s| *s != 3);
        assert_eq!((batch, next), (vec![1, 2], Some(3)));
        assert_eq!(queue.try_recv().ok(), Some(4));
    }
}
