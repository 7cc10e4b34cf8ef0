//! An event as the stores keep a copy of it, as JSON: a keyed write's outcome (the event exactly
//! as it was answered, so a repeat gets the same body even after the event is updated or
//! deleted), and the event of an entry in a user's change feed (as the change left it).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ChangeKind, Event, EventChange, JsonObject, Result, StoreError};

/// `Event` with times in milliseconds (the precision every store keeps).
#[derive(Serialize, Deserialize)]
struct Answered {
    id: Uuid,
    user_id: String,
    title: String,
    description: String,
    completed: bool,
    created_ms: i64,
    topic: String,
    data: Option<JsonObject>,
    time_ms: Option<i64>,
    /// Absent from what was kept before revisions: 1.
    #[serde(default = "first_revision")]
    revision: u64,
    seq: u64,
}

fn first_revision() -> u64 {
    1
}

pub(crate) fn encode(event: &Event) -> String {
    let answered = Answered {
        id: event.id,
        user_id: event.user_id.clone(),
        title: event.title.clone(),
        description: event.description.clone(),
        completed: event.completed,
        created_ms: event.created_at.timestamp_millis(),
        topic: event.topic.clone(),
        data: event.data.clone(),
        time_ms: event.time.map(|t| t.timestamp_millis()),
        revision: event.revision,
        seq: event.seq,
    };
    serde_json::to_string(&answered).expect("an event serialises")
}

/// `encode`'s text up to the event's `seq`, which is the last field: for a store that learns the
/// `seq` only inside its write (PostgreSQL's publish), and appends it and the closing brace.
pub(crate) fn encode_up_to_seq(event: &Event) -> String {
    let mut whole = encode(&Event {
        seq: 0,
        ..event.clone()
    });
    assert!(whole.ends_with(",\"seq\":0}"), "seq is the last field");
    whole.truncate(whole.len() - "0}".len());
    whole
}

pub(crate) fn decode(text: &str) -> Result<Event> {
    let corrupt = |reason: String| StoreError::Corrupt {
        id: "(idempotency key outcome)".into(),
        reason,
    };
    let a: Answered = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    let at = |ms: i64| {
        DateTime::<Utc>::from_timestamp_millis(ms).ok_or_else(|| corrupt(format!("time {ms}")))
    };
    Ok(Event {
        id: a.id,
        user_id: a.user_id,
        title: a.title,
        description: a.description,
        completed: a.completed,
        created_at: at(a.created_ms)?,
        topic: a.topic,
        data: a.data,
        time: a.time_ms.map(at).transpose()?,
        seq: a.seq,
        revision: a.revision,
    })
}

/// A change feed entry as a store keeps it (position, kind code, time in milliseconds, the
/// event as `encode` wrote it); `pk` names it in an error.
pub(crate) fn change(
    pk: i64,
    position: i64,
    kind: i64,
    time: i64,
    event: &str,
) -> Result<EventChange> {
    let corrupt = |reason: String| StoreError::Corrupt {
        id: format!("(change feed entry {pk})"),
        reason,
    };
    Ok(EventChange {
        position: position.max(0) as u64,
        kind: ChangeKind::from_code(kind).ok_or_else(|| corrupt(format!("kind {kind}")))?,
        time: DateTime::from_timestamp_millis(time)
            .ok_or_else(|| corrupt(format!("time {time}")))?,
        event: decode(event)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewEvent;

    #[test]
    fn an_outcome_reads_back_as_the_event() {
        let mut data = JsonObject::new();
        data.insert("n".into(), serde_json::json!([1, {"b": null}]));
        let event = NewEvent {
            title: "t".into(),
            topic: "x".into(),
            data: Some(data),
            ..Default::default()
        }
        .into_event(Some(7));
        assert_eq!(decode(&encode(&event)).unwrap(), event);
        // What a store that learns the seq in its write completes.
        assert_eq!(format!("{}7}}", encode_up_to_seq(&event)), encode(&event));
        assert!(matches!(decode("{}"), Err(StoreError::Corrupt { .. })));
        // Kept before revisions: revision 1.
        let mut old = encode(&event).replace(",\"revision\":1", "");
        assert!(!old.contains("revision"));
        assert_eq!(decode(&old).unwrap(), event);
        old = encode(&Event {
            revision: 4,
            ..event.clone()
        });
        assert_eq!(decode(&old).unwrap().revision, 4);
    }
}
