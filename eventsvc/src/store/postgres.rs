//! `EventStore` on PostgreSQL, for many backends on many hosts sharing one database. The design
//! is SQLite's: a per-topic counter row incremented inside the publish's transaction (its row
//! lock orders a topic's publishes, so `seq` order is commit order), idempotency keys answered
//! in the write's transaction, retention recording the newest `seq` it dropped. The change feed
//! is `LISTEN`/`NOTIFY` (`follow`).
//!
//! The driver is `tokio-postgres` with a `deadpool` pool: async, no server needed to compile,
//! and its connection hands `NOTIFY` messages to the caller, which the feed needs. A backend
//! killed in a transaction holds nothing: the server aborts it when the connection drops.

mod batch;
mod changelog;
mod changes;
mod connect;
mod follow;
mod keys;
mod presence;
mod retention;
mod rows;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::stream::BoxStream;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::{
    Claim, Event, EventChange, EventPage, EventPatch, EventStore, Followed, KeyClaim, NewEvent,
    OpenError, Precondition, Result, Retention, StoreError, TopicHead,
    presence::{Presence, PresenceReport, Reported},
    sql_condition, topic_ranges,
};
use batch::Kind;
use chrono::{DateTime, Utc};
use connect::{CONNECT_TIMEOUT, Connect};
use eventsys::topics::Patterns;
use rows::{COLUMNS, Written, to_event};

/// Connections per process.
const POOL_SIZE: usize = 16;
/// The channel publishes notify on.
const CHANNEL: &str = "events_published";

