//! The storage boundary: the `EventStore` trait every backend talks to, the domain types it
//! speaks, its typed errors, and the store URI that picks an implementation at start-up.

mod batching;
mod changes;
pub mod mongo;
mod outcome;
mod postgres;
pub mod presence;
pub mod sqlite;
mod timed;
mod topics;

use std::{path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use eventsys::topics::Patterns;
use futures::stream::BoxStream;
use uuid::Uuid;

pub use mongo::MongoStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub(crate) use timed::TimedStore;
pub use topics::TopicHead;
pub(crate) use topics::{TopicRange, ranges as topic_ranges, sql_condition};

pub use eventsys::json::JsonObject;

/// A stored event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub id: Uuid,
    pub user_id: String,
    pub title: String,
    pub description: String,
    pub completed: bool,
    pub created_at: DateTime<Utc>,
    /// Empty when the event is not on a topic.
    pub topic: String,
    pub data: Option<JsonObject>,
    /// Set on published events only.
    pub time: Option<DateTime<Utc>>,
    /// Position in the topic's stream; 0 for events that were not published.
    pub seq: u64,
    /// 1 when stored, one more with each update: what `If-Match` names.
    pub revision: u64,
}

/// What a change did to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

impl ChangeKind {
    /// As the stores keep it.
    pub(crate) fn code(self) -> i64 {
        match self {
            ChangeKind::Created => 1,
            ChangeKind::Updated => 2,
            ChangeKind::Deleted => 3,
        }
    }

    pub(crate) fn from_code(code: i64) -> Option<ChangeKind> {
        match code {
            1 => Some(ChangeKind::Created),
            2 => Some(ChangeKind::Updated),
            3 => Some(ChangeKind::Deleted),
            _ => None,
        }
    }
}

/// One entry of a user's change feed: a create, update or delete of one of their events,
/// recorded in the change's own transaction (so a committed change always has one, a
/// rolled-back one never).
#[derive(Debug, Clone, PartialEq)]
pub struct EventChange {
    /// Its place in its user's feed: strictly increasing per user, from 1, never reused.
    pub position: u64,
    pub kind: ChangeKind,
    /// When it was committed (milliseconds).
    pub time: DateTime<Utc>,
    /// The event after the change; for a delete, what identifies it (`EventChange::kept`).
    /// Its `user_id` is the feed's.
    pub event: Event,
}

impl EventChange {
    /// What a feed keeps of `event` for a change of `kind`: all of it after a create or an
    /// update; after a delete only what identifies it (id, owner, creation time and the
    /// revision it had), so that deleting an event frees its content (a full store gets room
    /// back) and a feed never holds a deleted event's text.
    pub fn kept(kind: ChangeKind, event: &Event) -> Event {
        match kind {
            ChangeKind::Created | ChangeKind::Updated => event.clone(),
            ChangeKind::Deleted => Event {
                id: event.id,
                user_id: event.user_id.clone(),
                title: String::new(),
                description: String::new(),
                completed: false,
                created_at: event.created_at,
                topic: String::new(),
                data: None,
                time: None,
                seq: 0,
                revision: event.revision,
            },
        }
    }
}

/// What the store's follower sees committed, in commit order.
#[derive(Debug, Clone, PartialEq)]
pub enum Followed {
    /// An event published on a topic.
    Published(Event),
    /// An entry of a user's change feed.
    Changed(EventChange),
}

/// What a client supplies to create or publish an event; the store assigns the rest.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewEvent {
    /// The id the caller chose (stored at most once); `None`: a new one.
    pub id: Option<Uuid>,
    pub user_id: String,
    pub title: String,
    pub description: String,
    pub completed: bool,
    pub topic: String,
    pub data: Option<JsonObject>,
    /// The idempotency key this write claimed (`EventStore::claim`): the write records its
    /// outcome under the key in the same transaction, or fails `KeyInFlight` if the claim was
    /// lost meanwhile.
    pub key: Option<KeyClaim>,
}

