//! The SQLite change feed: one dedicated connection that notices commits by any process
//! cheaply (`PRAGMA data_version` changes whenever another connection commits) and then reads
//! the newly published rows in commit order (`pk` order; a topic's `seq` grows with it).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::{StreamExt, stream::BoxStream};
use rusqlite::{Connection, params};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{columns, connect, query_events, sql_error};
use crate::store::{Event, Result, StoreError};

/// How often to look for commits by other processes; this process's own publishes wake the
/// follower at once.
pub(super) const POLL: Duration = Duration::from_millis(10);
const BATCH: usize = 512;

/// Where the follower stands: the last `data_version` it read at and the last row it passed.
#[derive(Debug, Clone, Copy)]
struct Position {
    version: i64,
    pk: i64,
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
) -> Result<BoxStream<'static, Result<Event>>> {
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
        let pk = c
            .query_row("SELECT COALESCE(MAX(pk), 0) FROM events", [], |row| {
                row.get(0)
            })
            .map_err(|e| sql_error("follow", &e))?;
        Ok(Position { version, pk })
    })
    .await?;

    let (tx, rx) = mpsc::channel(BATCH);
    tokio::spawn(async move {
        if let Err(err) = run(conn, start, published, &tx).await {
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
    tx: &mpsc::Sender<Result<Event>>,
) -> Result<()> {
    let mut more = false;
    loop {
        let woken = published.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if !more {
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = tx.closed() => return Ok(()),
            }
        }
        let (events, next, full) = blocking(&conn, "follow", move |c| read(c, at, more)).await?;
        at = next;
        more = full;
        for event in events {
            if tx.send(Ok(event)).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Published rows after `at`, when anything was committed since (or `more` were left over).
fn read(conn: &mut Connection, at: Position, more: bool) -> Result<(Vec<Event>, Position, bool)> {
    let fail = |e| sql_error("follow", &e);
    let version = data_version(conn).map_err(fail)?;
    if version == at.version && !more {
        return Ok((Vec::new(), at, false));
    }
    // One read transaction: the upper bound and the rows come from the same snapshot.
    let tx = conn.transaction().map_err(fail)?;
    let newest: i64 = tx
        .query_row("SELECT COALESCE(MAX(pk), 0) FROM events", [], |row| {
            row.get(0)
        })
        .map_err(fail)?;
    const SQL: &str = concat!(
        "SELECT ",
        columns!(),
        " FROM events WHERE pk > ?1 AND pk <= ?2 AND seq IS NOT NULL ORDER BY pk LIMIT ?3"
    );
    let rows = query_events(&tx, "follow", SQL, params![at.pk, newest, BATCH])?;
    tx.commit().map_err(fail)?;
    let full = rows.len() == BATCH;
    // Past unpublished rows too, so creates are never scanned twice; never backwards, as the
    // newest rows may have been deleted.
    let pk = match rows.last() {
        Some((pk, _)) if full => *pk,
        _ => newest.max(at.pk),
    };
    let events = rows.into_iter().map(|(_, e)| e).collect();
    Ok((events, Position { version, pk }, full))
}