/// Schema migrations, applied in order; `schema_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: events (times in milliseconds, `data` as JSON text, exactly as given; free text as
    // UTF-8 bytes, since PostgreSQL's TEXT cannot hold U+0000 and JSON strings can), the per-topic
    // counters (apart from the events, so deleting a topic's newest never lets its seq be
    // handed out again), and idempotency keys.
    "CREATE TABLE events (
         pk          BIGSERIAL PRIMARY KEY,
         id          UUID    NOT NULL UNIQUE,
         user_id     BYTEA   NOT NULL,
         title       BYTEA   NOT NULL,
         description BYTEA   NOT NULL,
         completed   BOOLEAN NOT NULL,
         created_at  BIGINT  NOT NULL,
         topic       TEXT    NOT NULL,
         data        TEXT,
         time        BIGINT,
         seq         BIGINT
     );
     CREATE UNIQUE INDEX events_by_topic_seq ON events (topic, seq) WHERE seq IS NOT NULL;
     CREATE INDEX events_by_user ON events (user_id, pk);
     CREATE INDEX events_by_time ON events (time) WHERE seq IS NOT NULL;
     CREATE TABLE topics (
         topic           TEXT   PRIMARY KEY,
         last_seq        BIGINT NOT NULL,
         dropped_through BIGINT NOT NULL DEFAULT 0
     );
     CREATE TABLE idempotency_keys (
         scope       BYTEA  NOT NULL,
         key         TEXT   NOT NULL,
         fingerprint BYTEA  NOT NULL,
         event_id    TEXT   NOT NULL,
         lease_until BIGINT,
         outcome     TEXT,
         expires_at  BIGINT NOT NULL,
         PRIMARY KEY (scope, key)
     );
     CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);",
    // 2: a publish in one statement. The topic's row is locked from its counter's increment
    // to commit; inside one call that is the server's own work, never a round trip to a
    // backend, so a backend cut off mid-publish cannot leave the lock held (and its topic's
    // publishes waiting) on a session nobody will finish. The keyed outcome is the event as
    // answered (`outcome::encode_up_to_seq` and the seq); `EV409`: the key is another
    // request's now. Notifies `seq:topic` (`follow`).
    "CREATE FUNCTION publish_event(
         p_id UUID, p_user_id BYTEA, p_title BYTEA, p_description BYTEA, p_completed BOOLEAN,
         p_created_at BIGINT, p_topic TEXT, p_data TEXT, p_time BIGINT,
         p_key_scope BYTEA, p_key TEXT, p_outcome_head TEXT, p_channel TEXT
     ) RETURNS BIGINT LANGUAGE plpgsql AS $$
     DECLARE
         new_seq BIGINT;
     BEGIN
         INSERT INTO topics (topic, last_seq) VALUES (p_topic, 1)
             ON CONFLICT (topic) DO UPDATE SET last_seq = topics.last_seq + 1
             RETURNING last_seq INTO new_seq;
         INSERT INTO events
             (id, user_id, title, description, completed, created_at, topic, data, time, seq)
             VALUES (p_id, p_user_id, p_title, p_description, p_completed, p_created_at,
                     p_topic, p_data, p_time, new_seq);
         IF p_key IS NOT NULL THEN
             UPDATE idempotency_keys
                 SET outcome = p_outcome_head || new_seq || '}', lease_until = NULL
                 WHERE scope = p_key_scope AND key = p_key AND event_id = p_id::TEXT
                   AND outcome IS NULL;
             IF NOT FOUND THEN
                 RAISE EXCEPTION 'the idempotency key is another request''s'
                     USING ERRCODE = 'EV409';
             END IF;
         END IF;
         PERFORM pg_notify(p_channel, new_seq || ':' || p_topic);
         RETURN new_seq;
     END $$;",
    // 3: creates and publishes in batches (group commit): each element in a subtransaction
    // of its own, a publish through `publish_event`, a create as its insert and its key's
    // answer (`p_outcome_heads` and a seq of 0), so one whose id is taken (`taken`) or whose
    // key is another request's (`key`) fails alone; anything else fails the call, and with it
    // the batch. One round trip and one commit for every write a backend has queued.
    "CREATE FUNCTION write_events(
         p_publish BOOLEAN[], p_ids UUID[], p_user_ids BYTEA[], p_titles BYTEA[],
         p_descriptions BYTEA[], p_completed BOOLEAN[], p_created_at BIGINT[], p_topics TEXT[],
         p_data TEXT[], p_times BIGINT[], p_key_scopes BYTEA[], p_keys TEXT[],
         p_outcome_heads TEXT[], p_channel TEXT
     ) RETURNS TABLE (out_seq BIGINT, out_failure TEXT) LANGUAGE plpgsql AS $$
     BEGIN
         FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
             BEGIN
                 IF p_publish[i] THEN
                     out_seq := publish_event(p_ids[i], p_user_ids[i], p_titles[i],
                         p_descriptions[i], p_completed[i], p_created_at[i], p_topics[i],
                         p_data[i], p_times[i], p_key_scopes[i], p_keys[i],
                         p_outcome_heads[i], p_channel);
                 ELSE
                     INSERT INTO events (id, user_id, title, description, completed,
                                         created_at, topic, data, time, seq)
                         VALUES (p_ids[i], p_user_ids[i], p_titles[i], p_descriptions[i],
                                 p_completed[i], p_created_at[i], p_topics[i], p_data[i],
                                 NULL, NULL);
                     IF p_keys[i] IS NOT NULL THEN
                         UPDATE idempotency_keys
                             SET outcome = p_outcome_heads[i] || '0}', lease_until = NULL
                             WHERE scope = p_key_scopes[i] AND key = p_keys[i]
                               AND event_id = p_ids[i]::TEXT AND outcome IS NULL;
                         IF NOT FOUND THEN
                             RAISE EXCEPTION 'the idempotency key is another request''s'
                                 USING ERRCODE = 'EV409';
                         END IF;
                     END IF;
                     out_seq := 0;
                 END IF;
                 out_failure := NULL;
             EXCEPTION
                 WHEN unique_violation THEN
                     out_seq := NULL;
                     out_failure := 'taken';
                 WHEN SQLSTATE 'EV409' THEN
                     out_seq := NULL;
                     out_failure := 'key';
             END;
             RETURN NEXT;
         END LOOP;
     END $$;",
    // 4: revisions (`If-Match`); the rows of before read as revision 1.
    "ALTER TABLE events ADD COLUMN revision BIGINT NOT NULL DEFAULT 1;",
    // 5: users' change feeds (`changelog`).
    changelog::MIGRATION,
    // 6: presence: gateways and their members (`presence`).
    presence::MIGRATION,
];