/// A write's claim on a client's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyClaim {
    /// Whose key: keys of different callers never meet.
    pub scope: String,
    pub key: String,
    /// SHA-256 of what the request asks (method and content, not the event id): a repeat must
    /// ask the same.
    pub fingerprint: [u8; 32],
    /// How long the outcome is kept for repeats.
    pub ttl: Duration,
    /// How long an unfinished claim holds the key: the longest a call may run, after which
    /// its request is known to be over (answered or abandoned).
    pub lease: Duration,
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key is this write's now: go ahead (with `NewEvent::key` set).
    Fresh,
    /// The key's request was answered: the event as it was answered then.
    Done(Box<Event>),
}

/// The fields an update replaces; every other field is left as stored.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventPatch {
    pub title: String,
    pub description: String,
    pub completed: bool,
}

/// What an update or a delete requires of the event as stored when it applies (HTTP
/// `If-Match`): checked in the write's own transaction, so nothing changes in between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Precondition {
    /// Nothing: a missing event is NOT_FOUND.
    #[default]
    None,
    /// That it exists (`If-Match: *`).
    Exists,
    /// That it exists at this revision.
    Revision(u64),
}

impl Precondition {
    /// The revision it names, if any.
    pub fn revision(self) -> Option<u64> {
        match self {
            Precondition::Revision(revision) => Some(revision),
            Precondition::None | Precondition::Exists => None,
        }
    }

    /// Whether an event stored at `revision` meets it.
    pub fn holds(self, revision: u64) -> bool {
        self.revision().is_none_or(|wanted| wanted == revision)
    }

    /// The answer to a write that found no event (none, or another owner's).
    pub fn missing(self) -> StoreError {
        match self {
            Precondition::None => StoreError::NotFound,
            Precondition::Exists | Precondition::Revision(_) => {
                StoreError::PreconditionFailed { current: None }
            }
        }
    }

    /// The answer to a delete whose precondition the event as stored (read in the delete's
    /// transaction: at revision `current`, or `None` when missing) does not meet.
    pub fn unmet(self, current: Option<u64>) -> StoreError {
        match current {
            None => self.missing(),
            Some(revision) => StoreError::PreconditionFailed {
                current: Some(revision),
            },
        }
    }

    /// The answer to an update of `patch` whose precondition `current` (the event as stored,
    /// read in the update's transaction; `None` when missing) does not meet: FAILED_PRECONDITION
    /// with its revision, unless `current` is what this update makes of the revision it names
    /// (the next one, holding the patch): then it is a repeat of an update that applied (the
    /// gateway sends an IDEMPOTENT call again when its backend is lost mid-call), answered
    /// with the event as that update left it.
    pub fn refused(self, current: Option<Event>, patch: &EventPatch) -> Result<Event> {
        let Some(current) = current else {
            return Err(self.missing());
        };
        let EventPatch {
            title,
            description,
            completed,
        } = patch;
        let repeat = self
            .revision()
            .is_some_and(|r| r.checked_add(1) == Some(current.revision))
            && current.title == *title
            && current.description == *description
            && current.completed == *completed;
        if repeat {
            Ok(current)
        } else {
            Err(self.unmet(Some(current.revision)))
        }
    }
}

/// One page of `EventStore::list`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Opaque cursor for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// A JSON value's size, roughly: its strings and keys, and a few bytes for anything else. It
/// is walked, not serialised: it is reckoned for every write, on the request's path.
fn json_size(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::String(text) => text.len() + 2,
        Value::Array(items) => items.iter().map(json_size).sum::<usize>() + 2,
        Value::Object(fields) => {
            fields
                .iter()
                .map(|(key, value)| key.len() + 3 + json_size(value))
                .sum::<usize>()
                + 2
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
    }
}

impl NewEvent {
    /// Its free text and data in bytes, roughly: what bounds a batch of writes besides their
    /// count (group commit).
    pub(crate) fn size(&self) -> usize {
        self.user_id.len()
            + self.title.len()
            + self.description.len()
            + self.topic.len()
            + self.data.as_ref().map_or(0, |data| {
                data.iter()
                    .map(|(key, value)| key.len() + json_size(value))
                    .sum()
            })
    }

