//! Conversions from store types to the `events.v1` wire types: events and timestamps. (Wire
//! input goes the other way through `validate`, which checks it first.)

use chrono::{DateTime, Utc};
use eventsys::{json, v1};
use prost_types::Timestamp;

use crate::store::{ChangeKind, Event, EventChange};

pub(crate) fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A wire timestamp as a time; `None` for one out of range.
pub(crate) fn from_timestamp(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

pub(crate) fn event(e: Event) -> v1::Event {
    // Destructured, so a field added to `Event` does not compile until it is sent.
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
    v1::Event {
        id: id.to_string(),
        user_id,
        title,
        description,
        completed,
        created_at: Some(timestamp(created_at)),
        topic,
        data: data.as_ref().map(json::to_struct),
        time: time.map(timestamp),
        seq,
        revision,
    }
}

pub(crate) fn change(c: EventChange) -> v1::Change {
    let EventChange {
        position,
        kind,
        time,
        event: changed,
    } = c;
    let kind = match kind {
        ChangeKind::Created => v1::change::Kind::Created,
        ChangeKind::Updated => v1::change::Kind::Updated,
        ChangeKind::Deleted => v1::change::Kind::Deleted,
    };
    v1::Change {
        position,
        kind: kind.into(),
        event: Some(event(changed)),
        time: Some(timestamp(time)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_subsecond_precision() {
        let t = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
    }
}
