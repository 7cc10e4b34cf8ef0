//! `EventStore` on an embedded SQLite file that several backend processes share: WAL mode, a busy
//! timeout, a versioned schema migrated at start, and `seq` allocated inside the insert's write
//! transaction. Point reads run on the calling thread; writes are committed in batches by a
//! writer thread of the process's own (`writer`: group commit); every other call runs on
//! tokio's blocking pool over a small connection pool.

mod changelog;
mod follow;
mod inline;
mod keys;
mod lead;
mod presence;
mod retention;
mod rows;
mod signal;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use futures::stream::BoxStream;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use inline::InlineReaders;
use lead::Lead;
use rows::{insert, query_events, raw_row};
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;
use writer::{Done, Op, Writer};

use super::{
    ChangeKind, Claim, Event, EventChange, EventPage, EventPatch, EventStore, Followed, JsonObject,
    KeyClaim, NewEvent, OpenError, Precondition, Result, Retention, StoreError, StoreLimits,
    TopicHead,
    presence::{Presence, PresenceReport, Reported},
    sql_condition, topic_ranges,
};
use chrono::{DateTime, Utc};
use eventsys::topics::Patterns;

/// Concurrent SQLite connections per process. Readers proceed in parallel under WAL; writers
/// serialise on the database lock whatever this is.
const POOL_SIZE: usize = 4;

/// How long a connection waits for another process's write lock before reporting Unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts at a lock another connection holds. SQLite's own busy handler backs
/// off to 100 ms sleeps, so a writer that has waited a while keeps losing the lock to newer
/// ones; polling at an even, short interval keeps write latency flat under contention (and
/// with group commit a batch's commit takes about an fsync, ~100 µs here: a 1 ms poll left
/// the other processes' writers idle most of it).
const LOCK_RETRY: Duration = Duration::from_micros(100);

/// SQLite's busy handler: polls every `LOCK_RETRY` until `BUSY_TIMEOUT` has passed since the
/// wait began (by the clock: short sleeps overshoot, so counting attempts would wait longer).
fn wait_for_lock(attempt: i32) -> bool {
    thread_local! {
        /// When this thread's connection began waiting for the lock (a connection is used by
        /// one thread at a time, and SQLite calls its handler on that thread).
        static WAITING_SINCE: std::cell::Cell<Option<std::time::Instant>> =
            const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    let since = WAITING_SINCE.with(|since| {
        if attempt == 0 {
            since.set(Some(now));
        }
        since.get().unwrap_or(now)
    });
    if now.duration_since(since) >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(LOCK_RETRY);
    true
}

/// Schema migrations; `PRAGMA user_version` records how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: events, with the two read paths indexed, and the per-topic seq counter. The counter
    // lives apart from the events so deleting a topic's newest event never lets its seq be
    // handed out again.
    "CREATE TABLE events (
         pk          INTEGER PRIMARY KEY AUTOINCREMENT,
         id          TEXT    NOT NULL UNIQUE,
         user_id     TEXT    NOT NULL,
         title       TEXT    NOT NULL,
         description TEXT    NOT NULL,
         completed   INTEGER NOT NULL,
         created_at  INTEGER NOT NULL,
         topic       TEXT    NOT NULL,
         data        TEXT,
         time        INTEGER,
         seq         INTEGER
     );
     CREATE INDEX events_by_user ON events (user_id, pk);
     CREATE UNIQUE INDEX events_by_topic_seq ON events (topic, seq) WHERE seq IS NOT NULL;
     CREATE TABLE topics (
         topic    TEXT    PRIMARY KEY,
         last_seq INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // 2: retention. Per topic, the newest seq retention dropped, so a reader from before it is
    // told of the gap (a user deleting an event is not one); published events by time, for
    // dropping by age without a scan.
    "ALTER TABLE topics ADD COLUMN dropped_through INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX events_by_time ON events (time) WHERE seq IS NOT NULL;",
    // 3: clients' idempotency keys and the outcomes answered under them.
    keys::MIGRATION,
    // 4: revisions (`If-Match`); the rows of before read as revision 1.
    "ALTER TABLE events ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;",
    // 5: users' change feeds.
    changelog::MIGRATION,
    // 6: presence: gateways and their members.
    presence::MIGRATION,
];

