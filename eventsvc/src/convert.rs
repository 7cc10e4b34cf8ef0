//! Conversions from store types to the `events.v1` wire types: events and timestamps. (Wire
//! input goes the other way through `validate`, which checks it first.)

use chrono::{DateTime, Utc};
use eventsys::{json, v1};
use prost_types::Timestamp;

use crate::store::Event;

pub(crate) fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub(crate) fn event(e: Event) -> v1::Event {
    v1::Event {
        id: e.id.to_string(),
        user_id: e.user_id,
        title: e.title,
        description: e.description,
        completed: e.completed,
        created_at: Some(timestamp(e.created_at)),
        topic: e.topic,
        data: e.data.as_ref().map(json::to_struct),
        time: e.time.map(timestamp),
        seq: e.seq,
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
