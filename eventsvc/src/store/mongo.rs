//! `EventStore` on MongoDB (`fullApp.events`, the old service's collection). A topic's `seq` is
//! claimed by the insert itself through the unique (`topic`, `seq`) index, so `seq` order is
//! commit order without a transaction (`publish`); the change feed is a change stream. Every
//! write asks for what an acknowledgement promises: journaled (`j: true`) and, on a replica set,
//! on a majority — never the server's defaults.

mod batch;
mod changelog;
mod changes;
mod document;
mod errors;
mod keys;
mod legacy;
mod open;
mod presence;
mod publish;
mod queue;
mod retention;
mod sessions;

use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use mongodb::{
    Collection,
    bson::{Document, doc},
};
use uuid::Uuid;

use super::{
    Claim, Event, EventChange, EventPage, EventPatch, EventStore, Followed, KeyClaim, NewEvent,
    Precondition, Result, Retention, StoreError, TopicHead, TopicRange,
    presence::{Presence, PresenceReport, Reported},
    topic_ranges,
};
use chrono::{DateTime, Utc};
pub use document::{from_document, to_document};
use errors::{is_duplicate_key, mongo_error};
use eventsys::topics::Patterns;
pub use open::database_name;

/// The old service's database, used when the URI names none.
pub const DEFAULT_DATABASE: &str = "fullApp";
/// What a standalone server (no transactions) answers for a change feed.
const CHANGE_FEEDS: &str = "users' change feeds on MongoDB need a replica set: start mongod \
     with --replSet rs0 and run rs.initiate() once (see README, Running on MongoDB)";

const EVENTS: &str = "events";
const COUNTERS: &str = "counters";
const KEYS: &str = "idempotency_keys";
/// The most a publish spends waiting for its topic's turn and storing the event.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(5);

/// The sentence a subscriber gets when the server cannot stream changes.
pub const NEEDS_REPLICA_SET: &str = "MongoDB change streams need a replica set: start mongod \
     with --replSet rs0 and run rs.initiate() once (see README, Running on MongoDB)";

/// The events of the old Go service's database (`events`), with `counters` for each topic's
/// newest and newest dropped `seq`, and `keys` for idempotency keys. No lock but the topics'
/// publish queues: the driver's `Client` is a pool shared by clones, and every rule that spans documents
/// (a topic's `seq` order, an id stored once, a key's answer with its event) rests on a unique
/// index or a single-document compare-and-set on the server, so several backends on one
/// database agree.
pub struct MongoStore {
    /// The database on a one-connection client of its own, for `ping`.
    probe: mongodb::Database,
    events: Collection<Document>,
    counters: Collection<Document>,
    /// Clients' idempotency keys and their answers.
    keys: Collection<Document>,
    /// Replica set (or sharded cluster): change streams, majority writes.
    replicated: bool,
    /// This process's publishes, in batches per topic.
    publishes: queue::PublishQueues,
    /// This process's creates, inserted many at a time (group commit).
    creates: batch::Creates,
    /// This process's updates and deletes, applied many at a time; `None` on a standalone
    /// server (no transactions), where each goes alone.
    changes: Option<crate::store::changes::Changes>,
    /// Users' change feeds; `None` on a standalone server (no transactions to record them in).
    feeds: Option<changelog::Feeds>,
    /// Presence (`presence`); `None` on a standalone server (no transactions to keep it in).
    presences: Option<presence::Presences>,
    /// This backend's sessions in `backends` (replica set only): while it lives, their
    /// heartbeat; once it is dropped, nothing (its entry goes).
    _sessions: Option<sessions::Registry>,
}

fn scope(id: Uuid, owner: Option<String>) -> Document {
    let mut filter = doc! {"id": id.to_string()};
    if let Some(owner) = owner {
        filter.insert("userId", owner);
    }
    filter
}

/// Whether `document` is in `scope(.., owner)`: the same rule, for an event already read.
fn in_scope(document: &Document, owner: Option<&str>) -> bool {
    owner.is_none_or(|owner| document.get_str("userId") == Ok(owner))
}

impl MongoStore {
    fn presences(&self) -> Result<&presence::Presences> {
        self.presences.as_ref().ok_or_else(|| {
            StoreError::Unsupported(
                "presence needs a replica set (transactions); a standalone server has none".into(),
            )
        })
    }