    /// Gives the event its identity. Timestamps are cut to milliseconds, the finest precision
    /// every store keeps, so what a write returns equals what a later read returns.
    pub fn into_event(self, seq: Option<u64>) -> Event {
        let now = Utc::now().trunc_subsecs(3);
        Event {
            id: self.id.unwrap_or_else(Uuid::now_v7),
            user_id: self.user_id,
            title: self.title,
            description: self.description,
            completed: self.completed,
            created_at: now,
            topic: self.topic,
            data: self.data,
            time: seq.map(|_| now),
            seq: seq.unwrap_or(0),
            revision: 1,
        }
    }
}

impl NewEvent {
    /// Whether `stored` is this event (same id and content): a repeat of the request that stored
    /// it. Server-set fields (`created_at`, `time`, `seq`) are the stored ones.
    pub fn is_stored_as(&self, stored: &Event) -> bool {
        // Both field lists in full, so a new field does not compile until it is compared (or
        // said here to be the store's to set).
        let NewEvent {
            id,
            user_id,
            title,
            description,
            completed,
            topic,
            data,
            key: _, // how the write was asked for, not what was stored
        } = self;
        let Event {
            id: stored_id,
            user_id: stored_user_id,
            title: stored_title,
            description: stored_description,
            completed: stored_completed,
            topic: stored_topic,
            data: stored_data,
            created_at: _,
            time: _,
            seq: _,
            revision: _,
        } = stored;
        id.is_none_or(|id| id == *stored_id)
            && user_id == stored_user_id
            && title == stored_title
            && description == stored_description
            && completed == stored_completed
            && topic == stored_topic
            && data == stored_data
    }

    /// `stored` when it is this event, else ALREADY_EXISTS: the id names another event.
    pub fn repeated(&self, stored: Event) -> Result<Event> {
        if self.is_stored_as(&stored) {
            Ok(stored)
        } else {
            Err(StoreError::AlreadyExists)
        }
    }
}

/// How much of each topic's history is kept. Off (everything kept) unless set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep only the newest this many events of a topic.
    pub max_events: Option<u64>,
    /// Keep only events published less than this long ago.
    pub max_age: Option<Duration>,
}

impl Retention {
    pub fn is_off(&self) -> bool {
        self.max_events.is_none() && self.max_age.is_none()
    }
}

/// A page token's position: every store's tokens are 24 lowercase hex digits (a MongoDB
/// `ObjectId`, SQLite's row key), so the API can describe them once and any well-formed token
/// names a position; `None` for anything else.
pub(crate) fn page_token_bits(token: &str) -> Option<u128> {
    let hex = token.len() == 24
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    hex.then(|| u128::from_str_radix(token, 16).ok()).flatten()
}

/// The row position a listing's page token names, for the stores whose tokens are row keys
/// (SQLite, PostgreSQL): 0 before the first page. Any well-formed token is a position: past the
/// last row, the page is empty.
pub(crate) fn row_after(cursor: Option<String>) -> Result<i64> {
    match cursor {
        None => Ok(0),
        Some(c) => Ok(page_token_bits(&c)
            .ok_or(StoreError::InvalidCursor)?
            .try_into()
            .unwrap_or(i64::MAX)),
    }
}

/// Now, in milliseconds since the epoch: how the stores keep a key's lease and expiry.
pub(crate) fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `now` (milliseconds) plus `by`, saturating.
pub(crate) fn later(now: i64, by: Duration) -> i64 {
    now.saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX))
}