/// The columns every event query reads, in `rows::raw_row`'s order; a macro so that queries
/// are string literals (prepared once per connection, never formatted per call).
macro_rules! columns {
    () => {
        "pk, id, user_id, title, description, completed, created_at, topic, data, time, seq, revision"
    };
}
use columns;

/// A shared SQLite database file.
pub struct SqliteStore {
    path: PathBuf,
    /// `PRAGMA max_page_count` of every connection, from `StoreLimits::max_bytes`.
    max_pages: Option<u64>,
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
    /// Woken by this process's publishes, so its followers need not wait for their next poll.
    published: Arc<Notify>,
    /// Connections for point reads on the calling thread.
    inline: InlineReaders,
    /// Every create, update, delete and publish, committed in batches (group commit): of
    /// this process, and of the others on the file while this one leads.
    writer: Arc<Writer>,
    /// Which process's writer commits the file's writes (`lead`).
    lead: Lead,
    /// How often followers look for commits they were not told of (`follow::POLL`).
    follow_poll: Duration,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates its schema. Safe to call
    /// from several processes at once: migration runs in an exclusive write transaction.
    pub async fn open(path: PathBuf) -> Result<Self, OpenError> {
        Self::open_with(path, StoreLimits::default()).await
    }

    /// `open`, with a size limit: writes that would grow the file past it are refused as
    /// `StoreError::Full` (reads go on; deleting events makes room again).
    pub async fn open_with(path: PathBuf, limits: StoreLimits) -> Result<Self, OpenError> {
        let max_pages = limits.max_bytes.map(|bytes| (bytes / PAGE_SIZE).max(1));
        let fail = |path: &Path, reason: String| OpenError::Sqlite {
            path: path.to_owned(),
            reason,
        };
        let target = path.clone();
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> Result<Vec<Connection>, OpenError> {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| fail(&path, e.to_string()))?;
                }
                let first = initialise(&path).map_err(|e| fail(&path, e.to_string()))?;
                let mut conns = vec![first];
                // The pool's, and the writer's (the last).
                for _ in 0..POOL_SIZE {
                    conns.push(connect(&path).map_err(|e| fail(&path, e.to_string()))?);
                }
                for conn in &conns {
                    limit_size(conn, max_pages).map_err(|e| fail(&path, e.to_string()))?;
                }
                Ok(conns)
            })
            .await
            .map_err(|e| fail(&target, e.to_string()))??
        };
        let mut opened = opened;
        let writer_conn = opened.pop().expect("the writer's connection");
        let published = Arc::new(Notify::new());
        let writer = Writer::start(
            writer_conn,
            published.clone(),
            signal::Committed::open(&path),
        )
        .map_err(|e| fail(&target, e.to_string()))?;
        let writer = Arc::new(writer);
        let lead = Lead::join(&path, writer.clone(), published.clone());
        Ok(Self {
            inline: InlineReaders::new(path.clone()),
            path,
            max_pages,
            idle: Arc::new(Mutex::new(opened)),
            permits: Arc::new(Semaphore::new(POOL_SIZE)),
            published,
            writer,
            lead,
            follow_poll: follow::POLL,
        })
    }

    /// Commits `op` (`lead`: by whichever process commits the file's writes).
    async fn write(&self, op: Op) -> Result<Done> {
        self.lead.write(op, &self.writer).await
    }

    /// Runs `f` on a pooled connection on the blocking pool.
    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let permit =
            self.permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| StoreError::Unavailable {
                    op,
                    reason: "store closed".into(),
                })?;
        let idle = self.idle.clone();
        let path = self.path.clone();
        let max_pages = self.max_pages;
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            // A connection is lost only if `f` panicked while holding it; replace it.
            let mut conn = match pooled {
                Some(conn) => conn,
                None => {
                    let conn = connect(&path).map_err(|e| sql_error(op, &e))?;
                    limit_size(&conn, max_pages).map_err(|e| sql_error(op, &e))?;
                    conn
                }
            };
            let result = f(&mut conn);
            idle.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            result
        })
        .await;
        joined.map_err(|e| StoreError::Internal {
            op,
            source: Box::new(e),
        })?
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_handler(Some(wait_for_lock))?;
    // WAL lets readers run beside the one writer, across processes. FULL syncs the WAL on every
    // commit: an acknowledged write survives a crash of the process and of the machine.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// SQLite's default page size, which this store never changes.
