//! Publishing on MongoDB without a transaction. A topic's next `seq` is one past the newest it
//! has had (its newest stored event, or the counter when retention dropped them all), and the
//! insert claims it through the unique (`topic`, `seq`) index: a publisher that lost the race
//! reads again and takes the next. `seq` n+1 can only be claimed once n is visible, so `seq`
//! order is commit order, which the change feed relies on.
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

use super::{counter_id, from_document, is_duplicate_key, mongo_error, to_document};
use crate::store::{Event, NewEvent, Result, StoreError};

/// Seqs a publish tries before giving up as busy: each lost one was taken by another process.
const ATTEMPTS: usize = 64;

/// Stores `new` with its topic's next `seq`; a repeat of a publish that is stored (its id)
/// returns the stored event.
pub(super) async fn publish(
    events: &Collection<Document>,
    counters: &Collection<Document>,
    new: &NewEvent,
) -> Result<Event> {
    let fail = |e| mongo_error("publish", e);
    if let Some(stored) = stored(events, new).await? {
        return Ok(stored);
    }
    for _ in 0..ATTEMPTS {
        let seq = newest(events, counters, &new.topic).await.map_err(fail)? + 1;
        let event = new.clone().into_event(Some(seq));
        match events.insert_one(to_document(&event)?).await {
            Ok(_) => {
                // For retention by count and for a topic whose events are all dropped. A
                // process that dies before this leaves the counter behind; the stored event
                // still counts in `newest`.
                counters
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
    let Some(id) = new.id else {
        return Ok(None);
    };
    let found = events
        .find_one(doc! {"id": id.to_string()})
        .await
        .map_err(|e| mongo_error("publish", e))?;
    found.as_ref().map(from_document).transpose()
}

/// The newest `seq` `topic` has had: its newest stored event's, or what its counter recorded
/// (the newest published, the newest dropped by retention), whichever is larger.
async fn newest(
    events: &Collection<Document>,
    counters: &Collection<Document>,
    topic: &str,
) -> mongodb::error::Result<u64> {
    let last = events
        .find_one(doc! {"topic": topic, "seq": {"$exists": true}})
        .sort(doc! {"seq": -1})
        .projection(doc! {"_id": 0, "seq": 1});
    let counter = counters.find_one(doc! {"_id": counter_id(topic)});
    let (last, counter) = tokio::join!(last.into_future(), counter.into_future());
    let stored = last?.and_then(|d| d.get_i64("seq").ok()).unwrap_or(0);
    let counted = counter?.map_or(0, |c| {
        let field = |name| c.get_i64(name).unwrap_or(0);
        field("seq").max(field("dropped_through"))
    });
    Ok(stored.max(counted).max(0) as u64)
}