/// Errors every store reports, whatever its engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("event not found")]
    NotFound,
    /// An event with the id given exists with other content.
    #[error("an event with this id exists with other content")]
    AlreadyExists,
    #[error("invalid page token")]
    InvalidCursor,
    /// The write's `Precondition` does not hold: the event is at `current` (`None`: it does not
    /// exist for the caller).
    #[error("the event is not at the revision required")]
    PreconditionFailed { current: Option<u64> },
    /// The idempotency key names an earlier request that asked something else.
    #[error("idempotency key reused with another request")]
    KeyReused,
    /// The idempotency key's first request is still being served.
    #[error("idempotency key in use by a request in progress")]
    KeyInFlight,
    /// The store cannot serve right now (busy, unreachable); the call may succeed elsewhere or
    /// later.
    #[error("store unavailable during {op}: {reason}")]
    Unavailable { op: &'static str, reason: String },
    /// The store has no room for the write (disk or configured size full); reads still work,
    /// and writes succeed again once space is freed.
    #[error("store is full during {op}")]
    Full { op: &'static str },
    /// The store cannot do this at all as configured; the message says what would.
    #[error("{0}")]
    Unsupported(String),
    #[error("stored event {id} is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("store failure during {op}: {source}")]
    Internal {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// A database driver's error: `Unavailable` when the driver says the store cannot serve
    /// right now (worth retrying elsewhere or later), else a fault in this process.
    pub fn from_driver<E>(op: &'static str, err: E, unavailable: bool) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        if unavailable {
            Self::Unavailable {
                op,
                reason: err.to_string(),
            }
        } else {
            Self::Internal {
                op,
                source: Box::new(err),
            }
        }
    }
}

/// Where events live. Object safe so the implementation is chosen at start-up and shared as
/// `Arc<dyn EventStore>`; every method is safe to call from many tasks and processes at once.
///
/// `owner` scopes a call to one user's events: `None` means any event.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Stores an event without a `seq` or `time`. This, `update` and `delete` record their
    /// change in the owner's change feed (events without an owner have none).
    async fn create(&self, event: NewEvent) -> Result<Event>;
    async fn get(&self, id: Uuid, owner: Option<String>) -> Result<Event>;
    /// Events in creation order; `cursor` is a previous page's `next`.
    async fn list(
        &self,
        owner: Option<String>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<EventPage>;
    /// Replaces title, description and completed and adds one to the revision, if `when` holds;
    /// returns the event as now stored.
    async fn update(
        &self,
        id: Uuid,
        owner: Option<String>,
        patch: EventPatch,
        when: Precondition,
    ) -> Result<Event>;
    /// Deletes the event, if `when` holds.
    async fn delete(&self, id: Uuid, owner: Option<String>, when: Precondition) -> Result<()>;
    /// Stores an event on `event.topic` with the topic's next `seq`. Seqs are strictly
    /// increasing per topic across every process sharing the store, never reused, and a reader
    /// never sees seq `n + 1` before seq `n` is visible.
    async fn publish(&self, event: NewEvent) -> Result<Event>;
    /// Up to `limit` published events of `topic` with `seq > after_seq`, in `seq` order.
    async fn events_after(&self, topic: &str, after_seq: u64, limit: usize) -> Result<Vec<Event>>;
    /// Up to `limit` entries of `user`'s change feed with `position > after`, in order.
    async fn changes_after(&self, user: &str, after: u64, limit: usize)
    -> Result<Vec<EventChange>>;
    /// The newest position of `user`'s change feed that retention has dropped; 0 when none.
    async fn changes_dropped_through(&self, user: &str) -> Result<u64>;
    /// What commits from the moment this returns, by any process sharing the store, in commit
    /// order: every event published (so in `seq` order per topic) and every entry of a change
    /// feed (in position order per user). A backend runs one follower for all its
    /// subscribers. The stream ends only after yielding an error.
    async fn follow(&self) -> Result<BoxStream<'static, Result<Followed>>>;
    /// Drops up to `batch` published events (or change feed entries) that `retention` no
    /// longer keeps, oldest first, and records per topic (per user) the newest `seq`
    /// (position) dropped. Returns how many it dropped: a full
    /// batch means more may be due. Short, so publishers never wait long behind it.
    async fn compact(&self, retention: Retention, batch: usize) -> Result<usize>;
    /// The newest `seq` of `topic` that retention has dropped; 0 when none.
    async fn dropped_through(&self, topic: &str) -> Result<u64>;
    /// The topics `patterns` select that have been published on, by name, up to `limit`.
    async fn topics(&self, patterns: &Patterns, limit: usize) -> Result<Vec<TopicHead>>;
    /// Records a gateway's report of its members, renewing it: its subjects' joins and leaves
    /// are published on their topics' presence topics in the same transaction.
    async fn report_presence(
        &self,
        _report: presence::PresenceReport,
    ) -> Result<presence::Reported> {
        Err(StoreError::Unsupported(
            "presence is not kept by this store".into(),
        ))
    }
    /// Removes the members of up to `batch` gateways that have not reported since `cutoff`,
    /// publishing their subjects' leaves (each gateway in one transaction, so once).
    async fn expire_presence(&self, _cutoff: DateTime<Utc>, _batch: usize) -> Result<Vec<Event>> {
        Err(StoreError::Unsupported(
            "presence is not kept by this store".into(),
        ))
    }
    /// Who is on `topic` through gateways that reported since `alive_since`; named subjects
    /// only when `subjects`.
    async fn presence(
        &self,
        _topic: &str,
        _alive_since: DateTime<Utc>,
        _subjects: bool,
    ) -> Result<presence::Presence> {
        Err(StoreError::Unsupported(
            "presence is not kept by this store".into(),
        ))
    }
    /// Claims `claim.key` for the write of the event `id`: `Fresh` when the key is unused,
    /// expired, abandoned (its lease ran out unanswered) or already this write's (the gateway
    /// sending the same write again); `Done` with the answered event once its request was
    /// answered; `KeyReused` when it was for another request; `KeyInFlight` while another
    /// request holds it.
    async fn claim(&self, claim: &KeyClaim, id: Uuid) -> Result<Claim>;
    /// Forgets up to `batch` keys whose time is up; returns how many.
    async fn purge_keys(&self, batch: usize) -> Result<usize>;
    /// Whether the store answers now: `Unavailable` when its server cannot be reached. Backs
    /// the backend's health (NOT_SERVING while it fails), so it must be cheap.
    async fn ping(&self) -> Result<()>;
    /// Whether this process commits the writes of every backend sharing the store (SQLite's
    /// elected writer): writes sent here skip a hop. False where each backend writes its own.
    fn commits_every_write(&self) -> bool {
        false
    }
}

/// Which store to open, parsed from `--store` / `STORE_URI` / `MONGO_URI`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUri {
    /// `sqlite://PATH`: a relative (`sqlite://data/events.db`) or absolute
    /// (`sqlite:///var/lib/events.db`) path to the database file.
    Sqlite(PathBuf),
    /// `mongodb://…` or `mongodb+srv://…`, kept whole for the driver.
    Mongo(String),
    /// `postgres://…` or `postgresql://…`, kept whole for the driver.
    Postgres(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    /// (Without the text: with no scheme it may be anything, a password included.)
    #[error("store URI has no scheme: expected sqlite://PATH, mongodb://HOST or postgres://HOST")]
    NoScheme,
    #[error(
        "store URI scheme {0:?} is not supported: expected sqlite://, mongodb:// or postgres://"
    )]
    Scheme(String),
    #[error("store URI {0:?} names no database file")]
    EmptyPath(String),
    #[error("cannot read the store URI file {path}: {reason}")]
    File {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl std::str::FromStr for StoreUri {
    type Err = UriError;

    fn from_str(uri: &str) -> Result<Self, UriError> {
        let uri = uri.trim();
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(UriError::NoScheme);
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" if rest.is_empty() => Err(UriError::EmptyPath(uri.to_owned())),
            "sqlite" => Ok(Self::Sqlite(PathBuf::from(rest))),
            "mongodb" | "mongodb+srv" => Ok(Self::Mongo(uri.to_owned())),
            "postgres" | "postgresql" => Ok(Self::Postgres(uri.to_owned())),
            other => Err(UriError::Scheme(other.to_owned())),
        }
    }
}

