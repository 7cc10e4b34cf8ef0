//! The PostgreSQL follower: a connection of its own `LISTEN`s on the channel every publish and
//! every change feed entry notifies in its transaction. The server delivers notifications at
//! commit, in commit order, and a topic's seqs (a user's positions) commit in order, so reading
//! each notified event by (`topic`, `seq`) and entry by (`user`, `position`) gives every
//! subscriber its streams' items once, in order. A notification is lost only with the
//! connection, and then the stream ends with an error: subscribers resubscribe from their last
//! `seq` and read what they missed by position (`events_after`).

use std::{collections::HashMap, sync::Arc};

use deadpool_postgres::Pool;
use futures::{StreamExt, stream::BoxStream};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    CHANNEL, COLUMNS, Connect,
    changelog::{ENTRY, entry},
    pg_error, pool_error, to_event,
};
use crate::store::{Event, EventChange, Followed, Result, StoreError};

/// Notifications read ahead of the events being fetched; past it the connection is not read
/// until the feed catches up (the server holds the rest).
const AHEAD: usize = 1024;

/// What a notification names.
#[derive(Debug, PartialEq)]
enum Note {
    /// A publish (`publish_event`): `seq:topic`.
    Published(i64, String),
    /// A change feed entry (`record_change`): `c:position:hex(user)`.
    Changed(i64, Vec<u8>),
}

fn parse(payload: &str) -> Option<Note> {
    if let Some(entry) = payload.strip_prefix("c:") {
        let (position, user) = entry.split_once(':')?;
        return Some(Note::Changed(position.parse().ok()?, hex(user)?));
    }
    let (seq, topic) = payload.split_once(':')?;
    Some(Note::Published(seq.parse().ok()?, topic.to_owned()))
}

/// Bytes from lower-case hex, as `encode(…, 'hex')` writes them.
fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Starts following: every publish that commits after this returns is in the stream.
pub(super) async fn follow(
    connect: &Connect,
    pool: Pool,
) -> Result<BoxStream<'static, Result<Followed>>> {
    let (client, mut connection) = connect
        .config
        .connect(connect.tls.clone())
        .await
        .map_err(|e| pg_error("follow", e))?;
    let (notes, received) = mpsc::channel::<Result<Note>>(AHEAD);
    // Drives the connection (its queries too) and hands notifications over.
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        let ended = loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    let Some(note) = parse(note.payload()) else {
                        continue;
                    };
                    if notes.send(Ok(note)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => break pg_error("follow", err),
                None => {
                    break StoreError::Unavailable {
                        op: "follow",
                        reason: "the feed's connection closed".into(),
                    };
                }
            }
        };
        let _ = notes.send(Err(ended)).await;
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| pg_error("follow", e))?;
    // The stream owns the listening client: dropping it ends the connection.
    let listening = Arc::new(client);
    // What has been notified is fetched a batch at a time (all that is waiting, up to
    // `AHEAD`): two queries for a burst instead of one round trip per item, which at a
    // thousand writes a second would be the follower's bound.
    Ok(ReceiverStream::new(received)
        .ready_chunks(AHEAD)
        .then(move |notes| {
            let (pool, _listening) = (pool.clone(), listening.clone());
            async move { fetched(&pool, notes).await }
        })
        .flat_map(futures::stream::iter)
        .boxed())
}

/// The items `notes` name, in their order (an item deleted since, by its owner or retention,
/// is left out); an error ends the batch.
async fn fetched(pool: &Pool, notes: Vec<Result<Note>>) -> Vec<Result<Followed>> {
    let mut ended = None;
    let mut named = Vec::with_capacity(notes.len());
    for note in notes {
        match note {
            Ok(note) => named.push(note),
            Err(err) => {
                ended = Some(err);
                break;
            }
        }
    }
    let mut items = match read(pool, &named).await {
        Ok(found) => found,
        Err(err) => return vec![Err(err)],
    };
    if let Some(err) = ended {
        items.push(Err(err));
    }
    items
}

/// Reads the events and entries `notes` name, in one query each.
async fn read(pool: &Pool, notes: &[Note]) -> Result<Vec<Result<Followed>>> {
    let mut topics: Vec<&str> = Vec::new();
    let mut seqs: Vec<i64> = Vec::new();
    let mut users: Vec<&[u8]> = Vec::new();
    let mut positions: Vec<i64> = Vec::new();
    for note in notes {
        match note {
            Note::Published(seq, topic) => {
                topics.push(topic);
                seqs.push(*seq);
            }
            Note::Changed(position, user) => {
                users.push(user);
                positions.push(*position);
            }
        }
    }
    if notes.is_empty() {
        return Ok(Vec::new());
    }
    let client = pool.get().await.map_err(|e| pool_error("follow", e))?;
    let mut events: HashMap<(String, i64), Result<Event>> = HashMap::new();
    if !topics.is_empty() {
        // A join on the index's columns: a nested loop of index lookups (`IN (SELECT …)` may
        // plan a scan of the whole table).
        let sql = format!(
            "SELECT {COLUMNS} FROM unnest($1::TEXT[], $2::BIGINT[]) AS n(t, s)
             CROSS JOIN LATERAL (SELECT * FROM events e WHERE e.topic = n.t AND e.seq = n.s) AS e"
        );
        for row in client
            .query(&sql, &[&topics, &seqs])
            .await
            .map_err(|e| pg_error("follow", e))?
        {
            let key = (row.get::<_, String>("topic"), row.get::<_, i64>("seq"));
            events.insert(key, to_event(&row));
        }
    }
    let mut entries: HashMap<(Vec<u8>, i64), Result<EventChange>> = HashMap::new();
    if !users.is_empty() {
        let sql = format!(
            "SELECT user_id, {ENTRY} FROM unnest($1::BYTEA[], $2::BIGINT[]) AS n(u, p)
             CROSS JOIN LATERAL (SELECT * FROM changes c
                                 WHERE c.user_id = n.u AND c.position = n.p) AS c"
        );
        for row in client
            .query(&sql, &[&users, &positions])
            .await
            .map_err(|e| pg_error("follow", e))?
        {
            let key = (
                row.get::<_, Vec<u8>>("user_id"),
                row.get::<_, i64>("position"),
            );
            entries.insert(key, entry(&row));
        }
    }
    Ok(notes
        .iter()
        .filter_map(|note| match note {
            Note::Published(seq, topic) => events
                .remove(&(topic.clone(), *seq))
                .map(|e| e.map(Followed::Published)),
            Note::Changed(position, user) => entries
                .remove(&(user.clone(), *position))
                .map(|c| c.map(Followed::Changed)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_seq_then_the_topic_or_a_change() {
        assert_eq!(
            parse("42:orders.eu"),
            Some(Note::Published(42, "orders.eu".to_owned()))
        );
        assert_eq!(parse("7:"), Some(Note::Published(7, String::new())));
        assert_eq!(parse("x:orders"), None);
        assert_eq!(parse("orders"), None);
        assert_eq!(
            parse("c:3:616c00ff"),
            Some(Note::Changed(3, vec![b'a', b'l', 0, 0xff]))
        );
        assert_eq!(parse("c:3:6"), None);
        assert_eq!(parse("c:x:61"), None);
    }
}