const PAGE_SIZE: u64 = 4096;

fn limit_size(conn: &Connection, max_pages: Option<u64>) -> rusqlite::Result<()> {
    if let Some(pages) = max_pages {
        conn.pragma_update(None, "max_page_count", pages)?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error("schema version {0} is newer than this build understands ({max})", max = MIGRATIONS.len())]
    NewerSchema(usize),
}

/// Opens the first connection and migrates the schema. Processes opening a new file at the same
/// moment contend for the locks that switching it to WAL takes, and SQLite reports that as
/// "database is locked" without consulting the busy handler: such attempts are retried.
fn initialise(path: &Path) -> Result<Connection, InitError> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        let attempt = connect(path)
            .map_err(InitError::from)
            .and_then(|mut conn| migrate(&mut conn).map(|()| conn));
        match attempt {
            Err(InitError::Sql(err))
                if matches!(
                    err.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(LOCK_RETRY * 10);
            }
            other => return other,
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<(), InitError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: usize = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(InitError::NewerSchema(version));
    }
    for sql in MIGRATIONS.iter().skip(version) {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()?;
    Ok(())
}

/// A full disk (or the configured size reached) is `Full`; busy and I/O conditions are the
/// store being unavailable (worth retrying elsewhere or later); anything else is a fault in
/// this process.
fn sql_error(op: &'static str, err: &rusqlite::Error) -> StoreError {
    if err.sqlite_error_code() == Some(ErrorCode::DiskFull) {
        return StoreError::Full { op };
    }
    let transient = matches!(
        err.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
        )
    );
    // By reference (its text): one error of a batch's commit fails each of its writes.
    StoreError::from_driver(op, std::io::Error::other(err.to_string()), transient)
}

/// A second row with a unique column's value (an event id already stored).
fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

/// Inserts `new`: the event, and whether it is new; an id already stored is a repeat of the
/// request that stored it (that event), or another event's (ALREADY_EXISTS).
fn insert_new(conn: &Connection, new: NewEvent) -> Result<(Event, bool)> {
    let event = new.clone().into_event(None);
    match insert(conn, &event) {
        Ok(()) => Ok((event, true)),
        Err(err) if is_unique_violation(&err) && new.id.is_some() => {
            Ok((new.repeated(stored(conn, "create", event.id)?)?, false))
        }
        Err(err) => Err(sql_error("create", &err)),
    }
}

/// The event stored under `id`, if any.
fn find(conn: &Connection, op: &'static str, id: Uuid) -> Result<Option<Event>> {
    const SQL: &str = concat!("SELECT ", columns!(), " FROM events WHERE id = ?1");
    Ok(query_events(conn, op, SQL, params![id.to_string()])?
        .pop()
        .map(|(_, e)| e))
}

/// The event stored under `id`, which a unique violation just said exists (deleted since:
/// NOT_FOUND).
fn stored(conn: &Connection, op: &'static str, id: Uuid) -> Result<Event> {
    find(conn, op, id)?.ok_or(StoreError::NotFound)
}

