//! Users' change feeds on MongoDB: an entry per create, update and delete of an owned event,
//! written in the change's own transaction (`record`), read by position, followed with a
//! change stream, and trimmed by retention as topics are. A user's head document holds the
//! last position handed out: incremented in the transaction, it orders the user's entries by
//! commit (a second transaction writing it conflicts and is run again by the driver), so a
//! reader never sees position `n + 1` before `n`.
//!
//! Transactions need a replica set: on a standalone server there are no change feeds.

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use chrono::{SubsecRound, Utc};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use mongodb::{
    ClientSession, Collection, IndexModel,
    bson::{Document, doc},
    options::{IndexOptions, ReturnDocument},
};

use super::{from_document, mongo_error};
use crate::store::{
    ChangeKind, Event, EventChange, Followed, Result, Retention, StoreError, outcome,
};

pub(super) const CHANGES: &str = "changes";
pub(super) const HEADS: &str = "change_heads";

/// The feeds' collections: entries, and per user (`_id`) the last position handed out
/// (`last`) and the newest one retention dropped (`dropped_through`).
#[derive(Clone)]
pub(super) struct Feeds {
    pub(super) changes: Collection<Document>,
    pub(super) heads: Collection<Document>,
}

impl Feeds {
    /// The indexes reads and retention use; a user's position is unique.
    pub(super) fn indexes() -> Vec<IndexModel> {
        vec![
            IndexModel::builder()
                .keys(doc! {"userId": 1, "position": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
            IndexModel::builder().keys(doc! {"time": 1}).build(),
        ]
    }

    /// Records `changes` (each the event after it) in their owners' feeds, in `session`'s
    /// transaction: a user's head moves by their count, and their entries take the positions
    /// it passed, in the order given.
    pub(super) async fn record(
        &self,
        session: &mut ClientSession,
        changes: Vec<(ChangeKind, Event)>,
    ) -> mongodb::error::Result<()> {
        let mut by_user: BTreeMap<String, Vec<(ChangeKind, Event)>> = BTreeMap::new();
        for (kind, event) in changes {
            if !event.user_id.is_empty() {
                by_user
                    .entry(event.user_id.clone())
                    .or_default()
                    .push((kind, event));
            }
        }
        let now =
            mongodb::bson::DateTime::from_millis(Utc::now().trunc_subsecs(3).timestamp_millis());
        let mut entries = Vec::new();
        for (user, changes) in by_user {
            let count = i64::try_from(changes.len()).unwrap_or(i64::MAX);
            let head = self
                .heads
                .find_one_and_update(doc! {"_id": &user}, doc! {"$inc": {"last": count}})
                .upsert(true)
                .return_document(ReturnDocument::After)
                .session(&mut *session)
                .await?
                .and_then(|head| head.get_i64("last").ok())
                .unwrap_or(count);
            let first = head - count + 1;
            for ((kind, event), position) in changes.into_iter().zip(first..) {
                entries.push(doc! {
                    "userId": &user,
                    "position": position,
                    "kind": kind.code(),
                    "time": now,
                    "event": outcome::encode(&EventChange::kept(kind, &event)),
                });
            }
        }
        if !entries.is_empty() {
            self.changes
                .insert_many(entries)
                .session(&mut *session)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventChange>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let found: Vec<Document> = self
            .changes
            .find(doc! {"userId": user, "position": {"$gt": after}})
            .sort(doc! {"position": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(|e| mongo_error("changes_after", e))?
            .try_collect()
            .await
            .map_err(|e| mongo_error("changes_after", e))?;
        found.iter().map(entry).collect()
    }

    pub(super) async fn dropped_through(&self, user: &str) -> Result<u64> {
        let head = self
            .heads
            .find_one(doc! {"_id": user})
            .await
            .map_err(|e| mongo_error("changes_dropped_through", e))?;
        let through = head.and_then(|h| h.get_i64("dropped_through").ok());
        Ok(through.unwrap_or(0).max(0) as u64)
    }

    /// Every entry inserted from now on, by any process.
    pub(super) async fn follow(&self) -> Result<BoxStream<'static, Result<Followed>>> {
        let inserts = [doc! {"$match": {"operationType": "insert"}}];
        let stream = self
            .changes
            .watch()
            .pipeline(inserts)
            .await
            .map_err(|e| mongo_error("follow", e))?;
        Ok(stream
            .map(|change| {
                let change = change.map_err(|e| mongo_error("follow", e))?;
                let document = change.full_document.ok_or_else(|| StoreError::Internal {
                    op: "follow",
                    source: "insert of a change without its document".into(),
                })?;
                entry(&document).map(Followed::Changed)
            })
            .boxed())
    }

    /// One batch of retention: the first feed with entries due is trimmed by up to `batch`.
    /// As for topics (`retention`), the bound is recorded before the entries go, outside a
    /// transaction.
    pub(super) async fn compact(&self, retention: Retention, batch: usize) -> Result<usize> {
        let fail = |e| mongo_error("compact", e);
        let Some((user, through)) = self.due(retention).await.map_err(fail)? else {
            return Ok(0);
        };
        let doomed: Vec<Document> = self
            .changes
            .find(doc! {"userId": &user, "position": {"$lte": through}})
            .sort(doc! {"position": 1})
            .limit(i64::try_from(batch).unwrap_or(i64::MAX))
            .projection(doc! {"position": 1})
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
                .filter_map(|d| d.get_i64("position").ok())
                .max()
                .unwrap_or(through)
        };
        self.heads
            .update_one(
                doc! {"_id": &user},
                doc! {"$max": {"dropped_through": newest}},
            )
            .await
            .map_err(fail)?;
        let deleted = self
            .changes
            .delete_many(doc! {"userId": &user, "position": {"$lte": newest}})
            .await
            .map_err(fail)?;
        Ok(usize::try_from(deleted.deleted_count).unwrap_or(usize::MAX))
    }

    /// A feed with entries retention no longer keeps, and the newest position to drop.
    async fn due(&self, retention: Retention) -> mongodb::error::Result<Option<(String, i64)>> {
        if let Some(max) = retention.max_events {
            let max = i64::try_from(max).unwrap_or(i64::MAX);
            let over = doc! {"$expr": {"$gt": [
                {"$subtract": ["$last", max]},
                {"$ifNull": ["$dropped_through", 0_i64]},
            ]}};
            if let Some(head) = self.heads.find_one(over).await? {
                let user = head.get_str("_id").unwrap_or_default().to_owned();
                let last = head.get_i64("last").unwrap_or(0);
                return Ok(Some((user, last - max)));
            }
        }
        if let Some(age) = retention.max_age {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let cutoff = i64::try_from(now.saturating_sub(age).as_millis()).unwrap_or(i64::MAX);
            let cutoff = mongodb::bson::DateTime::from_millis(cutoff);
            // The oldest entry due, and its feed's newest entry due.
            let Some(oldest) = self
                .changes
                .find_one(doc! {"time": {"$lt": cutoff}})
                .sort(doc! {"time": 1})
                .await?
            else {
                return Ok(None);
            };
            let user = oldest.get_str("userId").unwrap_or_default().to_owned();
            let newest = self
                .changes
                .find_one(doc! {"userId": &user, "time": {"$lt": cutoff}})
                .sort(doc! {"position": -1})
                .await?
                .and_then(|d| d.get_i64("position").ok())
                .unwrap_or(0);
            return Ok(Some((user, newest)));
        }
        Ok(None)
    }
}

/// An entry document as the store keeps it.
fn entry(d: &Document) -> Result<EventChange> {
    let time = d
        .get_datetime("time")
        .map(|t| t.timestamp_millis())
        .unwrap_or(i64::MIN);
    outcome::change(
        0,
        d.get_i64("position").unwrap_or(0),
        d.get_i64("kind")
            .or_else(|_| d.get_i32("kind").map(i64::from))
            .unwrap_or(0),
        time,
        d.get_str("event").unwrap_or_default(),
    )
}

/// The event of a document read in a transaction, for its feed's entry.
pub(super) fn recorded(kind: ChangeKind, document: &Document) -> Option<(ChangeKind, Event)> {
    from_document(document).ok().map(|event| (kind, event))
}
