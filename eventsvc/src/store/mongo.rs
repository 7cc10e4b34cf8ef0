//! `EventStore` on MongoDB (`fullApp.events`, the old service's collection). A topic's `seq` is
//! claimed by the insert itself through the unique (`topic`, `seq`) index, so `seq` order is
//! commit order without a transaction (`publish`); the change feed is a change stream. Every
//! write asks for what an acknowledgement promises: journaled (`j: true`) and, on a replica set,
//! on a majority — never the server's defaults.

mod document;
mod keys;
mod legacy;
mod publish;
mod retention;
mod turns;

use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use mongodb::{
    Client, Collection, IndexModel,
    bson::{Document, doc},
    error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR, WriteFailure},
    options::{
        Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, ReturnDocument,
        TransactionOptions, WriteConcern,
    },
};
use uuid::Uuid;

use super::{
    Claim, Event, EventPage, EventPatch, EventStore, KeyClaim, NewEvent, OpenError, Result,
    Retention, StoreError,
};
pub use document::{from_document, to_document};

/// The old service's database, used when the URI names none.
pub const DEFAULT_DATABASE: &str = "fullApp";
const EVENTS: &str = "events";
const COUNTERS: &str = "counters";
const KEYS: &str = "idempotency_keys";
/// How long an operation waits for a server to talk to before it fails as unavailable: well
/// inside the gateway's request deadline (10 s by default), so a database that went away gives
/// 503s rather than timeouts.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// The most a publish spends waiting for its topic's turn and storing the event.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(5);

/// The sentence a subscriber gets when the server cannot stream changes.
pub const NEEDS_REPLICA_SET: &str = "MongoDB change streams need a replica set: start mongod \
     with --replSet rs0 and run rs.initiate() once (see README, Running on MongoDB)";

/// The events of the old Go service's database (`events`), with `counters` for each topic's
/// newest and newest dropped `seq`, and `keys` for idempotency keys. No lock but the topics'
/// turns: the driver's `Client` is a pool shared by clones, and every rule that spans documents
/// (a topic's `seq` order, an id stored once, a key's answer with its event) rests on a unique
/// index or a single-document compare-and-set on the server, so several backends on one
/// database agree.
pub struct MongoStore {
    database: mongodb::Database,
    events: Collection<Document>,
    counters: Collection<Document>,
    /// `counters` for the newest-seq hint a publish leaves: acknowledged by the primary, not
    /// waited on to disk, as losing it costs the next publisher a step (see `publish`).
    hints: Collection<Document>,
    /// Clients' idempotency keys and their answers.
    keys: Collection<Document>,
    /// Replica set (or sharded cluster): change streams, majority writes.
    replicated: bool,
    /// This process's publishes, one at a time per topic.
    turns: turns::TopicTurns,
}

/// What an acknowledged write has to be: on disk (`j: true`, so a `kill -9` of the server does
/// not lose it) and, on a replica set, on a majority (so a failover does not roll it back).
fn durable(replicated: bool) -> WriteConcern {
    let w = if replicated {
        Acknowledgment::Majority
    } else {
        Acknowledgment::Nodes(1)
    };
    WriteConcern::builder().w(w).journal(true).build()
}

/// The database a URI names, or the old service's.
pub fn database_name(options: &ClientOptions) -> String {
    options
        .default_database
        .clone()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE.to_owned())
}

/// MongoDB's code for a write refused for want of disk space.
const OUT_OF_DISK_SPACE: i32 = 14031;

/// A second document with a unique index's value (an event id already stored).
fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    const DUPLICATE_KEY: i32 = 11000;
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|e| e.code == DUPLICATE_KEY)),
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// A full disk is `Full`; errors that say the server cannot be reached (now) are
/// `Unavailable`, so the gateway retries elsewhere; anything else is a fault.
fn mongo_error(op: &'static str, err: mongodb::error::Error) -> StoreError {
    if let Some(StoreError::Unavailable { reason, .. }) = err.get_custom::<StoreError>() {
        return StoreError::Unavailable {
            op,
            reason: reason.clone(),
        };
    }
    let code = match err.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        _ => None,
    };
    if code == Some(OUT_OF_DISK_SPACE) {
        return StoreError::Full { op };
    }
    let unreachable = matches!(
        *err.kind,
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
    ) || err.contains_label("RetryableWriteError")
        || err.contains_label(TRANSIENT_TRANSACTION_ERROR);
    StoreError::from_driver(op, err, unreachable)
}

