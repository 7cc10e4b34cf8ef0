//! Point reads on the calling thread. Reading one row by a unique index takes microseconds,
//! less than the two thread switches of a trip through the blocking pool. These connections
//! never wait for a lock: a read that would (another process checkpointing or recovering the
//! WAL) returns `None`, and the caller takes it to the blocking pool, where waiting is harmless.

use std::{
    path::PathBuf,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use rusqlite::Connection;

use super::connect;
use crate::store::{Result, StoreError};

/// Inline connections at most: one per thread reading at the same moment, so the runtime's
/// worker count in practice; past this, reads go to the blocking pool.
const MAX_INLINE: usize = 16;

pub(super) struct InlineReaders {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Connections opened (idle or in use).
    opened: AtomicUsize,
}

impl InlineReaders {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            opened: AtomicUsize::new(0),
        }
    }

    /// Runs `read` here and now, or says `None` when it must go to the blocking pool: no
    /// connection to spare, or the database would make it wait.
    pub(super) fn read<T>(&self, read: impl FnOnce(&Connection) -> Result<T>) -> Option<Result<T>> {
        let conn = self.take()?;
        let result = read(&conn);
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        match result {
            // Busy or locked (or a transient I/O condition): worth waiting for, elsewhere.
            Err(StoreError::Unavailable { .. }) => None,
            other => Some(other),
        }
    }

    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn take(&self) -> Option<Connection> {
        if let Some(conn) = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Some(conn);
        }
        if self.opened.fetch_add(1, Ordering::Relaxed) >= MAX_INLINE {
            self.opened.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        // Opened on first use by each concurrent reader, then kept.
        match connect(&self.path).and_then(|conn| {
            conn.busy_handler(None)?;
            Ok(conn)
        }) {
            Ok(conn) => Some(conn),
            Err(err) => {
                self.opened.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %err, "cannot open an inline reader");
                None
            }
        }
    }
}