// The writes, as the writer applies them: each in its own savepoint inside a batch's
// transaction (taken IMMEDIATE, so the write lock is held from the start and a counter's
// read-modify-write never meets a stale snapshot).

// Each change of an owned event is recorded in its owner's change feed in the same savepoint
// (`changelog`); they answer whether they recorded one, so followers are woken.

/// A create, its key's outcome and its change, which commit together.
fn create_in(conn: &Connection, new: NewEvent) -> Result<(Event, bool)> {
    let key = new.key.clone();
    let (event, new) = insert_new(conn, new)?;
    if let Some(key) = &key {
        keys::answer(conn, "create", key, &event)?;
    }
    if new {
        changelog::record(conn, ChangeKind::Created, &event)?;
    }
    let recorded = new && !event.user_id.is_empty();
    Ok((event, recorded))
}

fn update_in(
    conn: &Connection,
    id: Uuid,
    owner: Option<String>,
    patch: EventPatch,
    when: Precondition,
) -> Result<(Event, bool)> {
    const SQL: &str = concat!(
        "UPDATE events SET title = ?3, description = ?4, completed = ?5, revision = revision + 1 ",
        "WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2) AND (?6 IS NULL OR revision = ?6) ",
        "RETURNING ",
        columns!()
    );
    let EventPatch {
        title,
        description,
        completed,
    } = &patch;
    let wanted = when
        .revision()
        .map(|r| i64::try_from(r).unwrap_or(i64::MAX));
    let args = params![id.to_string(), owner, title, description, completed, wanted];
    let raw = conn
        .prepare_cached(SQL)
        .and_then(|mut stmt| stmt.query_row(args, raw_row))
        .optional()
        .map_err(|e| sql_error("update", &e))?;
    match raw {
        Some(raw) => {
            let (_, event) = raw.into_event()?;
            changelog::record(conn, ChangeKind::Updated, &event)?;
            let recorded = !event.user_id.is_empty();
            Ok((event, recorded))
        }
        // Under the write lock still: what it found is what the update met.
        None => Ok((
            when.refused(find_owned(conn, "update", id, owner)?, &patch)?,
            false,
        )),
    }
}

fn delete_in(
    conn: &Connection,
    id: Uuid,
    owner: Option<String>,
    when: Precondition,
) -> Result<bool> {
    const SQL: &str = concat!(
        "DELETE FROM events WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2) ",
        "AND (?3 IS NULL OR revision = ?3) RETURNING ",
        columns!()
    );
    let wanted = when
        .revision()
        .map(|r| i64::try_from(r).unwrap_or(i64::MAX));
    let deleted = query_events(conn, "delete", SQL, params![id.to_string(), owner, wanted])?;
    let Some((_, event)) = deleted.into_iter().next() else {
        let current = find_owned(conn, "delete", id, owner)?;
        return Err(when.unmet(current.map(|e| e.revision)));
    };
    changelog::record(conn, ChangeKind::Deleted, &event)?;
    Ok(!event.user_id.is_empty())
}

/// The event `id` if it is `owner`'s (or `owner` is `None`).
fn find_owned(
    conn: &Connection,
    op: &'static str,
    id: Uuid,
    owner: Option<String>,
) -> Result<Option<Event>> {
    Ok(find(conn, op, id)?.filter(|e| owner.is_none_or(|owner| e.user_id == owner)))
}

