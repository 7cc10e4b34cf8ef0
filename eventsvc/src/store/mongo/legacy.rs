//! The old Go service's published events get their `seq`, once. It wrote `POST /publish` as a
//! document with a `topic` and a real `time` but no `seq`; topic history, resume and the gap
//! rules all go by `seq`, so without one such an event would vanish from its topic. At start-up
//! each topic's unnumbered events are numbered in the old order (`time`, then `createdAt`, then
//! `_id`), a batch per transaction that also advances the topic's counter, so several backends
//! starting together conflict (and the driver retries) rather than number an event twice; the
//! first to finish leaves a marker and later starts skip the scan.

use futures::{FutureExt, TryStreamExt};
use mongodb::{
    Client, ClientSession, Collection,
    bson::{Bson, Document, doc},
    options::{ReturnDocument, TransactionOptions},
};

use super::document::GO_ZERO_TIME_MS;

/// The marker on `counters` that the old service's events are numbered.
const DONE: &str = "migration:legacy-seq";
/// Events numbered per transaction: small enough for any server's transaction limits.
const BATCH: i64 = 500;

/// An event the old service published: on a topic, at a real time, without a `seq`.
fn unnumbered() -> Document {
    doc! {
        "seq": {"$exists": false},
        "topic": {"$nin": ["", Bson::Null]},
        "time": {"$gt": mongodb::bson::DateTime::from_millis(GO_ZERO_TIME_MS)},
    }
}

/// Numbers every unnumbered published event; returns how many this call numbered.
pub(super) async fn number_published(
    client: &Client,
    events: &Collection<Document>,
    counters: &Collection<Document>,
    transaction: &TransactionOptions,
    replicated: bool,
) -> mongodb::error::Result<u64> {
    if counters.find_one(doc! {"_id": DONE}).await?.is_some() {
        return Ok(0);
    }
    let topics = events.distinct("topic", unnumbered()).await?;
    let mut numbered = 0;
    for topic in topics.iter().filter_map(Bson::as_str) {
        let mut session = client.start_session().await?;
        loop {
            let context = (events.clone(), counters.clone(), topic.to_owned());
            let batch = if replicated {
                session
                    .start_transaction()
                    .with_options(transaction.clone())
                    .and_run(context, |session, (events, counters, topic)| {
                        number_batch(session, events, counters, topic).boxed()
                    })
                    .await?
            } else {
                // No transactions on a standalone server: start one backend first there.
                number_batch(&mut session, events, counters, topic).await?
            };
            if batch == 0 {
                break;
            }
            numbered += batch;
        }
    }
    if numbered > 0 {
        tracing::info!(
            numbered,
            "gave the old service's published events their seq"
        );
    }
    // Another backend may have written it first: either way it is there.
    counters
        .update_one(doc! {"_id": DONE}, doc! {"$set": {"done": true}})
        .upsert(true)
        .await?;
    Ok(numbered)
}

/// The oldest `BATCH` unnumbered events of `topic` get the topic's next seqs, in `session`.
async fn number_batch(
    session: &mut ClientSession,
    events: &Collection<Document>,
    counters: &Collection<Document>,
    topic: &str,
) -> mongodb::error::Result<u64> {
    let mut filter = unnumbered();
    filter.insert("topic", topic);
    let batch: Vec<Document> = events
        .find(filter)
        .sort(doc! {"time": 1, "createdAt": 1, "_id": 1})
        .limit(BATCH)
        .projection(doc! {"_id": 1})
        .session(&mut *session)
        .await?
        .stream(&mut *session)
        .try_collect()
        .await?;
    if batch.is_empty() {
        return Ok(0);
    }
    let count = batch.len() as i64;
    let counter = counters
        .find_one_and_update(
            doc! {"_id": format!("topic:{topic}")},
            doc! {"$inc": {"seq": count}},
        )
        .upsert(true)
        .return_document(ReturnDocument::After)
        .session(&mut *session)
        .await?;
    let last = counter
        .and_then(|c| c.get_i64("seq").ok())
        .ok_or_else(|| mongodb::error::Error::custom("topic counter returned no seq"))?;
    for (seq, event) in (last - count + 1..).zip(&batch) {
        let id = event.get("_id").cloned().unwrap_or(Bson::Null);
        events
            .update_one(
                doc! {"_id": id, "seq": {"$exists": false}},
                doc! {"$set": {"seq": seq}},
            )
            .session(&mut *session)
            .await?;
    }
    Ok(batch.len() as u64)
}
