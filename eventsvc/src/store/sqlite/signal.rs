//! Telling the other processes on a file, at once, that a commit published something. The
//! process whose writer committed it writes a byte to `<file>-commits`; every follower watches
//! that file with inotify and reads the file's new rows when it changes. Without this, a
//! process that did not commit a publish learns of it at its next `follow::POLL` (10 ms,
//! 5 ms on average): the floor of delivery latency for the subscribers of every backend the
//! gateway does not send writes to (it sends them all to the elected writer).
//!
//! Only ever a wake-up: the follower still reads what `PRAGMA data_version` says changed, and
//! still polls. A filesystem that reports no inotify events, a signal file that cannot be
//! opened, or one replaced under a watcher costs latency, never an event.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::Path,
};

use futures::StreamExt;
use inotify::{EventStream, Inotify, WatchMask};

use super::lead::beside;

/// The signal file beside `db`.
fn signal_file(db: &Path) -> std::path::PathBuf {
    beside(db, "-commits")
}

fn open(db: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(signal_file(db))
}

/// The writer's side: a byte written after each commit that published.
pub(super) struct Committed(Option<File>);

impl Committed {
    pub(super) fn open(db: &Path) -> Committed {
        match open(db) {
            Ok(file) => Committed(Some(file)),
            Err(err) => {
                tracing::warn!(db = %db.display(), error = %err,
                    "cannot open the commit signal file: other processes on this file learn of publishes at their poll");
                Committed(None)
            }
        }
    }

    /// Wakes the followers watching the file (one `pwrite`, no sync: only the event matters).
    pub(super) fn tell(&self) {
        if let Some(file) = &self.0 {
            let _ = file.write_at(b"c", 0);
        }
    }
}

/// A follower's side: completes when a process has committed a publish since the last call.
pub(super) struct Commits(Option<EventStream<[u8; 1024]>>);

impl Commits {
    /// Watches `db`'s signal file (creating it if need be); without a watch, `next` never
    /// completes and the poll alone finds new rows.
    pub(super) fn watch(db: &Path) -> Commits {
        let watched = open(db).and_then(|_| {
            let inotify = Inotify::init()?;
            inotify.watches().add(signal_file(db), WatchMask::MODIFY)?;
            inotify.into_event_stream([0u8; 1024])
        });
        match watched {
            Ok(events) => Commits(Some(events)),
            Err(err) => {
                tracing::warn!(db = %db.display(), error = %err,
                    "cannot watch the commit signal file: publishes by other processes are found at the poll");
                Commits(None)
            }
        }
    }

    /// The next commit signal; pending for ever once the watch is gone.
    pub(super) async fn next(&mut self) {
        let Some(events) = &mut self.0 else {
            return std::future::pending().await;
        };
        match events.next().await {
            Some(Ok(_)) => {}
            // The watch ended (the file was removed) or failed: the poll goes on alone.
            Some(Err(_)) | None => {
                self.0 = None;
                std::future::pending::<()>().await;
            }
        }
    }
}
