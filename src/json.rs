//! JSON objects as `google.protobuf.Struct` and back: how an event's `data` crosses the wire.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::Value as Json;

/// An arbitrary JSON object, the type of an event's `data`.
pub type JsonObject = serde_json::Map<String, Json>;

/// A `Struct` held a number JSON cannot carry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("data must hold finite numbers only (got {0})")]
pub struct NonFiniteNumber(pub f64);

/// A `Struct` as a JSON object. Fails only on numbers JSON cannot carry (NaN, ±inf).
pub fn from_struct(s: Struct) -> Result<JsonObject, NonFiniteNumber> {
    s.fields
        .into_iter()
        .map(|(k, v)| Ok((k, from_value(v)?)))
        .collect()
}

fn from_value(v: Value) -> Result<Json, NonFiniteNumber> {
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::NumberValue(n)) => {
            // Integral values stay integers so `{"n": 3}` reads back as 3, not 3.0.
            let number = if n.fract() == 0.0 && n.abs() <= EXACT as f64 {
                Some(serde_json::Number::from(n as i64))
            } else {
                serde_json::Number::from_f64(n)
            };
            Json::Number(number.ok_or(NonFiniteNumber(n))?)
        }
        Some(Kind::StructValue(s)) => Json::Object(from_struct(s)?),
        Some(Kind::ListValue(l)) => Json::Array(
            l.values
                .into_iter()
                .map(from_value)
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The largest integer magnitude every double holds exactly (2^53): `data`'s integers must lie
/// within ±`EXACT`.
pub const EXACT: u64 = 1 << 53;

/// An integer a `Struct` (whose numbers are doubles) cannot carry unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "data holds the integer {0}, which cannot be stored exactly: integers must lie within ±2^53 (send larger ones as strings)"
)]
pub struct InexactInteger(pub String);

/// Checks that every integer in `value` survives the trip through a double.
pub fn check_exact(value: &Json) -> Result<(), InexactInteger> {
    match value {
        Json::Number(n) => {
            let exact = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u <= EXACT,
                (None, Some(i)) => i.unsigned_abs() <= EXACT,
                // Not an integer: a double already, as sent.
                (None, None) => true,
            };
            if exact {
                Ok(())
            } else {
                Err(InexactInteger(n.to_string()))
            }
        }
        Json::Array(items) => items.iter().try_for_each(check_exact),
        Json::Object(fields) => fields.values().try_for_each(check_exact),
        Json::Null | Json::Bool(_) | Json::String(_) => Ok(()),
    }
}

/// A JSON object as a `Struct`. Numbers become doubles, as `Struct` has no integers: check
/// integers with `check_exact` first.
pub fn to_struct(object: &JsonObject) -> Struct {
    Struct {
        fields: object
            .iter()
            .map(|(k, v)| (k.clone(), to_value(v)))
            .collect(),
    }
}

fn to_value(v: &Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        Json::Object(o) => Kind::StructValue(to_struct(o)),
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
        let back = from_struct(to_struct(original.as_object().unwrap())).unwrap();
        assert_eq!(Json::Object(back), original);
    }

    #[test]
    fn non_finite_numbers_are_rejected() {
        let s = Struct {
            fields: [(
                "x".to_string(),
                Value {
                    kind: Some(Kind::NumberValue(f64::INFINITY)),
                },
            )]
            .into(),
        };
        assert!(from_struct(s).unwrap_err().to_string().contains("finite"));
    }

    #[test]
    fn integers_beyond_2_pow_53_are_not_exact() {
        let ok = serde_json::json!({"a": 9_007_199_254_740_992u64, "b": -9_007_199_254_740_992i64, "c": 1.5e300});
        assert!(check_exact(&ok).is_ok());
        let big = serde_json::json!({"nested": [{"n": 9_007_199_254_740_993u64}]});
        assert_eq!(
            check_exact(&big).unwrap_err(),
            InexactInteger("9007199254740993".into())
        );
        assert!(check_exact(&serde_json::json!([-9_007_199_254_740_993i64])).is_err());
    }
}
