//! Retention on SQLite: drops a stream's oldest items beyond its count or age (a topic's
//! published events, a user's change feed entries), in batches of one short write transaction
//! each, recording the newest `seq` (position) dropped per stream. One mechanism for both; a
//! `Trimmed` says which tables it works on.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Result, Retention, sql_error};

/// The statements that differ between the streams retention trims. `?1` is always the
/// stream's key (a topic, a user).
pub(super) struct Trimmed {
    /// Deletes up to `?3` of the stream's items at or below `?2`, oldest first, returning
    /// their places.
    pub(super) delete: &'static str,
    /// Records `?2` as the newest place dropped (never moving it back).
    pub(super) bound: &'static str,
    /// A stream with over `?1` items past its bound, and its newest place to drop.
    pub(super) over_count: &'static str,
    /// A stream with items older than `?1` (ms) past its bound, and its newest such place.
    pub(super) over_age: &'static str,
    /// The stream's newest place dropped.
    pub(super) dropped: &'static str,
}

/// Topics' published events, by `seq` (the per-topic counter row in `topics`).
pub(super) const TOPICS: Trimmed = Trimmed {
    delete: "DELETE FROM events WHERE pk IN (
                 SELECT pk FROM events WHERE topic = ?1 AND seq IS NOT NULL AND seq <= ?2
                 ORDER BY seq LIMIT ?3)
             RETURNING seq",
    bound: "UPDATE topics SET dropped_through = max(dropped_through, ?2) WHERE topic = ?1",
    over_count: "SELECT topic, last_seq - ?1 FROM topics WHERE last_seq - ?1 > dropped_through
                 LIMIT 1",
    over_age: "SELECT e.topic, max(e.seq) FROM events e JOIN topics t ON t.topic = e.topic
               WHERE e.seq IS NOT NULL AND e.time < ?1
               GROUP BY e.topic HAVING max(e.seq) > max(t.dropped_through) LIMIT 1",
    dropped: "SELECT dropped_through FROM topics WHERE topic = ?1",
};

/// One batch: the first stream with items due is trimmed by up to `batch` items.
pub(super) fn compact(
    conn: &mut Connection,
    trimmed: &Trimmed,
    retention: Retention,
    batch: usize,
) -> Result<usize> {
    let fail = |e| sql_error("compact", &e);
    let Some((key, through)) = due(conn, trimmed, retention).map_err(fail)? else {
        return Ok(0);
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let dropped: Vec<i64> = {
        let mut stmt = tx.prepare_cached(trimmed.delete).map_err(fail)?;
        stmt.query_map(params![key, through, batch], |row| row.get(0))
            .map_err(fail)?
            .collect::<rusqlite::Result<_>>()
            .map_err(fail)?
    };
    // Oldest first, so the newest dropped bounds everything dropped before it. When nothing is
    // left to delete (users deleted them), the bound still moves up to `through`.
    let newest = if dropped.len() < batch {
        through
    } else {
        dropped.iter().copied().max().unwrap_or(through)
    };
    tx.execute(trimmed.bound, params![key, newest])
        .map_err(fail)?;
    tx.commit().map_err(fail)?;
    Ok(dropped.len())
}

/// A stream with items retention no longer keeps, and the newest place to drop.
fn due(
    conn: &Connection,
    trimmed: &Trimmed,
    retention: Retention,
) -> rusqlite::Result<Option<(String, i64)>> {
    if let Some(max) = retention.max_events {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let found = conn
            .prepare_cached(trimmed.over_count)?
            .query_row(params![max], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        if found.is_some() {
            return Ok(found);
        }
    }
    if let Some(age) = retention.max_age {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let cutoff = i64::try_from(now.saturating_sub(age).as_millis()).unwrap_or(i64::MAX);
        return conn
            .prepare_cached(trimmed.over_age)?
            .query_row(params![cutoff], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional();
    }
    Ok(None)
}

/// The newest place retention dropped from the stream `key`; 0 when none.
pub(super) fn dropped_through(conn: &Connection, trimmed: &Trimmed, key: &str) -> Result<u64> {
    let through: Option<i64> = conn
        .prepare_cached(trimmed.dropped)
        .and_then(|mut stmt| stmt.query_row(params![key], |row| row.get(0)).optional())
        .map_err(|e| sql_error("dropped_through", &e))?;
    Ok(through.unwrap_or(0).max(0) as u64)
}