/// The first line of a driver error, for a one-line start-up failure.
fn one_line(err: &mongodb::error::Error) -> String {
    let text = err.to_string();
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

fn scope(id: Uuid, owner: Option<String>) -> Document {
    let mut filter = doc! {"id": id.to_string()};
    if let Some(owner) = owner {
        filter.insert("userId", owner);
    }
    filter
}

impl MongoStore {
    /// Connects, checks the server answers, learns whether it is replicated, and creates the
    /// indexes. Fails fast with a one-line reason.
    pub async fn open(uri: &str) -> Result<Self, OpenError> {
        let fail = |reason: String| OpenError::Mongo { reason };
        let mut options = ClientOptions::parse(uri)
            .await
            .map_err(|e| fail(format!("invalid URI: {}", one_line(&e))))?;
        options
            .server_selection_timeout
            .get_or_insert(SERVER_SELECTION_TIMEOUT);
        options
            .app_name
            .get_or_insert_with(|| "eventsvc".to_owned());
        let database_name = database_name(&options);
        let client = Client::with_options(options).map_err(|e| fail(one_line(&e)))?;
        let database = client.database(&database_name);
        let hello = database
            .run_command(doc! {"hello": 1})
            .await
            .map_err(|e| fail(format!("cannot reach the server: {}", one_line(&e))))?;
        let replicated = hello.contains_key("setName") || hello.get_str("msg") == Ok("isdbgrid");
        let collection_options = || {
            CollectionOptions::builder()
                .write_concern(durable(replicated))
                .build()
        };
        let events = database.collection_with_options::<Document>(EVENTS, collection_options());
        let counters = database.collection_with_options::<Document>(COUNTERS, collection_options());
        let hints = database.collection_with_options::<Document>(
            COUNTERS,
            CollectionOptions::builder()
                .write_concern(WriteConcern::nodes(1))
                .build(),
        );
        let keys = database.collection_with_options::<Document>(KEYS, collection_options());
        // Keys are dropped by the server once their time is up (`purge_keys` has nothing to do).
        let expiry = IndexModel::builder()
            .keys(doc! {"expiresAt": 1})
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build();
        keys.create_index(expiry)
            .await
            .map_err(|e| fail(format!("cannot create indexes: {}", one_line(&e))))?;
        let indexes = [
            IndexModel::builder()
                .keys(doc! {"id": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
            IndexModel::builder()
                .keys(doc! {"userId": 1, "_id": 1})
                .build(),
            IndexModel::builder()
                .keys(doc! {"topic": 1, "seq": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .partial_filter_expression(doc! {"seq": {"$exists": true}})
                        .build(),
                )
                .build(),
            // Retention by age finds old events without a scan.
            IndexModel::builder()
                .keys(doc! {"time": 1})
                .options(
                    IndexOptions::builder()
                        .partial_filter_expression(doc! {"seq": {"$exists": true}})
                        .build(),
                )
                .build(),
        ];
        events
            .create_indexes(indexes)
            .await
            .map_err(|e| fail(format!("cannot create indexes: {}", one_line(&e))))?;
        // Created up front: creating a collection inside a transaction (the first publish)
        // needs MongoDB 4.4 or later. "Already exists" is fine.
        if let Err(err) = database.create_collection(COUNTERS).await
            && !matches!(&*err.kind, ErrorKind::Command(c) if c.code == 48)
        {
            return Err(fail(format!(
                "cannot create {COUNTERS}: {}",
                one_line(&err)
            )));
        }
        let transaction = TransactionOptions::builder()
            .write_concern(durable(replicated))
            .build();
        legacy::number_published(&client, &events, &counters, &transaction, replicated)
            .await
            .map_err(|e| {
                fail(format!(
                    "cannot number the old service's events: {}",
                    one_line(&e)
                ))
            })?;
        tracing::info!(database = %database_name, replicated, "MongoDB store ready");
        Ok(Self {
            database,
            events,
            counters,
            hints,
            keys,
            replicated,
            turns: turns::TopicTurns::default(),
        })
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

    /// The event stored under `id`, if any.
    async fn stored(&self, op: &'static str, id: Uuid) -> Result<Option<Event>> {
        let found = self
            .events
            .find_one(doc! {"id": id.to_string()})
            .await
            .map_err(|e| mongo_error(op, e))?;
        found.as_ref().map(from_document).transpose()
    }

    /// `publish::publish` on the topic's turn in this process.
    async fn publish_in_turn(&self, new: &NewEvent) -> Result<Event> {
        let _turn = self.turns.take(&new.topic).await;
        publish::publish(&self.events, &self.counters, &self.hints, new).await
    }
}

/// The `counters` document of `topic`: its newest `seq` and the newest retention dropped.
fn counter_id(topic: &str) -> String {
    format!("topic:{topic}")
}

#[async_trait]
impl EventStore for MongoStore {
    async fn create(&self, new: NewEvent) -> Result<Event> {
        let event = new.clone().into_event(None);
        let event = match self.events.insert_one(to_document(&event)?).await {
            Ok(_) => event,
            // The id is taken (the unique `id` index): a repeat of the request that stored it,
            // or another event.
            Err(err) if is_duplicate_key(&err) && new.id.is_some() => {
                let stored = self.stored("create", event.id).await?;
                new.repeated(stored.ok_or(StoreError::NotFound)?)?
            }
            Err(err) => return Err(mongo_error("create", err)),
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

    async fn update(&self, id: Uuid, owner: Option<String>, patch: EventPatch) -> Result<Event> {
        let set = doc! {"$set": {
            "title": patch.title,
            "description": patch.description,
            "completed": patch.completed,
        }};
        let updated = self
            .events
            .find_one_and_update(scope(id, owner), set)
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| mongo_error("update", e))?;
        from_document(&updated.ok_or(StoreError::NotFound)?)
    }

    async fn delete(&self, id: Uuid, owner: Option<String>) -> Result<()> {
        let deleted = self
            .events
            .delete_one(scope(id, owner))
            .await
            .map_err(|e| mongo_error("delete", e))?;
        if deleted.deleted_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn publish(&self, new: NewEvent) -> Result<Event> {
        let Ok(published) =
            tokio::time::timeout(PUBLISH_DEADLINE, self.publish_in_turn(&new)).await
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
        // Nothing retention has recorded as dropped, even while its deletion is under way.
        let dropped = retention::dropped_through(&self.counters, topic).await?;
        let after = i64::try_from(after_seq.max(dropped)).unwrap_or(i64::MAX);
        let filter = doc! {"topic": topic, "seq": {"$gt": after}};
        let found = self
            .find("events_after", filter, doc! {"seq": 1}, limit)
            .await?;
        found.iter().map(from_document).collect()
    }

    async fn follow(&self) -> Result<BoxStream<'static, Result<Event>>> {
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
        Ok(changes
            .map(|change| {
                let change = change.map_err(|e| mongo_error("follow", e))?;
                let document = change.full_document.ok_or_else(|| StoreError::Internal {
                    op: "follow",
                    source: "insert event without its document".into(),
                })?;
                from_document(&document)
            })
            .boxed())
    }

    async fn compact(&self, retention: Retention, batch: usize) -> Result<usize> {
        retention::compact(&self.events, &self.counters, retention, batch).await
    }

    async fn dropped_through(&self, topic: &str) -> Result<u64> {
        retention::dropped_through(&self.counters, topic).await
    }

    async fn claim(&self, claim: &KeyClaim, id: Uuid) -> Result<Claim> {
        keys::claim(&self.keys, &self.events, claim, id).await
    }

    async fn purge_keys(&self, _batch: usize) -> Result<usize> {
        Ok(0)
    }

    async fn ping(&self) -> Result<()> {
        self.database
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| mongo_error("ping", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_database_is_the_uris_or_the_old_services() {
        let named = ClientOptions::parse("mongodb://db.example:27017/events_prod")
            .await
            .unwrap();
        assert_eq!(database_name(&named), "events_prod");
        let unnamed = ClientOptions::parse("mongodb://db.example:27017/?replicaSet=rs0")
            .await
            .unwrap();
        assert_eq!(database_name(&unnamed), "fullApp");
    }

    #[tokio::test]
    async fn bad_uris_fail_fast_with_one_line() {
        for uri in [
            "mongodb://",
            "mongodb://host:notaport",
            "mongodb://h/?replicaSet",
        ] {
            let err = MongoStore::open(uri)
                .await
                .err()
                .expect("refused")
                .to_string();
            assert!(
                err.contains("invalid URI") && !err.contains('\n'),
                "{uri}: {err}"
            );
        }
    }

    #[test]
    fn lost_connections_are_unavailable_and_the_rest_internal() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = mongo_error("get", mongodb::error::Error::from(refused));
        assert!(
            matches!(err, StoreError::Unavailable { op: "get", .. }),
            "{err:?}"
        );
        let err = mongo_error("get", mongodb::error::Error::custom("bug"));
        assert!(matches!(err, StoreError::Internal { .. }), "{err:?}");
    }
}