impl std::fmt::Display for StoreUri {
    /// Never prints a MongoDB URI's credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Mongo(uri) => {
                let (scheme, rest) = uri.split_once("://").unwrap_or(("mongodb", uri));
                let hosts = rest.rsplit_once('@').map_or(rest, |(_, hosts)| hosts);
                write!(f, "{scheme}://{hosts}")
            }
            // Without the query too: libpq takes `password=` there.
            Self::Postgres(uri) => {
                let (scheme, rest) = uri.split_once("://").unwrap_or(("postgres", uri));
                let hosts = rest.rsplit_once('@').map_or(rest, |(_, hosts)| hosts);
                let hosts = hosts.split_once('?').map_or(hosts, |(hosts, _)| hosts);
                write!(f, "{scheme}://{hosts}")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open SQLite store {path}: {reason}")]
    Sqlite { path: PathBuf, reason: String },
    #[error("cannot open MongoDB store: {reason}")]
    Mongo { reason: String },
    #[error("cannot open PostgreSQL store: {reason}")]
    Postgres { reason: String },
}

/// Limits an operator sets on the store itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest SQLite database file; writes beyond it are refused as `Full`.
    pub max_bytes: Option<u64>,
}

/// Opens the store a URI names, ready to serve (schema migrated, indexes built).
pub async fn open(uri: &StoreUri, limits: StoreLimits) -> Result<Arc<dyn EventStore>, OpenError> {
    match uri {
        StoreUri::Sqlite(path) => Ok(Arc::new(
            SqliteStore::open_with(path.clone(), limits).await?,
        )),
        StoreUri::Mongo(uri) => {
            if limits.max_bytes.is_some() {
                tracing::warn!("a store size limit applies to SQLite only: size MongoDB itself");
            }
            Ok(Arc::new(MongoStore::open(uri).await?))
        }
        StoreUri::Postgres(uri) => {
            if limits.max_bytes.is_some() {
                tracing::warn!("a store size limit applies to SQLite only: size PostgreSQL itself");
            }
            Ok(Arc::new(PostgresStore::open(uri).await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_uris() {
        assert_eq!(
            "sqlite://data/events.db".parse(),
            Ok(StoreUri::Sqlite("data/events.db".into()))
        );
        assert_eq!(
            "sqlite:///var/lib/ev.db".parse(),
            Ok(StoreUri::Sqlite("/var/lib/ev.db".into()))
        );
        assert_eq!(
            "mongodb+srv://u:p@cluster.example/x".parse(),
            Ok(StoreUri::Mongo(
                "mongodb+srv://u:p@cluster.example/x".into()
            ))
        );
        assert!(matches!(
            "data/events.db".parse::<StoreUri>(),
            Err(UriError::NoScheme)
        ));
        assert_eq!(
            "postgres://x/db".parse(),
            Ok(StoreUri::Postgres("postgres://x/db".into()))
        );
        assert!(matches!(
            "mysql://x".parse::<StoreUri>(),
            Err(UriError::Scheme(s)) if s == "mysql"
        ));
        assert!(matches!(
            "sqlite://".parse::<StoreUri>(),
            Err(UriError::EmptyPath(_))
        ));
    }

    #[test]
    fn display_hides_credentials() {
        let uri: StoreUri = "mongodb://admin:secret@db1:27017,db2/?replicaSet=rs0"
            .parse()
            .unwrap();
        assert_eq!(uri.to_string(), "mongodb://db1:27017,db2/?replicaSet=rs0");
        let uri: StoreUri = "postgresql://app:secret@db:5432/events?password=also&sslmode=require"
            .parse()
            .unwrap();
        assert!(matches!(uri, StoreUri::Postgres(_)));
        assert_eq!(uri.to_string(), "postgresql://db:5432/events");
    }

    #[test]
    fn published_events_get_seq_and_time() {
        let plain = NewEvent::default().into_event(None);
        assert_eq!((plain.seq, plain.time), (0, None));
        let published = NewEvent::default().into_event(Some(7));
        assert_eq!(published.seq, 7);
        assert_eq!(published.time, Some(published.created_at));
        assert_eq!(published.created_at.timestamp_subsec_nanos() % 1_000_000, 0);
    }
}