/// A publish: the topic's next seq, the event and its key's outcome; the event, and whether it
/// is new (not a repeat of a publish that committed, which gets that one's event and seq).
fn publish_in(conn: &Connection, new: NewEvent) -> Result<(Event, bool)> {
    let fail = |e| sql_error("publish", &e);
    // Under the write lock, so no other process can store this id meanwhile.
    if let Some(id) = new.id
        && let Some(existing) = find(conn, "publish", id)?
    {
        let event = new.repeated(existing)?;
        if let Some(key) = &new.key {
            keys::answer(conn, "publish", key, &event)?;
        }
        return Ok((event, false));
    }
    let seq: i64 = conn
        .prepare_cached(
            "INSERT INTO topics (topic, last_seq) VALUES (?1, 1)
             ON CONFLICT (topic) DO UPDATE SET last_seq = last_seq + 1
             RETURNING last_seq",
        )
        .and_then(|mut stmt| stmt.query_row(params![new.topic], |row| row.get(0)))
        .map_err(fail)?;
    let key = new.key.clone();
    let event = new.into_event(Some(seq as u64));
    insert(conn, &event).map_err(fail)?;
    if let Some(key) = &key {
        keys::answer(conn, "publish", key, &event)?;
    }
    Ok((event, true))
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn create(&self, new: NewEvent) -> Result<Event> {
        self.write(Op::Create(new)).await?.into_event("create")
    }

    async fn get(&self, id: Uuid, owner: Option<String>) -> Result<Event> {
        let read = move |conn: &Connection| {
            const SQL: &str = concat!(
                "SELECT ",
                columns!(),
                " FROM events WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2)"
            );
            let mut text = Uuid::encode_buffer();
            let id: &str = id.hyphenated().encode_lower(&mut text);
            query_events(conn, "get", SQL, params![id, owner])?
                .pop()
                .map(|(_, e)| e)
                .ok_or(StoreError::NotFound)
        };
        match self.inline.read(&read) {
            Some(result) => result,
            None => self.run("get", move |conn| read(conn)).await,
        }
    }

    async fn list(
        &self,
        owner: Option<String>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<EventPage> {
        let after = super::row_after(cursor)?;
        self.run("list", move |conn| {
            const SQL: &str = concat!(
                "SELECT ",
                columns!(),
                " FROM events WHERE (?1 IS NULL OR user_id = ?1) AND pk > ?2 ORDER BY pk LIMIT ?3"
            );
            // One extra row tells whether another page follows.
            let mut rows = query_events(conn, "list", SQL, params![owner, after, limit + 1])?;
            let next = if rows.len() > limit {
                rows.truncate(limit);
                rows.last().map(|(pk, _)| format!("{pk:024x}"))
            } else {
                None
            };
            Ok(EventPage {
                events: rows.into_iter().map(|(_, e)| e).collect(),
                next,
            })
        })
        .await
    }

    async fn update(
        &self,
        id: Uuid,
        owner: Option<String>,
        patch: EventPatch,
        when: Precondition,
    ) -> Result<Event> {
        let op = Op::Update {
            id,
            owner,
            patch,
            when,
        };
        self.write(op).await?.into_event("update")
    }

    async fn delete(&self, id: Uuid, owner: Option<String>, when: Precondition) -> Result<()> {
        match self.write(Op::Delete { id, owner, when }).await? {
            Done::Deleted => Ok(()),
            Done::Event(_) => Err(StoreError::Internal {
                op: "delete",
                source: "the writer answered with an event".into(),
            }),
        }
    }

    async fn publish(&self, new: NewEvent) -> Result<Event> {
        self.write(Op::Publish(new)).await?.into_event("publish")
    }

    async fn events_after(&self, topic: &str, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        let topic = topic.to_owned();
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        self.run("events_after", move |conn| {
            const SQL: &str = concat!(
                "SELECT ",
                columns!(),
                " FROM events WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            );
            let rows = query_events(conn, "events_after", SQL, params![topic, after, limit])?;
            Ok(rows.into_iter().map(|(_, e)| e).collect())
        })
        .await
    }

    async fn changes_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventChange>> {
        let user = user.to_owned();
        self.run("changes_after", move |conn| {
            changelog::after(conn, &user, after, limit)
        })
        .await
    }

    async fn changes_dropped_through(&self, user: &str) -> Result<u64> {
        if let Some(result) = self
            .inline
            .read(|conn| retention::dropped_through(conn, &changelog::TRIMMED, user))
        {
            return result;
        }
        let user = user.to_owned();
        self.run("changes_dropped_through", move |conn| {
            retention::dropped_through(conn, &changelog::TRIMMED, &user)
        })
        .await
    }

    async fn follow(&self) -> Result<BoxStream<'static, Result<Followed>>> {
        follow::follow(self.path.clone(), self.published.clone(), self.follow_poll).await
    }

    /// A batch of each: topics', then change feeds'.
    async fn compact(&self, retention: Retention, batch: usize) -> Result<usize> {
        self.run("compact", move |conn| {
            let topics = retention::compact(conn, &retention::TOPICS, retention, batch)?;
            let feeds = retention::compact(conn, &changelog::TRIMMED, retention, batch)?;
            Ok(topics + feeds)
        })
        .await
    }

    async fn dropped_through(&self, topic: &str) -> Result<u64> {
        if let Some(result) = self
            .inline
            .read(|conn| retention::dropped_through(conn, &retention::TOPICS, topic))
        {
            return result;
        }
        let topic = topic.to_owned();
        self.run("dropped_through", move |conn| {
            retention::dropped_through(conn, &retention::TOPICS, &topic)
        })
        .await
    }

    async fn topics(&self, patterns: &Patterns, limit: usize) -> Result<Vec<TopicHead>> {
        let (condition, values) =
            sql_condition(&topic_ranges(patterns), "topic", 1, |n| format!("?{n}"));
        let sql = format!(
            "SELECT topic, last_seq, dropped_through FROM topics WHERE {condition}
             ORDER BY topic LIMIT {limit}"
        );
        self.run("topics", move |conn| {
            let mut statement = conn
                .prepare_cached(&sql)
                .map_err(|e| sql_error("topics", &e))?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(&values), |row| {
                    Ok(TopicHead {
                        topic: row.get(0)?,
                        last_seq: row.get::<_, i64>(1)?.max(0) as u64,
                        dropped_through: row.get::<_, i64>(2)?.max(0) as u64,
                    })
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
            rows.map_err(|e| sql_error("topics", &e))
        })
        .await
    }

    async fn report_presence(&self, report: PresenceReport) -> Result<Reported> {
        let reported = self
            .run("report_presence", move |conn| {
                presence::report(conn, report)
            })
            .await?;
        if !reported.events.is_empty() {
            // This process's follower reads them now, not at its next poll.
            self.published.notify_one();
        }
        Ok(reported)
    }

    async fn expire_presence(&self, cutoff: DateTime<Utc>, batch: usize) -> Result<Vec<Event>> {
        let events = self
            .run("expire_presence", move |conn| {
                presence::expire(conn, cutoff, batch)
            })
            .await?;
        if !events.is_empty() {
            self.published.notify_one();
        }
        Ok(events)
    }

    async fn presence(
        &self,
        topic: &str,
        alive_since: DateTime<Utc>,
        subjects: bool,
    ) -> Result<Presence> {
        let topic = topic.to_owned();
        self.run("presence", move |conn| {
            presence::presence(conn, &topic, alive_since, subjects)
        })
        .await
    }

    async fn claim(&self, claim: &KeyClaim, id: Uuid) -> Result<Claim> {
        let claim = claim.clone();
        self.run("claim", move |conn| keys::claim(conn, &claim, id))
            .await
    }

    async fn purge_keys(&self, batch: usize) -> Result<usize> {
        self.run("purge_keys", move |conn| keys::purge(conn, batch))
            .await
    }

    /// An embedded file has no server to lose: it answers while the process runs. (Asking a
    /// connection would queue the probe behind the writes under load and report a busy store
    /// as gone; a full or failing disk is reported by the writes themselves.)
    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn commits_every_write(&self) -> bool {
        self.lead.leading()
    }
}

#[cfg(test)]
mod tests;
