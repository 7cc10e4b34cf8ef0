//! The PostgreSQL follower: a connection of its own `LISTEN`s on the channel every publish and
//! every change feed entry notifies in its transaction. The server delivers notifications at
//! commit, in commit order, and a topic's seqs (a user's positions) commit in order, so reading
//! each notified event by (`topic`, `seq`) and entry by (`user`, `position`) gives every
//! subscriber its streams' items once, in order. A notification is lost only with the
//! connection, and then the stream ends with an error: subscribers resubscribe from their last
//! `seq` and read what they missed by position (`events_after`).

use std::sync::Arc;

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
use crate::store::{Followed, Result, StoreError};

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
    let sql: Arc<(String, String)> = Arc::new((
        format!("SELECT {COLUMNS} FROM events WHERE topic = $1 AND seq = $2"),
        format!("SELECT {ENTRY} FROM changes WHERE user_id = $1 AND position = $2"),
    ));
    Ok(ReceiverStream::new(received)
        .filter_map(move |note| {
            let (pool, sql, _listening) = (pool.clone(), sql.clone(), listening.clone());
            async move {
                let note = match note {
                    Ok(note) => note,
                    Err(err) => return Some(Err(err)),
                };
                let client = match pool.get().await {
                    Ok(client) => client,
                    Err(err) => return Some(Err(pool_error("follow", err))),
                };
                let (events, entries) = &*sql;
                let found = match &note {
                    Note::Published(seq, topic) => client.query_opt(events, &[topic, seq]).await,
                    Note::Changed(position, user) => {
                        client.query_opt(entries, &[user, position]).await
                    }
                };
                match found {
                    Ok(Some(row)) => Some(match note {
                        Note::Published(..) => to_event(&row).map(Followed::Published),
                        Note::Changed(..) => entry(&row).map(Followed::Changed),
                    }),
                    // Deleted since (by its owner, or by retention): nothing to deliver.
                    Ok(None) => None,
                    Err(err) => Some(Err(pg_error("follow", err))),
                }
            }
        })
        .boxed())
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