    fn feeds(&self) -> Result<&changelog::Feeds> {
        self.feeds
            .as_ref()
            .ok_or_else(|| StoreError::Unsupported(CHANGE_FEEDS.to_owned()))
    }

    async fn find(
        &self,
        op: &'static str,
        filter: Document,
        sort: Document,
        limit: usize,
    ) -> Result<Vec<Document>> {
        self.events
            .find(filter)
            .sort(sort)
            .limit(limit as i64)
            .await
            .map_err(|e| mongo_error(op, e))?
            .try_collect()
            .await
            .map_err(|e| mongo_error(op, e))
    }
}

/// The event stored under `id`, if any.
async fn stored(
    events: &Collection<Document>,
    op: &'static str,
    id: Uuid,
) -> Result<Option<Event>> {
    let found = events
        .find_one(doc! {"id": id.to_string()})
        .await
        .map_err(|e| mongo_error(op, e))?;
    found.as_ref().map(from_document).transpose()
}

/// The `counters` document of `topic`: its newest `seq` and the newest retention dropped.
fn counter_id(topic: &str) -> String {
    format!("topic:{topic}")
}

#[async_trait]
impl EventStore for MongoStore {
    async fn create(&self, new: NewEvent) -> Result<Event> {
        let event = new.clone().into_event(None);
        let event = match self
            .creates
            .insert(to_document(&event)?, new.size())
            .await?
        {
            batch::Inserted::Stored => event,
            // The id is taken (the unique `id` index): a repeat of the request that stored it,
            // or another event.
            batch::Inserted::Taken => {
                let stored = stored(&self.events, "create", event.id).await?;
                new.repeated(stored.ok_or(StoreError::NotFound)?)?
            }
        };
        if let Some(key) = &new.key {
            keys::record(&self.keys, key, &event).await?;
        }
        Ok(event)
    }

    async fn get(&self, id: Uuid, owner: Option<String>) -> Result<Event> {
        let found = self
            .events
            .find_one(scope(id, owner))
            .await
            .map_err(|e| mongo_error("get", e))?;
        from_document(&found.ok_or(StoreError::NotFound)?)
    }

    async fn list(
        &self,
        owner: Option<String>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<EventPage> {
        let mut filter = Document::new();
        if let Some(owner) = owner {
            filter.insert("userId", owner);
        }
        if let Some(token) = cursor {
            filter.insert("_id", doc! {"$gt": document::parse_page_token(&token)?});
        }
        // One extra document tells whether another page follows.
        let mut found = self
            .find("list", filter, doc! {"_id": 1}, limit + 1)
            .await?;
        let next = if found.len() > limit {
            found.truncate(limit);
            found.last().and_then(document::page_token)
        } else {
            None
        };
        Ok(EventPage {
            events: found.iter().map(from_document).collect::<Result<_>>()?,
            next,
        })
    }

    async fn update(
        &self,
        id: Uuid,
        owner: Option<String>,
        patch: EventPatch,
        when: Precondition,
    ) -> Result<Event> {
        match &self.changes {
            Some(changes) => changes.update(id, owner, patch, when).await,
            None => changes::update_alone(&self.events, id, owner, patch, when).await,
        }
    }

    async fn delete(&self, id: Uuid, owner: Option<String>, when: Precondition) -> Result<()> {
        match &self.changes {
            Some(changes) => changes.delete(id, owner, when).await,
            None => changes::delete_alone(&self.events, id, owner, when).await,
        }
    }

    async fn publish(&self, new: NewEvent) -> Result<Event> {
        let Ok(published) =
            tokio::time::timeout(PUBLISH_DEADLINE, self.publishes.publish(new.clone())).await
        else {
            // Whether it was stored is unknown: a retry with the same id finds out.
            return Err(StoreError::Unavailable {
                op: "publish",
                reason: format!("not stored within {PUBLISH_DEADLINE:?}"),
            });
        };
        let event = new.repeated(published?)?;
        if let Some(key) = &new.key {
            keys::record(&self.keys, key, &event).await?;
        }
        Ok(event)
    }

    async fn events_after(&self, topic: &str, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let filter = doc! {"topic": topic, "seq": {"$gt": after}};
        let found = self
            .find("events_after", filter, doc! {"seq": 1}, limit)
            .await?;
        found.iter().map(from_document).collect()
    }

    async fn follow(&self) -> Result<BoxStream<'static, Result<Followed>>> {
        if !self.replicated {
            return Err(StoreError::Unsupported(NEEDS_REPLICA_SET.to_owned()));
        }
        let pipeline = [doc! {"$match": {
            "operationType": "insert",
            "fullDocument.seq": {"$exists": true},
        }}];
        let changes = self
            .events
            .watch()
            .pipeline(pipeline)
            .await
            .map_err(|e| mongo_error("follow", e))?;
        let published = changes
            .map(|change| {
                let change = change.map_err(|e| mongo_error("follow", e))?;
                let document = change.full_document.ok_or_else(|| StoreError::Internal {
                    op: "follow",
                    source: "insert event without its document".into(),
                })?;
                from_document(&document).map(Followed::Published)
            })
            .boxed();
        let entries = self.feeds()?.follow().await?;
        Ok(futures::stream::select(published, entries).boxed())
    }

