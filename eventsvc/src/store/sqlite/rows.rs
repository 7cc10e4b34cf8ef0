//! Rows of the `events` table as the store reads and writes them: the checks that turn a row
//! into an `Event` (a row it cannot read is reported, never panicked on), and the insert.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, Row, params};
use uuid::Uuid;

use super::{Event, JsonObject, Result, StoreError, sql_error};

pub(super) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A row as read, before the checks that turn it into an `Event`.
pub(super) struct RawRow {
    pk: i64,
    id: String,
    event: Event,
    data: Option<String>,
    created_at: i64,
    time: Option<i64>,
}

pub(super) fn raw_row(row: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        pk: row.get(0)?,
        id: row.get(1)?,
        event: Event {
            id: Uuid::nil(),
            user_id: row.get(2)?,
            title: row.get(3)?,
            description: row.get(4)?,
            completed: row.get(5)?,
            created_at: DateTime::UNIX_EPOCH,
            topic: row.get(7)?,
            data: None,
            time: None,
            seq: row.get::<_, Option<i64>>(10)?.unwrap_or(0).max(0) as u64,
            revision: row.get::<_, i64>(11)?.max(1) as u64,
        },
        data: row.get(8)?,
        created_at: row.get(6)?,
        time: row.get(9)?,
    })
}

impl RawRow {
    pub(super) fn into_event(self) -> Result<(i64, Event)> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: self.id.clone(),
            reason,
        };
        let mut event = self.event;
        event.id = Uuid::parse_str(&self.id).map_err(|e| corrupt(format!("id: {e}")))?;
        let at = |ms: i64| {
            DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(format!("timestamp {ms}")))
        };
        event.created_at = at(self.created_at)?;
        event.time = self.time.map(at).transpose()?;
        event.data = match &self.data {
            None => None,
            Some(text) => Some(
                serde_json::from_str::<JsonObject>(text)
                    .map_err(|e| corrupt(format!("data: {e}")))?,
            ),
        };
        Ok((self.pk, event))
    }
}

pub(super) fn insert(conn: &Connection, e: &Event) -> rusqlite::Result<()> {
    // Every field named: a new one does not compile until it has a column.
    let Event {
        id,
        user_id,
        title,
        description,
        completed,
        created_at,
        topic,
        data,
        time,
        seq,
        revision,
    } = e;
    let data = data
        .as_ref()
        .map(|d| serde_json::Value::Object(d.clone()).to_string());
    conn.prepare_cached(
        "INSERT INTO events (id, user_id, title, description, completed, created_at, topic, data, time, seq, revision)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
            id.to_string(),
            user_id,
            title,
            description,
            completed,
            millis(*created_at),
            topic,
            data,
            time.map(millis),
            (*seq > 0).then_some(*seq as i64),
            i64::try_from(*revision).unwrap_or(i64::MAX),
        ])?;
    Ok(())
}

/// Runs a query returning event rows and converts them.
pub(super) fn query_events(
    conn: &Connection,
    op: &'static str,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<(i64, Event)>> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| sql_error(op, &e))?;
    let rows = stmt
        .query_map(params, raw_row)
        .map_err(|e| sql_error(op, &e))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| sql_error(op, &e))?;
    rows.into_iter().map(RawRow::into_event).collect()
}
