//! Retention on MongoDB: the same batches as on SQLite, with the newest seq dropped kept on the
//! topic's counter document. Not a TTL index: MongoDB's TTL monitor deletes without telling
//! anyone, and readers must be told exactly where a gap ends.

use chrono::Utc;
use futures::TryStreamExt;
use mongodb::{
    Collection,
    bson::{Document, doc},
};

use super::{Result, Retention, counter_id, mongo_error};

/// One batch: the first topic with events due is trimmed by up to `batch` events. The topic's
/// new `dropped_through` is recorded before the events go, so no reader finds events gone
/// without being told of the gap (history reads answer nothing at or below it). Not a
/// transaction: one abandoned by a killed backend would hold the topic's counter, and with it
/// every publish, for a minute (see `publish`). A backend killed between the two steps leaves
/// events that nobody reads; the topic's next trim removes them.
pub(super) async fn compact(
    events: &Collection<Document>,
    counters: &Collection<Document>,
    retention: Retention,
    batch: usize,
) -> Result<usize> {
    let fail = |e| mongo_error("compact", e);
    let Some((topic, through)) = due(events, counters, retention).await.map_err(fail)? else {
        return Ok(0);
    };
    let doomed: Vec<Document> = events
        .find(doc! {"topic": &topic, "seq": {"$lte": through}})
        .sort(doc! {"seq": 1})
        .limit(batch as i64)
        .projection(doc! {"_id": 1, "seq": 1})
        .await
        .map_err(fail)?
        .try_collect()
        .await
        .map_err(fail)?;
    let newest = if doomed.len() < batch {
        through
    } else {
        doomed
            .iter()
            .filter_map(|d| d.get_i64("seq").ok())
            .max()
            .unwrap_or(through)
    };
    counters
        .update_one(
            doc! {"_id": counter_id(&topic)},
            doc! {"$max": {"dropped_through": newest}},
        )
        .await
        .map_err(fail)?;
    // Everything of the topic up to what is recorded: this batch, and whatever a trim that
    // died between its two steps left.
    let deleted = events
        .delete_many(doc! {"topic": &topic, "seq": {"$lte": newest}})
        .await
        .map_err(fail)?;
    Ok(usize::try_from(deleted.deleted_count).unwrap_or(usize::MAX))
}

async fn due(
    events: &Collection<Document>,
    counters: &Collection<Document>,
    retention: Retention,
) -> mongodb::error::Result<Option<(String, i64)>> {
    if let Some(max) = retention.max_events {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let over = doc! {"$expr": {"$gt": [
            {"$subtract": ["$seq", max]},
            {"$ifNull": ["$dropped_through", 0_i64]},
        ]}};
        if let Some(counter) = counters.find_one(over).await? {
            let topic = counter
                .get_str("_id")
                .ok()
                .and_then(|id| id.strip_prefix("topic:"))
                .map(str::to_owned);
            if let (Some(topic), Ok(seq)) = (topic, counter.get_i64("seq")) {
                return Ok(Some((topic, seq - max)));
            }
        }
    }
    if let Some(age) = retention.max_age {
        let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        let cutoff = mongodb::bson::DateTime::from_millis(
            Utc::now()
                .checked_sub_signed(age)
                .map_or(0, |t| t.timestamp_millis()),
        );
        let old = doc! {"seq": {"$exists": true}, "time": {"$lt": cutoff}};
        let Some(oldest) = events.find_one(old).await? else {
            return Ok(None);
        };
        let Ok(topic) = oldest.get_str("topic").map(str::to_owned) else {
            return Ok(None);
        };
        let newest_old = events
            .find_one(doc! {"topic": &topic, "seq": {"$exists": true}, "time": {"$lt": cutoff}})
            .sort(doc! {"seq": -1})
            .await?;
        if let Some(seq) = newest_old.and_then(|d| d.get_i64("seq").ok()) {
            return Ok(Some((topic, seq)));
        }
    }
    Ok(None)
}

pub(super) async fn dropped_through(counters: &Collection<Document>, topic: &str) -> Result<u64> {
    let counter = counters
        .find_one(doc! {"_id": counter_id(topic)})
        .await
        .map_err(|e| mongo_error("dropped_through", e))?;
    Ok(counter
        .and_then(|c| c.get_i64("dropped_through").ok())
        .unwrap_or(0)
        .max(0) as u64)
}
