//! Events as MongoDB documents, with the old service's field names (`id`, `userId`, `title`,
//! `description`, `completed`, `createdAt`, `topic`, `data`, `time`) plus `seq`, so the old
//! service's documents and this one's read each other.

use chrono::{DateTime, Utc};
use mongodb::bson::{self, Bson, Document, doc, oid::ObjectId};
use uuid::Uuid;

use crate::store::{Event, JsonObject, StoreError};

/// Go's zero `time.Time` (0001-01-01T00:00:00Z) in BSON milliseconds: what the old service
/// wrote for `time` on events that were not published.
pub(super) const GO_ZERO_TIME_MS: i64 = -62_135_596_800_000;

fn datetime(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(t.timestamp_millis())
}

/// A new document's `_id`, in creation order across processes to the millisecond: the seconds
/// (as in every ObjectId, so the old service's ids and `getTimestamp()` agree), the
/// milliseconds, this process's counter, then a random tag of this process. The driver's own
/// ObjectIds put a per-process random value before the counter, so two backends' events of one
/// second would list by backend rather than by time (listings go by `_id`).
pub(super) fn object_id() -> ObjectId {
    use std::sync::{
        LazyLock,
        atomic::{AtomicU32, Ordering},
    };
    static TAG: LazyLock<[u8; 16]> = LazyLock::new(|| *Uuid::new_v4().as_bytes());
    static COUNTER: LazyLock<AtomicU32> =
        // From the lower half: millions of ids before it wraps (24 bits are kept).
        LazyLock::new(|| {
            AtomicU32::new(u32::from_be_bytes([0, TAG[3] & 0x7f, TAG[4], TAG[5]]))
        });
    let now = Utc::now();
    let seconds = u32::try_from(now.timestamp()).unwrap_or(u32::MAX);
    let millis = u16::try_from(now.timestamp_subsec_millis()).unwrap_or(999);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    let mut bytes = [0; 12];
    bytes[..4].copy_from_slice(&seconds.to_be_bytes());
    bytes[4..6].copy_from_slice(&millis.to_be_bytes());
    bytes[6..9].copy_from_slice(&count[1..]);
    bytes[9..].copy_from_slice(&TAG[..3]);
    ObjectId::from_bytes(bytes)
}

/// The document of a new event, with a fresh `_id` (`object_id`).
pub fn to_document(e: &Event) -> Result<Document, StoreError> {
    // Every field named: a new one does not compile until it is stored.
    let Event {
        id,
        user_id,
        title,
        description,
        completed,
        created_at,
        topic,
        data,
        time,
        seq,
        revision,
    } = e;
    let mut document = doc! {
        "_id": object_id(),
        "id": id.to_string(),
        "userId": user_id,
        "title": title,
        "description": description,
        "completed": completed,
        "createdAt": datetime(*created_at),
        "topic": topic,
    };
    if let Some(data) = data {
        let data = bson::to_bson(data).map_err(|err| StoreError::Internal {
            op: "encode data",
            source: Box::new(err),
        })?;
        document.insert("data", data);
    }
    if let Some(time) = time {
        document.insert("time", datetime(*time));
    }
    if *seq > 0 {
        document.insert("seq", *seq as i64);
    }
    document.insert("revision", i64::try_from(*revision).unwrap_or(i64::MAX));
    Ok(document)
}

fn text(d: &Document, key: &str) -> String {
    d.get_str(key).unwrap_or_default().to_owned()
}

/// Reads a stored document, tolerating what the old service wrote: missing fields are their
/// zero value, a zero `time` is no time, a missing `createdAt` is the `_id`'s creation time.
pub fn from_document(d: &Document) -> Result<Event, StoreError> {
    let raw_id = text(d, "id");
    let corrupt = |reason: String| StoreError::Corrupt {
        id: raw_id.clone(),
        reason,
    };
    let id = Uuid::parse_str(&raw_id).map_err(|e| corrupt(format!("id: {e}")))?;
    let when = |b: bson::DateTime| DateTime::from_timestamp_millis(b.timestamp_millis());
    let created_at = match d.get_datetime("createdAt") {
        Ok(at) => when(*at),
        Err(_) => d
            .get_object_id("_id")
            .ok()
            .and_then(|oid| when(oid.timestamp())),
    }
    .ok_or_else(|| corrupt("createdAt: missing or out of range".into()))?;
    let time = match d.get_datetime("time") {
        Ok(t) if t.timestamp_millis() > GO_ZERO_TIME_MS => when(*t),
        _ => None,
    };
    let data = match d.get("data") {
        None | Some(Bson::Null) => None,
        Some(Bson::Document(data)) => match Bson::Document(data.clone()).into_relaxed_extjson() {
            serde_json::Value::Object(object) => Some(object),
            _ => None,
        },
        Some(other) => {
            return Err(corrupt(format!(
                "data: not an object but {:?}",
                other.element_type()
            )));
        }
    }
    .filter(|data: &JsonObject| !data.is_empty());
    let seq = integer(d, "seq").unwrap_or(0);
    Ok(Event {
        id,
        user_id: text(d, "userId"),
        title: text(d, "title"),
        description: text(d, "description"),
        completed: d.get_bool("completed").unwrap_or(false),
        created_at,
        topic: text(d, "topic"),
        data,
        time,
        seq: seq.max(0) as u64,
        revision: revision_of(d),
    })
}

