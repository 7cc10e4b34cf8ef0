//! The REST contract's JSON shapes and their translation to and from `events.v1` messages.

use chrono::{DateTime, SecondsFormat};
use eventsys::{json::JsonObject, v1};
use serde::{Deserialize, Deserializer, Serialize};

/// An event as REST clients read it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventJson {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) title: String,
    pub(crate) description: String,
    pub(crate) completed: bool,
    pub(crate) created_at: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<JsonObject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) time: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) seq: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// RFC 3339 in UTC with millisecond fractions, the precision the stores keep.
fn rfc3339(ts: Option<prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let t = DateTime::from_timestamp(ts.seconds, ts.nanos.max(0) as u32)?;
    Some(t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

impl From<v1::Event> for EventJson {
    fn from(e: v1::Event) -> Self {
        Self {
            id: e.id,
            user_id: e.user_id,
            title: e.title,
            description: e.description,
            completed: e.completed,
            created_at: rfc3339(e.created_at).unwrap_or_default(),
            topic: e.topic,
            // Backends only send what they stored, which was JSON to begin with.
            data: e
                .data
                .and_then(|d| eventsys::json::from_struct(d).ok())
                .filter(|d| !d.is_empty()),
            time: rfc3339(e.time),
            seq: e.seq,
        }
    }
}

/// `null` reads as the field's zero value, as the old service's Go decoder did.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The body of `POST /events` and `POST /publish`. Unknown fields, `id` included, are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct EventInput {
    #[serde(deserialize_with = "nullable")]
    pub(crate) user_id: String,
    #[serde(deserialize_with = "nullable")]
    pub(crate) title: String,
    #[serde(deserialize_with = "nullable")]
    pub(crate) description: String,
    #[serde(deserialize_with = "nullable")]
    pub(crate) completed: bool,
    #[serde(deserialize_with = "nullable")]
    pub(crate) topic: String,
    #[serde(deserialize_with = "exact_data")]
    pub(crate) data: Option<JsonObject>,
}

/// `data` whose integers survive the trip through the `Struct`'s doubles; a larger one is
/// refused rather than stored changed.
fn exact_data<'de, D>(d: D) -> Result<Option<JsonObject>, D::Error>
where
    D: Deserializer<'de>,
{
    let data = Option::<JsonObject>::deserialize(d)?;
    if let Some(object) = &data {
        for value in object.values() {
            eventsys::json::check_exact(value).map_err(serde::de::Error::custom)?;
        }
    }
    Ok(data)
}

/// The body of `PUT /events/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct UpdateInput {
    #[serde(deserialize_with = "nullable")]
    pub(crate) title: String,
    #[serde(deserialize_with = "nullable")]
    pub(crate) description: String,
    #[serde(deserialize_with = "nullable")]
    pub(crate) completed: bool,
}

impl EventInput {
    pub(crate) fn into_create(self) -> v1::CreateEventRequest {
        v1::CreateEventRequest {
            user_id: self.user_id,
            title: self.title,
            description: self.description,
            completed: self.completed,
            topic: self.topic,
            data: self.data.as_ref().map(eventsys::json::to_struct),
        }
    }

    pub(crate) fn into_publish(self) -> v1::PublishRequest {
        v1::PublishRequest {
            topic: self.topic,
            user_id: self.user_id,
            title: self.title,
            description: self.description,
            completed: self.completed,
            data: self.data.as_ref().map(eventsys::json::to_struct),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_serialise_as_the_contract_says() {
        let event = v1::Event {
            id: "i".into(),
            user_id: "u".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(EventJson::from(event)).unwrap();
        assert_eq!(
            json,
            json!({"id": "i", "userId": "u", "title": "", "description": "",
                   "completed": false, "createdAt": "2023-11-14T22:13:20.005Z"})
        );
    }

    #[test]
    fn input_ignores_unknown_fields_and_rejects_wrong_types() {
        let input: EventInput = serde_json::from_value(
            json!({"id": "mine", "userId": "u", "title": null, "extra": 1, "data": {"a": 1}}),
        )
        .unwrap();
        assert_eq!((input.user_id.as_str(), input.title.as_str()), ("u", ""));
        assert!(serde_json::from_value::<EventInput>(json!({"completed": "yes"})).is_err());
        assert!(serde_json::from_value::<EventInput>(json!({"data": [1]})).is_err());
        assert!(serde_json::from_value::<UpdateInput>(json!({"title": 5})).is_err());
    }
}
