//! Publishing on MongoDB without a transaction. A topic's next `seq` is one past the newest its
//! counter records, and the insert claims it through the unique (`topic`, `seq`) index: a
//! publisher that loses the race (or finds the counter behind) moves on to the next. Only a
//! taken seq is skipped, so seqs have no holes, and n+1 can only be claimed once n is stored, so
//! `seq` order is commit order, which the change feed relies on.
//!
//! A topic's publishes queued in this process go in one ordered `insertMany` with consecutive
//! seqs (`queue`): the server stores them one after another, so the rule holds within the
//! command, and a document it refuses (its seq taken by another process, or its id stored)
//! stops it there; those after it go again from the next free seq.
//!
//! Not a transaction, because a transaction holds its documents across the client's round
//! trips: a backend killed (`kill -9`) between its counter increment and its commit leaves the
//! topic's counter locked until the server gives up on the transaction, 60 s later
//! (`transactionLifetimeLimitSeconds`; measured here: 60.3 s), and every publish of that topic
//! fails meanwhile. A lost race here costs one more read, and a dead publisher holds nothing.

use futures::TryStreamExt;
use mongodb::{
    Collection,
    bson::{Document, doc},
    error::{ErrorKind, InsertManyError},
};

use super::{
    counter_id,
    errors::{DUPLICATE_KEY, write_error},
    mongo_error, to_document,
};
use crate::store::{Event, NewEvent, Result, StoreError};

/// Times a batch's next document finds its seq taken before it gives up as busy: each lost one
/// was taken by another process.
const ATTEMPTS: usize = 64;

/// The collections a publish writes.
#[derive(Clone)]
pub(super) struct Publishing {
    pub(super) events: Collection<Document>,
    pub(super) counters: Collection<Document>,
    /// `counters` for the newest-seq hint, acknowledged by the primary and not waited on to
    /// disk: a lost hint costs the next publisher a step.
    pub(super) hints: Collection<Document>,
}

/// Stores each of `news` (all on `topic`) with the topic's next seqs, in order; a repeat of a
/// publish that is stored (its id) is answered with the stored event. One answer per publish.
pub(super) async fn publish_batch(
    to: &Publishing,
    topic: &str,
    news: &[&NewEvent],
) -> Vec<Result<Event>> {
    let mut answers: Vec<Option<Result<Event>>> = news.iter().map(|_| None).collect();
    if let Err(err) = answer_repeats(&to.events, news, &mut answers).await {
        return news
            .iter()
            .map(|_| Err(mongo_error("publish", err.clone())))
            .collect();
    }
    let mut left: Vec<usize> = (0..news.len()).filter(|&i| answers[i].is_none()).collect();
    // The counter may lag behind the events (a publisher that died between its insert and its
    // counter update): a taken seq moves the batch on to the next, so it starts at the first
    // free one, which is one past the topic's newest.
    let mut seq = match newest(&to.counters, topic).await {
        Ok(newest) => newest + 1,
        Err(err) => {
            return news
                .iter()
                .map(|_| Err(mongo_error("publish", err.clone())))
                .collect();
        }
    };
    let mut newest_stored = None;
    let mut attempts = 0;
    while !left.is_empty() && attempts < ATTEMPTS {
        let events: Vec<Event> = (0u64..)
            .zip(&left)
            .map(|(k, &i)| news[i].clone().into_event(Some(seq + k)))
            .collect();
        let documents = match events.iter().map(to_document).collect::<Result<Vec<_>>>() {
            Ok(documents) => documents,
            Err(err) => {
                // Not expected of an event this store made; said once, for each.
                let reason = err.to_string();
                for &i in &left {
                    answers[i] = Some(Err(StoreError::Internal {
                        op: "publish",
                        source: reason.clone().into(),
                    }));
                }
                break;
            }
        };
        let inserted = to.events.insert_many(&documents).ordered(true).await;
        // How many were stored, and what stopped the command (ordered: the first refusal).
        let (stored, refused) = match inserted {
            Ok(_) => (left.len(), None),
            Err(err) => {
                let refused = match err.kind.as_ref() {
                    ErrorKind::InsertMany(InsertManyError {
                        write_errors: Some(errors),
                        write_concern_error: None,
                        ..
                    }) => errors.first().map(|e| (e.index, e.code, e.message.clone())),
                    _ => None,
                };
                match refused {
                    Some((index, code, message)) => (index, Some((code, message))),
                    // Not sent, or not known to be durable: a failure for each.
                    None => {
                        for &i in &left {
                            answers[i] = Some(Err(mongo_error("publish", err.clone())));
                        }
                        break;
                    }
                }
            }
        };
        let mut events = events.into_iter();
        for &i in &left[..stored.min(left.len())] {
            if let Some(event) = events.next() {
                newest_stored = Some(event.seq);
                answers[i] = Some(Ok(event));
            }
        }
        let (Some((code, message)), Some(&i)) = (refused, left.get(stored)) else {
            break;
        };
        let at = seq + stored as u64;
        let taken_by_another = if code == DUPLICATE_KEY {
            match repeat_of(&to.events, news[i]).await {
                // Its id was stored meanwhile (another process, or earlier in this batch).
                Ok(Some(event)) => {
                    answers[i] = Some(Ok(event));
                    false
                }
                Ok(None) => true,
                Err(err) => {
                    answers[i] = Some(Err(err));
                    false
                }
            }
        } else {
            answers[i] = Some(Err(write_error("publish", code, &message)));
            false
        };
        if taken_by_another {
            // Another process's publish took the seq: at least that one is newer.
            attempts += 1;
            left.drain(..stored);
            let newest = newest(&to.counters, topic).await.unwrap_or(at);
            seq = (newest + 1).max(at + 1);
        } else {
            left.drain(..=stored);
            seq = at;
        }
    }
    if let Some(newest) = newest_stored {
        // For the next publisher and for retention by count. Only a hint: the events are
        // stored, and a lost hint costs the next publisher a step. What keeps a topic whose
        // events are all dropped from reusing their seqs is `dropped_through`, which retention
        // writes durably.
        let hinted = to
            .hints
            .update_one(
                doc! {"_id": counter_id(topic)},
                doc! {"$max": {"seq": newest as i64}},
            )
            .upsert(true)
            .await;
        if let Err(err) = hinted {
            tracing::debug!(error = %err, "a topic's newest-seq hint was not written");
        }
    }
    answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| {
                Err(StoreError::Unavailable {
                    op: "publish",
                    reason: format!("the topic's next seq was taken {ATTEMPTS} times in a row"),
                })
            })
        })
        .collect()
}

/// Answers each publish whose id is stored already (a repeat) with the stored event.
async fn answer_repeats(
    events: &Collection<Document>,
    news: &[&NewEvent],
    answers: &mut [Option<Result<Event>>],
) -> mongodb::error::Result<()> {
    let ids: Vec<String> = news
        .iter()
        .filter_map(|n| n.id)
        .map(|id| id.to_string())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let found: Vec<Document> = events
        .find(doc! {"id": {"$in": ids}})
        .await?
        .try_collect()
        .await?;
    let stored: std::collections::HashMap<_, _> = found
        .iter()
        .filter_map(|document| super::from_document(document).ok())
        .map(|event| (event.id, event))
        .collect();
    for (new, answer) in news.iter().zip(answers) {
        if let Some(event) = new.id.and_then(|id| stored.get(&id)) {
            *answer = Some(Ok(event.clone()));
        }
    }
    Ok(())
}

/// The event stored under `new`'s id, if it names one and it is stored.
async fn repeat_of(events: &Collection<Document>, new: &NewEvent) -> Result<Option<Event>> {
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