/// An integer field, stored as either width.
fn integer(d: &Document, key: &str) -> Option<i64> {
    match d.get(key) {
        Some(Bson::Int64(n)) => Some(*n),
        Some(Bson::Int32(n)) => Some(i64::from(*n)),
        _ => None,
    }
}

/// A document's revision (the old service's documents have none: 1).
pub(super) fn revision_of(d: &Document) -> u64 {
    integer(d, "revision").unwrap_or(1).max(1) as u64
}

/// A filter on the revision `revision`: the old service's documents, without one, are at 1.
pub(super) fn at_revision(revision: u64) -> Bson {
    let revision = i64::try_from(revision).unwrap_or(i64::MAX);
    if revision == 1 {
        bson::bson!({"$in": [1_i64, Bson::Null]})
    } else {
        Bson::Int64(revision)
    }
}

/// The page token of a listing: the last document's `_id`.
pub(super) fn page_token(d: &Document) -> Option<String> {
    d.get_object_id("_id").ok().map(|oid| oid.to_hex())
}

pub(super) fn parse_page_token(token: &str) -> Result<ObjectId, StoreError> {
    super::super::page_token_bits(token).ok_or(StoreError::InvalidCursor)?;
    ObjectId::parse_str(token).map_err(|_| StoreError::InvalidCursor)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::NewEvent;

    #[test]
    fn events_round_trip() {
        let plain = NewEvent {
            id: None,
            user_id: "u".into(),
            title: "t ✓".into(),
            description: "d".into(),
            completed: true,
            topic: String::new(),
            data: json!({"n": 3, "f": 1.5, "s": "x", "l": [1, null], "o": {"k": true}})
                .as_object()
                .cloned(),
            key: None,
        }
        .into_event(None);
        assert_eq!(from_document(&to_document(&plain).unwrap()).unwrap(), plain);

        let published = NewEvent {
            topic: "orders".into(),
            ..NewEvent::default()
        }
        .into_event(Some(42));
        let document = to_document(&published).unwrap();
        assert_eq!(document.get_i64("seq").unwrap(), 42);
        assert!(document.get_datetime("time").is_ok());
        assert!(document.get("data").is_none(), "no data, no field");
        assert_eq!(from_document(&document).unwrap(), published);
    }

    #[test]
    fn reads_what_the_old_service_wrote() {
        let oid = ObjectId::new();
        let id = Uuid::new_v4();
        // The Go service: zero time, no data, no seq, an int32 completed-less document.
        let old = doc! {
            "_id": oid,
            "id": id.to_string(),
            "userId": "legacy",
            "title": "from Go",
            "description": "",
            "createdAt": bson::DateTime::from_millis(1_600_000_000_123),
            "topic": "orders",
            "time": bson::DateTime::from_millis(GO_ZERO_TIME_MS),
        };
        let event = from_document(&old).unwrap();
        assert_eq!(event.id, id);
        assert_eq!(event.revision, 1, "no revision: the first");
        assert_eq!(event.user_id, "legacy");
        assert_eq!(
            (event.time, event.data.clone(), event.seq, event.completed),
            (None, None, 0, false)
        );
        assert_eq!(event.created_at.timestamp_millis(), 1_600_000_000_123);

        let mut no_created_at = old.clone();
        no_created_at.remove("createdAt");
        let event = from_document(&no_created_at).unwrap();
        assert_eq!(
            event.created_at.timestamp(),
            oid.timestamp().timestamp_millis() / 1000
        );

        let mut null_data = old;
        null_data.insert("data", Bson::Null);
        assert_eq!(from_document(&null_data).unwrap().data, None);
    }

    #[test]
    fn unreadable_documents_are_corrupt_not_panics() {
        for bad in [
            doc! {"id": "not-a-uuid", "createdAt": bson::DateTime::now()},
            doc! {"id": Uuid::new_v4().to_string()},
            doc! {"id": Uuid::new_v4().to_string(), "createdAt": bson::DateTime::now(), "data": [1, 2]},
        ] {
            assert!(
                matches!(from_document(&bad), Err(StoreError::Corrupt { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn new_ids_sort_in_creation_order_and_carry_their_second() {
        let ids: Vec<ObjectId> = (0..1000).map(|_| object_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order");
        let second = ids[0].timestamp().timestamp_millis() / 1000;
        assert!((second - Utc::now().timestamp()).abs() <= 1);
    }

    #[test]
    fn page_tokens_are_object_ids() {
        let oid = ObjectId::new();
        let token = page_token(&doc! {"_id": oid}).unwrap();
        assert_eq!(parse_page_token(&token).unwrap(), oid);
        assert!(matches!(
            parse_page_token("12"),
            Err(StoreError::InvalidCursor)
        ));
    }
}