/// A full disk is `Full`; a lost connection, a server shutting down or a conflict to retry is
/// the store being unavailable (the gateway retries elsewhere or later); anything else a fault.
fn pg_error(op: &'static str, err: impl std::borrow::Borrow<tokio_postgres::Error>) -> StoreError {
    // By reference too: one error of a batch's call fails each of its writes.
    let err = err.borrow();
    let code = err.code().cloned();
    if code == Some(SqlState::DISK_FULL) {
        return StoreError::Full { op };
    }
    let unavailable = match &code {
        // Class 08 (connection), 57 (operator intervention: shutdown), 40 (a conflict to
        // retry), 53 (insufficient resources).
        Some(code) => matches!(&code.code()[..2], "08" | "57" | "40" | "53"),
        // No answer from the server: the connection is gone (an error of this side, such as a
        // parameter it cannot encode, is a fault).
        None => {
            err.is_closed()
                || std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>())
        }
    };
    let reason = with_sources(err);
    if unavailable {
        StoreError::Unavailable { op, reason }
    } else {
        StoreError::Internal {
            op,
            source: reason.into(),
        }
    }
}

/// `err` and its sources: the driver's own text is a few words ("db error", "invalid connection
/// string"); what the server or the parser said is its source.
fn with_sources(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// No connection to be had: the server is unreachable or every connection is busy.
fn pool_error(op: &'static str, err: deadpool_postgres::PoolError) -> StoreError {
    match err {
        deadpool_postgres::PoolError::Backend(err) => pg_error(op, err),
        other => StoreError::Unavailable {
            op,
            reason: other.to_string(),
        },
    }
}

/// Events in a PostgreSQL database. No lock of its own: every rule that spans rows is a
/// transaction on the server, so several backends on one database agree.
pub struct PostgresStore {
    pool: Pool,
    /// What `follow` and `ping` connect with: connections of their own, outside the pool.
    connect: Connect,
    /// Every create and publish, sent in batches (group commit).
    writer: batch::Writer,
    /// Every update and delete, applied in batches.
    changes: crate::store::changes::Changes,
}

impl PostgresStore {
    /// Connects, migrates the schema (one backend at a time: an advisory lock), and returns a
    /// store ready to serve; fails with a one-line reason.
    pub async fn open(uri: &str) -> Result<Self, OpenError> {
        let fail = |reason: String| OpenError::Postgres { reason };
        let connect = Connect::from_uri(uri).map_err(fail)?;
        let manager = Manager::from_config(
            connect.config.clone(),
            connect.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let writer = batch::Writer::start(pool.clone(), CHANNEL);
        let changes = changes::start(pool.clone());
        let store = Self {
            pool,
            connect,
            writer,
            changes,
        };
        store
            .migrate()
            .await
            .map_err(|e| fail(format!("cannot reach or migrate the database: {e}")))?;
        tracing::info!("PostgreSQL store ready");
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let fail = |e| pg_error("migrate", e);
        let mut client = self.client("migrate").await?;
        let tx = client.transaction().await.map_err(fail)?;
        // Backends starting together take turns; the first applies, the others find it done.
        tx.execute("SELECT pg_advisory_xact_lock(7340134621)", &[])
            .await
            .map_err(fail)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INT NOT NULL)")
            .await
            .map_err(fail)?;
        let version: i32 = tx
            .query_opt("SELECT version FROM schema_version", &[])
            .await
            .map_err(fail)?
            .map_or(0, |row| row.get(0));
        let applied = usize::try_from(version).unwrap_or(usize::MAX);
        if applied > MIGRATIONS.len() {
            return Err(StoreError::Internal {
                op: "migrate",
                source: format!(
                    "schema version {applied} is newer than this build understands ({})",
                    MIGRATIONS.len()
                )
                .into(),
            });
        }
        for sql in &MIGRATIONS[applied..] {
            tx.batch_execute(sql).await.map_err(fail)?;
        }
        let now = MIGRATIONS.len() as i32;
        tx.execute("DELETE FROM schema_version", &[])
            .await
            .map_err(fail)?;
        tx.execute("INSERT INTO schema_version VALUES ($1)", &[&now])
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    async fn client(&self, op: &'static str) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| pool_error(op, e))
    }

    /// The event stored under `id`, if any.
    async fn find(
        client: &impl deadpool_postgres::GenericClient,
        op: &'static str,
        id: Uuid,
    ) -> Result<Option<Event>> {
        let sql = format!("SELECT {COLUMNS} FROM events WHERE id = $1");
        let row = client
            .query_opt(&sql, &[&id])
            .await
            .map_err(|e| pg_error(op, e))?;
        row.as_ref().map(to_event).transpose()
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn create(&self, new: NewEvent) -> Result<Event> {
        let event = new.clone().into_event(None);
        let written = self
            .writer
            .write(Kind::Create, event.clone(), new.size(), new.key.clone())
            .await?;
        match written {
            Written::Stored(_) => Ok(event),
            // The id is taken: a repeat of the request that stored it, or another event's.
            Written::Taken => {
                let client = self.client("create").await?;
                let stored = Self::find(&client, "create", event.id).await?;
                new.repeated(stored.ok_or(StoreError::NotFound)?)
            }
            Written::KeyTaken => Err(StoreError::KeyInFlight),
        }
    }

    async fn get(&self, id: Uuid, owner: Option<String>) -> Result<Event> {
        let client = self.client("get").await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE id = $1 AND ($2::BYTEA IS NULL OR user_id = $2)"
        );
        let row = client
            .query_opt(&sql, &[&id, &owner.map(String::into_bytes)])
            .await
            .map_err(|e| pg_error("get", e))?;
        to_event(&row.ok_or(StoreError::NotFound)?)
    }

    async fn list(
        &self,
        owner: Option<String>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<EventPage> {
        let after = super::row_after(cursor)?;
        let client = self.client("list").await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE ($1::BYTEA IS NULL OR user_id = $1) AND pk > $2
             ORDER BY pk LIMIT $3"
        );
        // One extra row tells whether another page follows.
        let wanted = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let mut rows = client
            .query(&sql, &[&owner.map(String::into_bytes), &after, &wanted])
            .await
            .map_err(|e| pg_error("list", e))?;
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(|row| format!("{:024x}", row.get::<_, i64>("pk")))
        } else {
            None
        };
        Ok(EventPage {
            events: rows.iter().map(to_event).collect::<Result<_>>()?,
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
        self.changes.update(id, owner, patch, when).await
    }

    async fn delete(&self, id: Uuid, owner: Option<String>, when: Precondition) -> Result<()> {
        self.changes.delete(id, owner, when).await
    }

    async fn publish(&self, new: NewEvent) -> Result<Event> {
        let event = new.clone().into_event(Some(0));
        let written = self
            .writer
            .write(Kind::Publish, event.clone(), new.size(), new.key.clone())
            .await?;
        match written {
            Written::Stored(seq) => Ok(Event { seq, ..event }),
            // The id is stored (its publish spent no seq): a repeat of a publish that
            // committed gets that one's event and seq, and its key that answer.
            Written::Taken => {
                let client = self.client("publish").await?;
                let stored = Self::find(&client, "publish", event.id).await?;
                let event = new.repeated(stored.ok_or(StoreError::NotFound)?)?;
                if let Some(key) = &new.key {
                    keys::answer(&client, "publish", key, &event).await?;
                }
                Ok(event)
            }
            Written::KeyTaken => Err(StoreError::KeyInFlight),
        }
    }

    async fn events_after(&self, topic: &str, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        let client = self.client("events_after").await?;
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE topic = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        let rows = client
            .query(&sql, &[&topic, &after, &limit])
            .await
            .map_err(|e| pg_error("events_after", e))?;
        rows.iter().map(to_event).collect()
    }

    async fn follow(&self) -> Result<BoxStream<'static, Result<Followed>>> {
        follow::follow(&self.connect, self.pool.clone()).await
    }

    async fn changes_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventChange>> {
        let client = self.client("changes_after").await?;
        changelog::after(&client, user, after, limit).await
    }

    async fn changes_dropped_through(&self, user: &str) -> Result<u64> {
        let client = self.client("changes_dropped_through").await?;
        retention::dropped_through(&client, &changelog::TRIMMED, &user.as_bytes()).await
    }

    /// A batch of each: topics', then change feeds'.
    async fn compact(&self, retention: Retention, batch: usize) -> Result<usize> {
        let mut client = self.client("compact").await?;
        let topics =
            retention::compact::<String>(&mut client, &retention::TOPICS, retention, batch).await?;
        let feeds =
            retention::compact::<Vec<u8>>(&mut client, &changelog::TRIMMED, retention, batch)
                .await?;
        Ok(topics + feeds)
    }

    async fn dropped_through(&self, topic: &str) -> Result<u64> {
        let client = self.client("dropped_through").await?;
        retention::dropped_through(&client, &retention::TOPICS, &topic).await
    }

    async fn topics(&self, patterns: &Patterns, limit: usize) -> Result<Vec<TopicHead>> {
        // Byte order, whatever the database's collation: a range of names is one under it.
        let (condition, values) =
            sql_condition(&topic_ranges(patterns), "topic COLLATE \"C\"", 1, |n| {
                format!("${n}")
            });
        let sql = format!(
            "SELECT topic, last_seq, dropped_through FROM topics WHERE {condition}
             ORDER BY topic COLLATE \"C\" LIMIT {limit}"
        );
        let client = self.client("topics").await?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = client
            .query(&sql, &params)
            .await
            .map_err(|e| pg_error("topics", e))?;
        Ok(rows
            .iter()
            .map(|row| TopicHead {
                topic: row.get(0),
                last_seq: row.get::<_, i64>(1).max(0) as u64,
                dropped_through: row.get::<_, i64>(2).max(0) as u64,
            })
            .collect())
    }

    async fn report_presence(&self, report: PresenceReport) -> Result<Reported> {
        let mut client = self.client("report_presence").await?;
        presence::report(&mut client, report).await
    }

    async fn expire_presence(&self, cutoff: DateTime<Utc>, batch: usize) -> Result<Vec<Event>> {
        let mut client = self.client("expire_presence").await?;
        presence::expire(&mut client, cutoff, batch).await
    }

    async fn presence(
        &self,
        topic: &str,
        alive_since: DateTime<Utc>,
        subjects: bool,
    ) -> Result<Presence> {
        let client = self.client("presence").await?;
        presence::presence(&client, topic, alive_since, subjects).await
    }

    async fn claim(&self, claim: &KeyClaim, id: Uuid) -> Result<Claim> {
        let mut client = self.client("claim").await?;
        keys::claim(&mut client, claim, id).await
    }

    async fn purge_keys(&self, batch: usize) -> Result<usize> {
        let client = self.client("purge_keys").await?;
        keys::purge(&client, batch).await
    }

    async fn ping(&self) -> Result<()> {
        // A connection of its own: whether the server answers, not whether the pool has one
        // free under load.
        let (client, connection) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.connect.config.connect(self.connect.tls.clone()),
        )
        .await
        .map_err(|_| StoreError::Unavailable {
            op: "ping",
            reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
        })?
        .map_err(|e| pg_error("ping", e))?;
        let connection = tokio::spawn(connection);
        let answered = client.simple_query("SELECT 1").await;
        drop(client);
        let _ = connection.await;
        answered.map(drop).map_err(|e| pg_error("ping", e))
    }
}
