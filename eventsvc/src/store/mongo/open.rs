//! Opening the store: connect, learn whether the server is a replica set, create the
//! collections' indexes, number the old service's published events, all before serving, with
//! a one-line reason when any of it fails.

use std::time::Duration;

use mongodb::{
    Client, IndexModel,
    bson::{Document, doc},
    error::ErrorKind,
    options::{
        Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, TransactionOptions,
        WriteConcern,
    },
};

use super::{
    COUNTERS, DEFAULT_DATABASE, EVENTS, KEYS, MongoStore, changelog, errors::one_line, legacy,
    presence, sessions::Registry,
};
use crate::store::OpenError;

/// How long an operation waits for a server to talk to before it fails as unavailable: well
/// inside the gateway's request deadline (10 s by default), so a database that went away gives
/// 503s rather than timeouts.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);

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
        // The health probe's own connection: it asks whether the server answers, not whether
        // this process's pool has a connection free under load.
        let mut probe_options = options.clone();
        probe_options.max_pool_size = Some(1);
        let client = Client::with_options(options).map_err(|e| fail(one_line(&e)))?;
        let probe = Client::with_options(probe_options)
            .map_err(|e| fail(one_line(&e)))?
            .database(&database_name);
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
        // Created up front: creating a collection inside a transaction (the first publish,
        // the first change recorded) needs MongoDB 4.4 or later. "Already exists" is fine.
        for name in [
            COUNTERS,
            changelog::CHANGES,
            changelog::HEADS,
            presence::GATEWAYS,
            presence::MEMBERS,
            presence::SUBJECTS,
        ] {
            if let Err(err) = database.create_collection(name).await
                && !matches!(&*err.kind, ErrorKind::Command(c) if c.code == 48)
            {
                return Err(fail(format!("cannot create {name}: {}", one_line(&err))));
            }
        }
        let feeds = changelog::Feeds {
            changes: database.collection(changelog::CHANGES),
            heads: database.collection(changelog::HEADS),
        };
        feeds
            .changes
            .create_indexes(changelog::Feeds::indexes())
            .await
            .map_err(|e| fail(format!("cannot create indexes: {}", one_line(&e))))?;
        let feeds = replicated.then_some(feeds);
        let presence_indexes = [
            (presence::MEMBERS, doc! {"gateway": 1}),
            (presence::MEMBERS, doc! {"topic": 1}),
            (presence::GATEWAYS, doc! {"renewedAt": 1}),
        ];
        for (name, keys) in presence_indexes {
            database
                .collection::<Document>(name)
                .create_index(IndexModel::builder().keys(keys).build())
                .await
                .map_err(|e| fail(format!("cannot create indexes: {}", one_line(&e))))?;
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
        let publishes = super::queue::PublishQueues::new(super::publish::Publishing {
            events: events.clone(),
            counters: counters.clone(),
            hints,
        });
        // The writing tasks' own sessions (creates, changes), registered with a heartbeat.
        let (registry, sessions) = match replicated {
            true => {
                let (registry, sessions) = Registry::start(&client, &database, 3)
                    .await
                    .map_err(|e| fail(format!("cannot register sessions: {}", one_line(&e))))?;
                (Some(registry), sessions)
            }
            false => (None, Vec::new()),
        };
        let mut sessions = sessions.into_iter();
        let (creates_session, changes_session, presence_session) =
            (sessions.next(), sessions.next(), sessions.next());
        let presences = presence_session.map(|session| {
            presence::Presences::new(
                &database,
                events.clone(),
                counters.clone(),
                session,
                transaction.clone(),
            )
        });
        let changes = feeds.as_ref().zip(changes_session).map(|(feeds, session)| {
            super::changes::start(super::changes::Changing {
                database: database.clone(),
                events: events.clone(),
                transaction: transaction.clone(),
                feeds: feeds.clone(),
                session,
            })
        });
        let recording =
            feeds
                .as_ref()
                .zip(creates_session)
                .map(|(feeds, session)| super::batch::Recording {
                    session,
                    feeds: feeds.clone(),
                    transaction: transaction.clone(),
                });
        Ok(Self {
            probe,
            presences,
            changes,
            feeds,
            _sessions: registry,
            creates: super::batch::Creates::start(events.clone(), recording),
            events,
            counters,
            keys,
            replicated,
            publishes,
        })
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
}
