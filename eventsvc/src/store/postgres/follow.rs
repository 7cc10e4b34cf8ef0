//! The PostgreSQL change feed: a connection of its own `LISTEN`s on the channel every publish
//! notifies in its transaction. The server delivers notifications at commit, in commit order,
//! and a topic's seqs commit in order, so reading each notified event by (`topic`, `seq`) gives
//! every subscriber its topics' events once, in order. A notification is lost only with the
//! connection, and then the stream ends with an error: subscribers resubscribe from their last
//! `seq` and read what they missed by position (`events_after`).

use std::sync::Arc;

use deadpool_postgres::Pool;
use futures::{StreamExt, stream::BoxStream};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_stream::wrappers::ReceiverStream;

use super::{CHANNEL, COLUMNS, Connect, pg_error, pool_error, to_event};
use crate::store::{Event, Result, StoreError};

/// Notifications read ahead of the events being fetched; past it the connection is not read
/// until the feed catches up (the server holds the rest).
const AHEAD: usize = 1024;

/// What a publish notifies (`publish_event`): `seq:topic`.
fn parse(payload: &str) -> Option<(i64, String)> {
    let (seq, topic) = payload.split_once(':')?;
    Some((seq.parse().ok()?, topic.to_owned()))
}

/// Starts following: every publish that commits after this returns is in the stream.
pub(super) async fn follow(
    connect: &Connect,
    pool: Pool,
) -> Result<BoxStream<'static, Result<Event>>> {
    let (client, mut connection) = connect
        .config
        .connect(connect.tls.clone())
        .await
        .map_err(|e| pg_error("follow", e))?;
    let (notes, received) = mpsc::channel::<Result<(i64, String)>>(AHEAD);
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
    let sql: Arc<str> =
        format!("SELECT {COLUMNS} FROM events WHERE topic = $1 AND seq = $2").into();
    Ok(ReceiverStream::new(received)
        .filter_map(move |note| {
            let (pool, sql, _listening) = (pool.clone(), sql.clone(), listening.clone());
            async move {
                let (seq, topic) = match note {
                    Ok(note) => note,
                    Err(err) => return Some(Err(err)),
                };
                let client = match pool.get().await {
                    Ok(client) => client,
                    Err(err) => return Some(Err(pool_error("follow", err))),
                };
                match client.query_opt(&*sql, &[&topic, &seq]).await {
                    Ok(Some(row)) => Some(to_event(&row)),
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
    fn payloads_name_the_seq_then_the_topic() {
        assert_eq!(parse("42:orders.eu"), Some((42, "orders.eu".to_owned())));
        assert_eq!(parse("7:"), Some((7, String::new())));
        assert_eq!(parse("x:orders"), None);
        assert_eq!(parse("orders"), None);
    }
}
