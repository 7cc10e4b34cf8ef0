//! Publishing on MongoDB without a transaction. A topic's next `seq` is one past the newest its
//! counter records, and the insert claims it through the unique (`topic`, `seq`) index: a
//! publisher that loses the race (or finds the counter behind) moves on to the next. Only a
//! taken seq is skipped, so seqs have no holes, and n+1 can only be claimed once n is stored, so
//! `seq` order is commit order, which the change feed relies on.
//!
//! Not a transaction, because a transaction holds its documents across the client's round
//! trips: a backend killed (`kill -9`) between its counter increment and its commit leaves the
//! topic's counter locked until the server gives up on the transaction, 60 s later
//! (`transactionLifetimeLimitSeconds`; measured here: 60.3 s), and every publish of that topic
//! fails meanwhile. A lost race here costs one more read, and a dead publisher holds nothing.

use mongodb::{
    Collection,
    bson::{Document, doc},
};

use super::{counter_id, is_duplicate_key, mongo_error, to_document};
use crate::store::{Event, NewEvent, Result, StoreError};

/// Seqs a publish tries before giving up as busy: each lost one was taken by another process.
const ATTEMPTS: usize = 64;

/// Stores `new` with its topic's next `seq`; a repeat of a publish that is stored (its id)
/// returns the stored event.
pub(super) async fn publish(
    events: &Collection<Document>,
    counters: &Collection<Document>,
    hints: &Collection<Document>,
    new: &NewEvent,
) -> Result<Event> {
    let fail = |e| mongo_error("publish", e);
    if let Some(stored) = stored(events, new).await? {
        return Ok(stored);
    }
    // The counter may lag behind the events (a publisher that died between its insert and its
    // counter update): a taken seq moves this publish on to the next, so it ends at the first
    // free one, which is one past the topic's newest.
    let mut seq = newest(counters, &new.topic).await.map_err(fail)? + 1;
    for _ in 0..ATTEMPTS {
        let event = new.clone().into_event(Some(seq));
        match events.insert_one(to_document(&event)?).await {
            Ok(_) => {
                // For the next publisher and for retention by count. Only a hint: the event
                // is stored, and a lost hint costs the next publisher a step, so it is not
                // waited on to disk (`hints`). What keeps a topic whose events are all dropped
                // from reusing their seqs is `dropped_through`, which retention writes durably.
                hints
                    .update_one(
                        doc! {"_id": counter_id(&new.topic)},
                        doc! {"$max": {"seq": seq as i64}},
                    )
                    .upsert(true)
                    .await
                    .map_err(fail)?;
                return Ok(event);
            }
            // The seq was taken meanwhile, or (with an id) a repeat of this publish won.
            Err(err) if is_duplicate_key(&err) => {
                if let Some(stored) = stored(events, new).await? {
                    return Ok(stored);
                }
                // Another process's publish: at least that one is newer.
                seq = (newest(counters, &new.topic).await.map_err(fail)? + 1).max(seq + 1);
            }
            Err(err) => return Err(fail(err)),
        }
    }
    Err(StoreError::Unavailable {
        op: "publish",
        reason: format!("the topic's next seq was taken {ATTEMPTS} times in a row"),
    })
}

/// The event stored under `new`'s id, if it names one.
async fn stored(events: &Collection<Document>, new: &NewEvent) -> Result<Option<Event>> {
    match new.id {
        Some(id) => super::stored(events, "publish", id).await,
        None => Ok(None),
    }
}

/// The newest `seq` `topic`'s counter records: the newest published, or the newest retention
/// dropped, whichever is larger (one read by `_id`: no scan of the events, whatever a server's
/// planner does with the partial (`topic`, `seq`) index).
async fn newest(counters: &Collection<Document>, topic: &str) -> mongodb::error::Result<u64> {
    let counter = counters.find_one(doc! {"_id": counter_id(topic)}).await?;
    let counted = counter.map_or(0, |c| {
        let field = |name| c.get_i64(name).unwrap_or(0);
        field("seq").max(field("dropped_through"))
    });
    Ok(counted.max(0) as u64)
}
