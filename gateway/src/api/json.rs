//! The REST contract's JSON shapes and their translation to and from `events.v1` messages.

use chrono::{DateTime, SecondsFormat};
use eventsys::{json::JsonObject, v1};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        ObjectBuilder, Ref, RefOr,
        schema::{Schema, SchemaType, Type},
    },
};

/// An event as REST clients read it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Event)]
pub(crate) struct EventJson {
    /// Assigned by the service (UUID v7: time-ordered, so new ids land together in an index).
    #[schema(format = Uuid)]
    pub(crate) id: String,
    /// The event's owner.
    pub(crate) user_id: String,
    pub(crate) title: String,
    pub(crate) description: String,
    pub(crate) completed: bool,
    /// When it was stored: RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime)]
    pub(crate) created_at: String,
    /// Set on published events.
    #[serde(skip_serializing_if = "String::is_empty")]
    #[schema(required = false)]
    pub(crate) topic: String,
    /// The client's JSON object, when it sent a non-empty one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = DataDoc, required = false)]
    pub(crate) data: Option<JsonObject>,
    /// When it was published (published events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, required = false, nullable = false)]
    pub(crate) time: Option<String>,
    /// Its position in its topic's stream (published events only): the SSE `id`.
    #[serde(skip_serializing_if = "is_zero")]
    #[schema(required = false, minimum = 1)]
    pub(crate) seq: u64,
    /// 1 when stored, one more with each update: the `ETag` (quoted) that `If-Match` names.
    #[schema(minimum = 1)]
    pub(crate) revision: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// RFC 3339 in UTC with millisecond fractions, the precision the stores keep.
pub(crate) fn rfc3339(ts: Option<prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let t = DateTime::from_timestamp(ts.seconds, ts.nanos.max(0) as u32)?;
    Some(t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

impl From<v1::Event> for EventJson {
    fn from(e: v1::Event) -> Self {
        // Destructured, so a field added to the message does not compile until it is shown.
        let v1::Event {
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
        Self {
            id,
            user_id,
            title,
            description,
            completed,
            created_at: rfc3339(created_at).unwrap_or_default(),
            topic,
            // Backends only send what they stored, which was JSON to begin with.
            data: data
                .and_then(|d| eventsys::json::from_struct(d).ok())
                .filter(|d| !d.is_empty()),
            time: rfc3339(time),
            seq,
            revision,
        }
    }
}

/// What a change did: the SSE `event:` of a `/changes` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

impl ChangeKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Updated => "updated",
            ChangeKind::Deleted => "deleted",
        }
    }
}

/// What a `deleted` change says of its event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeletedJson {
    #[schema(format = Uuid)]
    pub(crate) id: String,
    pub(crate) user_id: String,
    /// The revision it had when deleted.
    #[schema(minimum = 1)]
    pub(crate) revision: u64,
}

/// A change's event: after the change, or (deleted) what identifies it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum ChangedEvent {
    Event(Box<EventJson>),
    Deleted(DeletedJson),
}

/// One entry of a user's change feed, as `GET /changes/history` lists it (the SSE stream sends
/// `kind` as `event:`, `position` as `id:` and `event` as `data:`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Change)]
pub(crate) struct ChangeJson {
    /// Its place in the user's feed: strictly increasing, from 1.
    #[schema(minimum = 1)]
    pub(crate) position: u64,
    pub(crate) kind: ChangeKind,
    /// When it was committed: RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime)]
    pub(crate) time: String,
    pub(crate) event: ChangedEvent,
}

impl ChangeJson {
    /// `None` for a change of no known kind (a newer backend's).
    pub(crate) fn of(change: v1::Change) -> Option<ChangeJson> {
        let v1::Change {
            position,
            kind,
            event,
            time,
        } = change;
        let kind = match v1::change::Kind::try_from(kind).ok()? {
            v1::change::Kind::Created => ChangeKind::Created,
            v1::change::Kind::Updated => ChangeKind::Updated,
            v1::change::Kind::Deleted => ChangeKind::Deleted,
            v1::change::Kind::Unspecified => return None,
        };
        let event = EventJson::from(event?);
        let event = match kind {
            ChangeKind::Deleted => ChangedEvent::Deleted(DeletedJson {
                id: event.id,
                user_id: event.user_id,
                revision: event.revision,
            }),
            ChangeKind::Created | ChangeKind::Updated => ChangedEvent::Event(Box::new(event)),
        };
        Some(ChangeJson {
            position,
            kind,
            time: rfc3339(time).unwrap_or_default(),
            event,
        })
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

/// The body of `POST /events` and `POST /publish`. Unknown fields, `id` included, are ignored;
/// `null` reads as the field's zero value.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default)]
#[schema(as = EventInput)]
pub(crate) struct EventInput {
    /// The owner; in token mode absent or the caller.
    #[serde(deserialize_with = "nullable")]
    #[schema(nullable, max_length = 256)]
    pub(crate) user_id: String,
    #[serde(deserialize_with = "nullable")]
    #[schema(nullable, max_length = 65536)]
    pub(crate) title: String,
    #[serde(deserialize_with = "nullable")]
    #[schema(nullable, max_length = 65536)]
    pub(crate) description: String,
    #[serde(deserialize_with = "nullable")]
    #[schema(nullable)]
    pub(crate) completed: bool,
    /// Required by `POST /publish`; optional on `POST /events`.
    #[serde(deserialize_with = "nullable")]
    #[schema(nullable, max_length = 256, pattern = "^[A-Za-z0-9._:-]*$")]
    pub(crate) topic: String,
    /// Any JSON object (at most 256 KiB); integers must be exact as doubles (|n| ≤ 2^53).
    #[serde(deserialize_with = "exact_data")]
    #[schema(value_type = Option<DataDoc>)]
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

/// The body of `POST /publish`: an `EventInput` whose `topic` is required.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct PublishInput(pub(crate) EventInput);

impl PartialSchema for PublishInput {
    fn schema() -> RefOr<Schema> {
        let mut schema = EventInput::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.required.push("topic".to_owned());
            if let Some(RefOr::T(Schema::Object(topic))) = object.properties.get_mut("topic") {
                topic.schema_type = SchemaType::Type(Type::String);
                topic.default = None;
                topic.min_length = Some(1);
                topic.pattern = Some("^[A-Za-z0-9._:-]+$".to_owned());
                topic.description = Some("The topic: 1 to 256 of `A-Z a-z 0-9 . _ : -`".to_owned());
            }
        }
        schema
    }
}

impl ToSchema for PublishInput {}

/// Describes `data` in the API document: an object of `JsonValue`s, the rule `exact_data`
/// enforces (`json_value_schema`).
pub(crate) struct DataDoc;

impl PartialSchema for DataDoc {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(Ref::from_schema_name(JSON_VALUE)))
            .description(Some(
                "A JSON object; its integers must lie within ±2^53 (send larger ones as strings)",
            ))
            .into()
    }
}

