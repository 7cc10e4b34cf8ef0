//! Rows of the `events` table as the store reads and writes them: times in milliseconds and
//! `data` as JSON text (exactly what SQLite keeps), and a row it cannot read reported as
//! corrupt, never panicked on.

use chrono::DateTime;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::changelog;
use crate::store::{Event, JsonObject, KeyClaim, Result, StoreError, outcome};

/// The columns every event query selects, in `to_event`'s order.
pub(super) const COLUMNS: &str =
    "pk, id, user_id, title, description, completed, created_at, topic, data, time, seq, revision";

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
        revision: row.get::<_, i64>("revision").max(1) as u64,
    })
}

/// An event's values as the columns hold them (`write_events` takes each as an array).
struct Values<'e> {
    id: &'e Uuid,
    user_id: &'e [u8],
    title: &'e [u8],
    description: &'e [u8],
    completed: &'e bool,
    created_at: i64,
    topic: &'e String,
    data: Option<String>,
    time: Option<i64>,
}

impl<'e> Values<'e> {
    /// `e`'s values (all but its `seq`, which a publish has the server choose, and its
    /// revision, 1 for every new event: the column's default).
    fn of(e: &'e Event) -> Values<'e> {
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
            seq: _,
            revision: _,
        } = e;
        Values {
            id,
            user_id: user_id.as_bytes(),
            title: title.as_bytes(),
            description: description.as_bytes(),
            completed,
            created_at: created_at.timestamp_millis(),
            topic,
            data: data
                .as_ref()
                .map(|d| serde_json::Value::Object(d.clone()).to_string()),
            time: time.map(|t| t.timestamp_millis()),
        }
    }
}

/// What `write_events` said of one write of a batch.
pub(super) enum Written {
    /// Stored (a publish with this seq; a create with 0).
    Stored(u64),
    /// Its id is stored already (a repeat, or another event's).
    Taken,
    /// Its idempotency key is another request's now.
    KeyTaken,
}

/// Writes `batch` (each a publish or not, its event and key) in one call of `write_events`:
/// one round trip, one commit. A create of an owned event records its change too.
///
/// Sent in lock order: a publish holds its topic's counter row, an owned create its user's
/// feed head, until commit; other processes' batches take theirs in the same order (topics,
/// then users, each sorted), so they wait for each other rather than deadlock. The sort is
/// stable: a topic's publishes keep their order, and so their seqs.
pub(super) async fn write_batch(
    client: &impl GenericClient,
    batch: &[(bool, &Event, Option<&KeyClaim>)],
    channel: &str,
) -> std::result::Result<Vec<Written>, tokio_postgres::Error> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&i| {
        let (publish, event, _) = batch[i];
        if publish {
            (0, event.topic.as_bytes())
        } else {
            (1, event.user_id.as_bytes())
        }
    });
    let sorted: Vec<&(bool, &Event, Option<&KeyClaim>)> =
        order.iter().map(|&i| &batch[i]).collect();
    let publish: Vec<bool> = sorted.iter().map(|(p, _, _)| *p).collect();
    let values: Vec<Values<'_>> = sorted.iter().map(|(_, e, _)| Values::of(e)).collect();
    let ids: Vec<&Uuid> = values.iter().map(|v| v.id).collect();
    let user_ids: Vec<&[u8]> = values.iter().map(|v| v.user_id).collect();
    let titles: Vec<&[u8]> = values.iter().map(|v| v.title).collect();
    let descriptions: Vec<&[u8]> = values.iter().map(|v| v.description).collect();
    let completed: Vec<bool> = values.iter().map(|v| *v.completed).collect();
    let created_at: Vec<i64> = values.iter().map(|v| v.created_at).collect();
    let topics: Vec<&String> = values.iter().map(|v| v.topic).collect();
    let data: Vec<Option<&String>> = values.iter().map(|v| v.data.as_ref()).collect();
    let times: Vec<Option<i64>> = values.iter().map(|v| v.time).collect();
    let scopes: Vec<Option<&[u8]>> = sorted
        .iter()
        .map(|(_, _, k)| k.map(|k| k.scope.as_bytes()))
        .collect();
    let keys: Vec<Option<&String>> = sorted.iter().map(|(_, _, k)| k.map(|k| &k.key)).collect();
    let heads: Vec<Option<String>> = sorted
        .iter()
        .map(|(_, e, k)| k.map(|_| outcome::encode_up_to_seq(e)))
        .collect();
    let changes: Vec<Option<String>> = sorted
        .iter()
        .map(|(publish, e, _)| {
            if *publish {
                None
            } else {
                changelog::created(e)
            }
        })
        .collect();
    let rows = client
        .query(
            "SELECT out_seq, out_failure FROM write_events(
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            &[
                &publish,
                &ids,
                &user_ids,
                &titles,
                &descriptions,
                &completed,
                &created_at,
                &topics,
                &data,
                &times,
                &scopes,
                &keys,
                &heads,
                &changes,
                &channel,
            ],
        )
        .await?;
    let mut written: Vec<Option<Written>> = (0..batch.len()).map(|_| None).collect();
    for (&i, row) in order.iter().zip(&rows) {
        written[i] = Some(match row.get::<_, Option<&str>>(1) {
            Some("taken") => Written::Taken,
            Some(_) => Written::KeyTaken,
            None => Written::Stored(row.get::<_, Option<i64>>(0).unwrap_or(0).max(0) as u64),
        });
    }
    // `write_events` answers each element once, in order.
    Ok(written
        .into_iter()
        .map(|w| w.unwrap_or(Written::Taken))
        .collect())
}
