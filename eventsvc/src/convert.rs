//! Conversions between store types and the `events.v1` wire types: events, timestamps, and
//! JSON objects as `google.protobuf.Struct`.

use chrono::{DateTime, Utc};
use eventsys::v1;
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use serde_json::Value as Json;

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
        data: e.data.as_ref().map(json_struct),
        time: e.time.map(timestamp),
        seq: e.seq,
    }
}

/// A `Struct` as a JSON object. Fails only on numbers JSON cannot carry (NaN, ±inf).
pub fn json_object(s: Struct) -> Result<JsonObject, FieldError> {
    s.fields
        .into_iter()
        .map(|(k, v)| Ok((k, json(v)?)))
        .collect()
}

fn json(v: Value) -> Result<Json, FieldError> {
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::NumberValue(n)) => {
            // Integral values stay integers so `{"n": 3}` reads back as 3, not 3.0.
            let number = if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                Some(serde_json::Number::from(n as i64))
            } else {
                serde_json::Number::from_f64(n)
            };
            Json::Number(number.ok_or_else(|| {
                FieldError(format!("data must hold finite numbers only (got {n})"))
            })?)
        }
        Some(Kind::StructValue(s)) => Json::Object(json_object(s)?),
        Some(Kind::ListValue(l)) => {
            Json::Array(l.values.into_iter().map(json).collect::<Result<_, _>>()?)
        }
    })
}

pub fn json_struct(object: &JsonObject) -> Struct {
    Struct {
        fields: object.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
    }
}

fn value(v: &Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(value).collect(),
        }),
        Json::Object(o) => Kind::StructValue(json_struct(o)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_struct() {
        let original = json!({
            "n": 3, "neg": -7, "f": 2.5, "s": "héllo ✓", "b": true, "z": null,
            "list": [1, "two", [3.5], {"k": false}], "nested": {"deep": {"x": []}}
        });
        let object = original.as_object().unwrap();
        let back = json_object(json_struct(object)).unwrap();
        assert_eq!(Json::Object(back), original);
    }

    #[test]
    fn non_finite_numbers_are_rejected() {
        let s = Struct {
            fields: [(
                "x".to_string(),
                Value {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        };
        assert!(json_object(s).unwrap_err().0.contains("finite"));
    }

    #[test]
    fn timestamps_keep_subsecond_precision() {
        let t = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
    }
}