    async fn changes_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventChange>> {
        self.feeds()?.after(user, after, limit).await
    }

    async fn changes_dropped_through(&self, user: &str) -> Result<u64> {
        self.feeds()?.dropped_through(user).await
    }

    /// A batch of each: topics', then change feeds'.
    async fn compact(&self, retention: Retention, batch: usize) -> Result<usize> {
        let topics = retention::compact(&self.events, &self.counters, retention, batch).await?;
        let feeds = match &self.feeds {
            Some(feeds) => feeds.compact(retention, batch).await?,
            None => 0,
        };
        Ok(topics + feeds)
    }

    async fn dropped_through(&self, topic: &str) -> Result<u64> {
        retention::dropped_through(&self.counters, topic).await
    }

    async fn topics(&self, patterns: &Patterns, limit: usize) -> Result<Vec<TopicHead>> {
        // Counter ids are `topic:<name>`: the same ranges, behind that prefix.
        let ids: Vec<Document> = topic_ranges(patterns)
            .into_iter()
            .map(|range| match range {
                TopicRange::Exact(topic) => doc! {"_id": counter_id(&topic)},
                TopicRange::Between { from, to } => {
                    doc! {"_id": {"$gte": counter_id(&from), "$lt": counter_id(&to)}}
                }
                TopicRange::All => {
                    doc! {"_id": {"$gte": counter_id(""), "$lt": "topic;"}}
                }
            })
            .collect();
        let fail = |e| mongo_error("topics", e);
        let counters: Vec<Document> = self
            .counters
            .find(doc! {"$or": ids})
            .sort(doc! {"_id": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(fail)?
            .try_collect()
            .await
            .map_err(fail)?;
        Ok(counters
            .iter()
            .filter_map(|counter| {
                let topic = counter.get_str("_id").ok()?.strip_prefix("topic:")?;
                let field = |name| counter.get_i64(name).unwrap_or(0).max(0) as u64;
                Some(TopicHead {
                    topic: topic.to_owned(),
                    last_seq: field("seq"),
                    dropped_through: field("dropped_through"),
                })
            })
            .collect())
    }

    async fn report_presence(&self, report: PresenceReport) -> Result<Reported> {
        presence::report(self.presences()?, report).await
    }

    async fn expire_presence(&self, cutoff: DateTime<Utc>, batch: usize) -> Result<Vec<Event>> {
        presence::expire(self.presences()?, cutoff, batch).await
    }

    async fn presence(
        &self,
        topic: &str,
        alive_since: DateTime<Utc>,
        subjects: bool,
    ) -> Result<Presence> {
        presence::presence(self.presences()?, topic, alive_since, subjects).await
    }

    async fn claim(&self, claim: &KeyClaim, id: Uuid) -> Result<Claim> {
        keys::claim(&self.keys, &self.events, claim, id).await
    }

    async fn purge_keys(&self, _batch: usize) -> Result<usize> {
        Ok(0)
    }

    async fn ping(&self) -> Result<()> {
        self.probe
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| mongo_error("ping", e))?;
        Ok(())
    }
}
