//! Conversions between store types and the `events.v1` wire types: events, timestamps, and
//! JSON objects as `google.protobuf.Struct`.

use chrono::{DateTime, Utc};
use eventsys::{json, v1};
use prost_types::Timestamp;

use crate::{
    store::{Event, JsonObject},
    validate::FieldError,
};

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn event(e: Event) -> v1::Event {
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

/// An event's `data` from the wire; `FieldError` for numbers JSON cannot carry.
pub fn json_object(data: prost_types::Struct) -> Result<JsonObject, FieldError> {
    json::from_struct(data).map_err(|e| FieldError(e.to_string()))
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

    #[test]
    fn non_finite_data_is_a_field_error() {
        let data = prost_types::Struct {
            fields: [(
                "x".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        };
        assert!(
            json_object(data)
                .unwrap_err()
                .0
                .starts_with("data must hold finite")
        );
    }
}
