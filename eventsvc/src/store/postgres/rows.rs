//! Rows of the `events` table as the store reads and writes them: times in milliseconds and
//! `data` as JSON text (exactly what SQLite keeps), and a row it cannot read reported as
//! corrupt, never panicked on.

use chrono::DateTime;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::store::{Event, JsonObject, KeyClaim, Result, StoreError, outcome};

/// What `publish_event` raises when the idempotency key is no longer the write's claim.
pub(super) const KEY_TAKEN: &str = "EV409";

/// The columns every event query selects, in `to_event`'s order.
pub(super) const COLUMNS: &str =
    "pk, id, user_id, title, description, completed, created_at, topic, data, time, seq";

pub(super) fn to_event(row: &Row) -> Result<Event> {
    let id: Uuid = row.get("id");
    let corrupt = |reason: String| StoreError::Corrupt {
        id: id.to_string(),
        reason,
    };
    let at = |ms: i64| {
        DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(format!("timestamp {ms}")))
    };
    let data = match row.get::<_, Option<String>>("data") {
        None => None,
        Some(text) => Some(
            serde_json::from_str::<JsonObject>(&text).map_err(|e| corrupt(format!("data: {e}")))?,
        ),
    };
    let text = |column: &str| {
        String::from_utf8(row.get::<_, Vec<u8>>(column))
            .map_err(|e| corrupt(format!("{column}: {e}")))
    };
    Ok(Event {
        id,
        user_id: text("user_id")?,
        title: text("title")?,
        description: text("description")?,
        completed: row.get("completed"),
        created_at: at(row.get("created_at"))?,
        topic: row.get("topic"),
        data,
        time: row.get::<_, Option<i64>>("time").map(at).transpose()?,
        seq: row.get::<_, Option<i64>>("seq").unwrap_or(0).max(0) as u64,
    })
}

pub(super) async fn insert(
    client: &impl GenericClient,
    e: &Event,
) -> std::result::Result<(), tokio_postgres::Error> {
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
    } = e;
    let data = data
        .as_ref()
        .map(|d| serde_json::Value::Object(d.clone()).to_string());
    let seq = (*seq > 0).then_some(*seq as i64);
    client
        .execute(
            "INSERT INTO events
                 (id, user_id, title, description, completed, created_at, topic, data, time, seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                id,
                &user_id.as_bytes(),
                &title.as_bytes(),
                &description.as_bytes(),
                completed,
                &created_at.timestamp_millis(),
                topic,
                &data,
                &time.map(|t| t.timestamp_millis()),
                &seq,
            ],
        )
        .await?;
    Ok(())
}

/// Publishes `e` in one call of `publish_event` (its `seq` the topic's next), recording it as
/// the answer to `key`'s claim; the `seq` given.
pub(super) async fn publish(
    client: &impl GenericClient,
    e: &Event,
    key: Option<&KeyClaim>,
    channel: &str,
) -> std::result::Result<u64, tokio_postgres::Error> {
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
        seq: _,
    } = e;
    let data = data
        .as_ref()
        .map(|d| serde_json::Value::Object(d.clone()).to_string());
    let row = client
        .query_one(
            "SELECT publish_event($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                id,
                &user_id.as_bytes(),
                &title.as_bytes(),
                &description.as_bytes(),
                completed,
                &created_at.timestamp_millis(),
                topic,
                &data,
                &time.map(|t| t.timestamp_millis()),
                &key.map(|k| k.scope.as_bytes()),
                &key.map(|k| &k.key),
                &key.map(|_| outcome::encode_up_to_seq(e)),
                &channel,
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}
