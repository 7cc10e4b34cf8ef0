//! Retention on SQLite: drops a topic's oldest published events beyond its count or age, in
//! batches of one short write transaction each, recording the newest seq dropped per topic.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Result, Retention, sql_error};

/// One batch: the first topic with events due is trimmed by up to `batch` events.
pub(super) fn compact(conn: &mut Connection, retention: Retention, batch: usize) -> Result<usize> {
    let fail = |e| sql_error("compact", &e);
    let Some((topic, through)) = due(conn, retention).map_err(fail)? else {
        return Ok(0);
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let dropped: Vec<i64> = {
        let mut stmt = tx
            .prepare_cached(
                "DELETE FROM events WHERE pk IN (
                     SELECT pk FROM events WHERE topic = ?1 AND seq IS NOT NULL AND seq <= ?2
                     ORDER BY seq LIMIT ?3)
                 RETURNING seq",
            )
            .map_err(fail)?;
        stmt.query_map(params![topic, through, batch], |row| row.get(0))
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
    tx.execute(
        "UPDATE topics SET dropped_through = max(dropped_through, ?2) WHERE topic = ?1",
        params![topic, newest],
    )
    .map_err(fail)?;
    tx.commit().map_err(fail)?;
    Ok(dropped.len())
}

/// A topic with events retention no longer keeps, and the newest seq to drop.
fn due(conn: &Connection, retention: Retention) -> rusqlite::Result<Option<(String, i64)>> {
    if let Some(max) = retention.max_events {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let found = conn
            .prepare_cached(
                "SELECT topic, last_seq - ?1 FROM topics WHERE last_seq - ?1 > dropped_through
                 LIMIT 1",
            )?
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
            .prepare_cached(
                "SELECT e.topic, max(e.seq) FROM events e JOIN topics t ON t.topic = e.topic
                 WHERE e.seq IS NOT NULL AND e.time < ?1
                 GROUP BY e.topic HAVING max(e.seq) > max(t.dropped_through) LIMIT 1",
            )?
            .query_row(params![cutoff], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional();
    }
    Ok(None)
}

pub(super) fn dropped_through(conn: &Connection, topic: &str) -> Result<u64> {
    let through: Option<i64> = conn
        .prepare_cached("SELECT dropped_through FROM topics WHERE topic = ?1")
        .and_then(|mut stmt| stmt.query_row(params![topic], |row| row.get(0)).optional())
        .map_err(|e| sql_error("dropped_through", &e))?;
    Ok(through.unwrap_or(0).max(0) as u64)
}
