//! The SQLite follower: one dedicated connection that notices commits by any process cheaply
//! (`PRAGMA data_version` changes whenever another connection commits) and then reads the newly
//! published rows and change feed entries in commit order (`pk` order; a topic's `seq` and a
//! feed's position grow with it).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::{StreamExt, stream::BoxStream};
use rusqlite::{Connection, params};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    changelog::{self, entry_columns},
    columns, connect, query_events,
    signal::Commits,
    sql_error,
};
use crate::store::{Followed, Result, StoreError};

/// How often to look for commits by other processes that no signal told of (`signal`); this
/// process's own publishes wake the follower at once.
pub(super) const POLL: Duration = Duration::from_millis(10);
const BATCH: usize = 512;
/// The least time between two reads that another process's commit signal asks for: under a
/// stream of commits a follower reads at most this often, not once per commit (each read is
/// a read transaction on the blocking pool).
const SIGNALLED_GAP: Duration = Duration::from_millis(2);

/// Where the follower stands: the last `data_version` it read at and the last rows it passed
/// (of `events`, of `changes`).
#[derive(Debug, Clone, Copy)]
struct Position {
    version: i64,
    pk: i64,
    change_pk: i64,
}

type Shared = Arc<Mutex<Connection>>;

async fn blocking<T: Send + 'static>(
    conn: &Shared,
    op: &'static str,
    f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
) -> Result<T> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap_or_else(PoisonError::into_inner)))
        .await
        .map_err(|e| StoreError::Internal {
            op,
            source: Box::new(e),
        })?
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "data_version", |row| row.get(0))
}

/// Starts following from the newest row now stored.
pub(super) async fn follow(
    path: PathBuf,
    published: Arc<Notify>,
    poll: Duration,
) -> Result<BoxStream<'static, Result<Followed>>> {
    // Watching first: a commit signalled while the start is read is read after it.
    let commits = Commits::watch(&path);
    let conn: Shared = {
        let opened = tokio::task::spawn_blocking(move || connect(&path))
            .await
            .map_err(|e| StoreError::Internal {
                op: "follow",
                source: Box::new(e),
            })?;
        Arc::new(Mutex::new(opened.map_err(|e| sql_error("follow", &e))?))
    };
    let start = blocking(&conn, "follow", |c| {
        let version = data_version(c).map_err(|e| sql_error("follow", &e))?;
        let newest = |table: &str| {
            c.query_row(
                &format!("SELECT COALESCE(MAX(pk), 0) FROM {table}"),
                [],
                |row| row.get(0),
            )
            .map_err(|e| sql_error("follow", &e))
        };
        Ok(Position {
            version,
            pk: newest("events")?,
            change_pk: newest("changes")?,
        })
    })
    .await?;

    let (tx, rx) = mpsc::channel(BATCH);
    tokio::spawn(async move {
        if let Err(err) = run(conn, start, published, commits, poll, &tx).await {
            let _ = tx.send(Err(err)).await;
        }
    });
    Ok(ReceiverStream::new(rx).boxed())
}

/// Follows until the receiver is dropped or reading fails.
async fn run(
    conn: Shared,
    mut at: Position,
    published: Arc<Notify>,
    mut commits: Commits,
    poll: Duration,
    tx: &mpsc::Sender<Result<Followed>>,
) -> Result<()> {
    let mut more = false;
    let mut last_read = tokio::time::Instant::now();
    loop {
        let woken = published.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if !more {
            tokio::select! {
                _ = &mut woken => {}
                () = commits.next() => {
                    tokio::time::sleep_until(last_read + SIGNALLED_GAP).await;
                }
                _ = tokio::time::sleep(poll) => {}
                _ = tx.closed() => return Ok(()),
            }
        }
        last_read = tokio::time::Instant::now();
        let (followed, next, full) = blocking(&conn, "follow", move |c| read(c, at, more)).await?;
        at = next;
        more = full;
        for item in followed {
            if tx.send(Ok(item)).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Published rows and feed entries after `at`, when anything was committed since (or `more`
/// were left over); whether a batch was full.
fn read(
    conn: &mut Connection,
    at: Position,
    more: bool,
) -> Result<(Vec<Followed>, Position, bool)> {
    let fail = |e| sql_error("follow", &e);
    let version = data_version(conn).map_err(fail)?;
    if version == at.version && !more {
        return Ok((Vec::new(), at, false));
    }
    // One read transaction: the upper bounds and the rows come from the same snapshot.
    let tx = conn.transaction().map_err(fail)?;
    let newest = |table: &str| -> Result<i64> {
        tx.prepare_cached(&format!("SELECT COALESCE(MAX(pk), 0) FROM {table}"))
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .map_err(fail)
    };
    let (newest_event, newest_change) = (newest("events")?, newest("changes")?);
    const EVENTS: &str = concat!(
        "SELECT ",
        columns!(),
        " FROM events WHERE pk > ?1 AND pk <= ?2 AND seq IS NOT NULL ORDER BY pk LIMIT ?3"
    );
    let events = query_events(&tx, "follow", EVENTS, params![at.pk, newest_event, BATCH])?;
    const CHANGES: &str = concat!(
        "SELECT ",
        entry_columns!(),
        " FROM changes WHERE pk > ?1 AND pk <= ?2 ORDER BY pk LIMIT ?3"
    );
    let changes = changelog::query(
        &tx,
        "follow",
        CHANGES,
        params![at.change_pk, newest_change, BATCH],
    )?;
    tx.commit().map_err(fail)?;
    // Past a batch's last row when it was full; else to the newest (past unpublished rows
    // too, so creates are never scanned twice; never backwards, as the newest rows may have
    // been deleted).
    let through = |rows_full: bool, last: Option<i64>, newest: i64, from: i64| match last {
        Some(pk) if rows_full => pk,
        _ => newest.max(from),
    };
    let events_full = events.len() == BATCH;
    let changes_full = changes.len() == BATCH;
    let next = Position {
        version,
        pk: through(
            events_full,
            events.last().map(|(pk, _)| *pk),
            newest_event,
            at.pk,
        ),
        change_pk: through(
            changes_full,
            changes.last().map(|(pk, _)| *pk),
            newest_change,
            at.change_pk,
        ),
    };
    let followed = events
        .into_iter()
        .map(|(_, e)| Followed::Published(e))
        .chain(changes.into_iter().map(|(_, c)| Followed::Changed(c)))
        .collect();
    Ok((followed, next, events_full || changes_full))
}