impl ToSchema for DataDoc {
    fn name() -> std::borrow::Cow<'static, str> {
        "Data".into()
    }
}

/// The component `DataDoc` refers to.
pub(crate) const JSON_VALUE: &str = "JsonValue";

/// Any JSON value whose integers `exact_data` accepts: utoipa's schema model has no `not`,
/// which "a number that is not an integer" needs, so this one is written as JSON.
pub(crate) fn json_value_schema() -> serde_json::Value {
    let exact = eventsys::json::EXACT;
    let value = serde_json::json!({"$ref": format!("#/components/schemas/{JSON_VALUE}")});
    serde_json::json!({
        "description": "Any JSON value; integers within ±2^53",
        "anyOf": [
            {"type": ["string", "boolean", "null"]},
            {"type": "integer", "minimum": -(exact as i64), "maximum": exact},
            {"type": "number", "not": {"type": "integer"}},
            {"type": "array", "items": value},
            {"type": "object", "additionalProperties": value},
        ]
    })
}

/// The body of `PUT /events/{id}`: exactly these three fields are set (absent or `null` ones to
/// their zero value).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
#[schema(as = UpdateInput)]
pub(crate) struct UpdateInput {
    #[serde(deserialize_with = "nullable")]
    #[schema(nullable, max_length = 65536)]
    pub(crate) title: String,
    #[serde(deserialize_with = "nullable")]
    #[schema(nullable, max_length = 65536)]
    pub(crate) description: String,
    #[serde(deserialize_with = "nullable")]
    #[schema(nullable)]
    pub(crate) completed: bool,
}

/// The answer to `PUT /events/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Updated {
    /// Always `event updated successfully`.
    #[schema(example = "event updated successfully")]
    pub(crate) message: &'static str,
    /// The event's revision after the update (also its `ETag`).
    #[schema(minimum = 2)]
    pub(crate) revision: u64,
}

/// The answer to `POST /publish`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Published {
    /// Always `Event broadcasted`.
    #[schema(example = "Event broadcasted")]
    pub(crate) status: &'static str,
    /// The stored event's id.
    #[schema(format = Uuid)]
    pub(crate) id: String,
    /// Its position in the topic's stream.
    #[schema(minimum = 1)]
    pub(crate) seq: u64,
}

impl EventInput {
    /// The request as sent; the gateway names the event when it sends it (`upstream::Keyed`).
    /// Destructured, so a field added to the body does not compile until it is sent on.
    pub(crate) fn into_create(self) -> v1::CreateEventRequest {
        let EventInput {
            user_id,
            title,
            description,
            completed,
            topic,
            data,
        } = self;
        v1::CreateEventRequest {
            id: String::new(),
            user_id,
            title,
            description,
            completed,
            topic,
            data: data.as_ref().map(eventsys::json::to_struct),
        }
    }

    /// As `into_create`, on a topic.
    pub(crate) fn into_publish(self) -> v1::PublishRequest {
        let v1::CreateEventRequest {
            id,
            user_id,
            title,
            description,
            completed,
            topic,
            data,
        } = self.into_create();
        v1::PublishRequest {
            id,
            topic,
            user_id,
            title,
            description,
            completed,
            data,
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
            revision: 1,
            ..Default::default()
        };
        let json = serde_json::to_value(EventJson::from(event)).unwrap();
        assert_eq!(
            json,
            json!({"id": "i", "userId": "u", "title": "", "description": "",
                   "completed": false, "createdAt": "2023-11-14T22:13:20.005Z",
                   "revision": 1})
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
