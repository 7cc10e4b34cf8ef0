//! Users' change feeds on SQLite: an entry per create, update and delete of an owned event,
//! written by the writer in the change's own savepoint (so it commits, or rolls back, with
//! the change), read by position, followed by `pk`, and trimmed by retention like a topic
//! (`TRIMMED`).

use chrono::{SubsecRound, Utc};
use rusqlite::{Connection, Row, params};

use super::{Result, retention::Trimmed, sql_error};
use crate::store::{ChangeKind, Event, EventChange, outcome};

/// The feeds' tables: the entries (each holding its event as the change left it), and per
/// user the last position handed out (apart from the entries, so a position is never reused)
/// and the newest one retention dropped.
pub(super) const MIGRATION: &str = "CREATE TABLE changes (
         pk       INTEGER PRIMARY KEY AUTOINCREMENT,
         user_id  TEXT    NOT NULL,
         position INTEGER NOT NULL,
         kind     INTEGER NOT NULL,
         time     INTEGER NOT NULL,
         event    TEXT    NOT NULL
     );
     CREATE UNIQUE INDEX changes_by_user ON changes (user_id, position);
     CREATE INDEX changes_by_time ON changes (time);
     CREATE TABLE change_heads (
         user_id         TEXT    PRIMARY KEY,
         last_position   INTEGER NOT NULL,
         dropped_through INTEGER NOT NULL DEFAULT 0
     ) WITHOUT ROWID;";

/// The columns every entry query reads, in `entry`'s order.
macro_rules! entry_columns {
    () => {
        "pk, position, kind, time, event"
    };
}
pub(super) use entry_columns;

/// Records `kind` of `event` in its owner's feed (none for an event without an owner), in the
/// caller's transaction.
pub(super) fn record(conn: &Connection, kind: ChangeKind, event: &Event) -> Result<()> {
    if event.user_id.is_empty() {
        return Ok(());
    }
    let fail = |e| sql_error("record a change", &e);
    let position: i64 = conn
        .prepare_cached(
            "INSERT INTO change_heads (user_id, last_position) VALUES (?1, 1)
             ON CONFLICT (user_id) DO UPDATE SET last_position = last_position + 1
             RETURNING last_position",
        )
        .and_then(|mut stmt| stmt.query_row(params![event.user_id], |row| row.get(0)))
        .map_err(fail)?;
    let now = Utc::now().trunc_subsecs(3).timestamp_millis();
    conn.prepare_cached(
        "INSERT INTO changes (user_id, position, kind, time, event) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            event.user_id,
            position,
            kind.code(),
            now,
            outcome::encode(&EventChange::kept(kind, event))
        ])
    })
    .map_err(fail)?;
    Ok(())
}

/// An entry row as read: its `pk` and the entry, or why it cannot be read.
pub(super) fn entry(row: &Row<'_>) -> rusqlite::Result<(i64, Result<EventChange>)> {
    let pk: i64 = row.get(0)?;
    let event: String = row.get(4)?;
    let entry = outcome::change(pk, row.get(1)?, row.get(2)?, row.get(3)?, &event);
    Ok((pk, entry))
}

/// Runs a query returning entry rows.
pub(super) fn query(
    conn: &Connection,
    op: &'static str,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<(i64, EventChange)>> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| sql_error(op, &e))?;
    let rows = stmt
        .query_map(params, entry)
        .map_err(|e| sql_error(op, &e))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| sql_error(op, &e))?;
    rows.into_iter()
        .map(|(pk, entry)| entry.map(|entry| (pk, entry)))
        .collect()
}

pub(super) fn after(
    conn: &Connection,
    user: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<EventChange>> {
    const SQL: &str = concat!(
        "SELECT ",
        entry_columns!(),
        " FROM changes WHERE user_id = ?1 AND position > ?2 ORDER BY position LIMIT ?3"
    );
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = query(conn, "changes_after", SQL, params![user, after, limit])?;
    Ok(rows.into_iter().map(|(_, entry)| entry).collect())
}

/// What retention trims of the feeds (`retention`): a user's entries, by position.
pub(super) const TRIMMED: Trimmed = Trimmed {
    delete: "DELETE FROM changes WHERE pk IN (
                 SELECT pk FROM changes WHERE user_id = ?1 AND position <= ?2
                 ORDER BY position LIMIT ?3)
             RETURNING position",
    bound: "UPDATE change_heads SET dropped_through = max(dropped_through, ?2)
            WHERE user_id = ?1",
    over_count: "SELECT user_id, last_position - ?1 FROM change_heads
                 WHERE last_position - ?1 > dropped_through LIMIT 1",
    over_age: "SELECT c.user_id, max(c.position) FROM changes c
               JOIN change_heads h ON h.user_id = c.user_id
               WHERE c.time < ?1
               GROUP BY c.user_id HAVING max(c.position) > max(h.dropped_through) LIMIT 1",
    dropped: "SELECT dropped_through FROM change_heads WHERE user_id = ?1",
};
