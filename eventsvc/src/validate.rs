//! Request validation: turns wire requests into store inputs, or into an error whose message
//! names the offending field. Limits are checked here, once, before anything reaches a store.

use eventsys::{
    topics::{Cursor, Filter, Patterns, Selection},
    v1,
};
use prost::Message;
use uuid::Uuid;

use crate::store::{EventPatch, JsonObject, NewEvent, Precondition};

/// Longest `title` or `description`, in characters (Unicode scalar values, what JSON Schema's
/// `maxLength` counts, so the API document can state the limit exactly).
pub(crate) const MAX_TEXT: usize = 64 * 1024;
/// Largest `data` object, in protobuf-encoded bytes.
pub(crate) const MAX_DATA: usize = 256 * 1024;
/// Longest topic name, in bytes.
pub(crate) const MAX_TOPIC: usize = 256;
/// Longest user id, in characters.
pub(crate) const MAX_USER_ID: usize = 256;
/// Page size when a request asks for 0, and the largest page.
pub(crate) const DEFAULT_PAGE: usize = 100;
pub(crate) const MAX_PAGE: usize = 1000;

/// A request field that is not acceptable; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldError(pub String);

/// An event's `data` from the wire; `FieldError` for numbers JSON cannot carry.
fn json_object(data: prost_types::Struct) -> Result<JsonObject, FieldError> {
    eventsys::json::from_struct(data).map_err(|e| FieldError(e.to_string()))
}

fn too_long(field: &str, max: usize, got: usize) -> FieldError {
    FieldError(format!("{field} must be at most {max} bytes (got {got})"))
}

/// A text field of at most `max` characters.
fn at_most_chars(field: &str, max: usize, value: &str) -> Result<(), FieldError> {
    // Cheap first: no text of at most `max` bytes has more than `max` characters.
    if value.len() <= max {
        return Ok(());
    }
    let got = value.chars().count();
    if got > max {
        return Err(FieldError(format!(
            "{field} must be at most {max} characters (got {got})"
        )));
    }
    Ok(())
}

/// Quotes client input in an error message without echoing a huge value back.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// A topic name: 1..=256 bytes of `[A-Za-z0-9._:-]`.
pub(crate) fn topic(topic: &str) -> Result<(), FieldError> {
    if topic.is_empty() {
        // The REST contract's wording, which existing clients show to people.
        return Err(FieldError("Topic cannot be empty".into()));
    }
    if topic.len() > MAX_TOPIC {
        return Err(too_long("topic", MAX_TOPIC, topic.len()));
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(FieldError(format!(
            "topic may only contain A-Z a-z 0-9 . _ : - (found {bad:?} in {})",
            quoted(topic)
        )));
    }
    Ok(())
}

/// What a Subscribe asks for.
pub(crate) enum Subscribing {
    /// One topic, every event, after `after_seq`.
    Topic { topic: String, after_seq: u64 },
    /// The topics of some patterns (or one topic, `one_topic`, with a filter), each after its
    /// place in `at`.
    Selected {
        selection: Selection,
        at: Cursor,
        one_topic: bool,
    },
}

/// A Subscribe request: a topic, or patterns with their places; either with a filter.
pub(crate) fn subscription(req: v1::SubscribeRequest) -> Result<Subscribing, FieldError> {
    let v1::SubscribeRequest {
        topic: name,
        after_seq,
        patterns,
        filter: filter_text,
        after_seqs,
        cursor,
    } = req;
    let filter = filter(&filter_text)?;
    if patterns.is_empty() {
        readable_topic(&name)?;
        if !after_seqs.is_empty() || !cursor.is_empty() {
            return Err(FieldError(
                "after_seqs and cursor go with patterns; a topic resumes after after_seq".into(),
            ));
        }
        let Some(filter) = filter else {
            return Ok(Subscribing::Topic {
                topic: name,
                after_seq,
            });
        };
        let patterns = Patterns::parse([name.as_str()]).map_err(|e| FieldError(e.0))?;
        let mut at = Cursor::default();
        at.advance(&name, after_seq)
            .map_err(|e| FieldError(e.to_string()))?;
        return Ok(Subscribing::Selected {
            selection: Selection::new(patterns, Some(filter)),
            at,
            one_topic: true,
        });
    }
    if !name.is_empty() || after_seq != 0 {
        return Err(FieldError(
            "give topic (and after_seq) or patterns (and after_seqs or cursor), not both".into(),
        ));
    }
    let patterns =
        Patterns::parse(patterns.iter().map(String::as_str)).map_err(|e| FieldError(e.0))?;
    let at = match (after_seqs.is_empty(), cursor.is_empty()) {
        (_, true) => Cursor::from_positions(after_seqs, &patterns),
        (true, false) => Cursor::decode(&cursor, &patterns),
        (false, false) => return Err(FieldError("give after_seqs or cursor, not both".into())),
    }
    .map_err(|e| FieldError(format!("after_seqs or cursor: {e}")))?;
    Ok(Subscribing::Selected {
        selection: Selection::new(patterns, filter),
        at,
        one_topic: false,
    })
}

/// An optional filter: empty is none.
pub(crate) fn filter(text: &str) -> Result<Option<Filter>, FieldError> {
    if text.is_empty() {
        return Ok(None);
    }
    Filter::parse(text)
        .map(Some)
        .map_err(|e| FieldError(e.to_string()))
}

/// A topic to read: a topic name, or a topic's presence topic (`$presence.<topic>`), which
/// only the backends write.
pub(crate) fn readable_topic(name: &str) -> Result<(), FieldError> {
    topic(
        name.strip_prefix(eventsys::topics::PRESENCE_PREFIX)
            .unwrap_or(name),
    )
}

/// An event id: a UUID in any of its usual spellings.
pub(crate) fn id(id: &str) -> Result<Uuid, FieldError> {
    Uuid::parse_str(id).map_err(|_| FieldError(format!("id must be a UUID (got {})", quoted(id))))
}

/// The optional owner scope: empty means every user.
pub(crate) fn owner(user_id: String) -> Result<Option<String>, FieldError> {
    at_most_chars("user_id", MAX_USER_ID, &user_id)?;
    Ok(Some(user_id).filter(|u| !u.is_empty()))
}

/// Whose change feed: a user is required (events without an owner have no feed).
pub(crate) fn feed_user(user_id: String) -> Result<String, FieldError> {
    owner(user_id)?.ok_or_else(|| {
        FieldError("user_id is required: events without an owner have no change feed".into())
    })
}

/// A page size: 0 asks for the default.
pub(crate) fn limit(limit: u32) -> Result<usize, FieldError> {
    match limit as usize {
        0 => Ok(DEFAULT_PAGE),
        n if n > MAX_PAGE => Err(FieldError(format!(
            "limit must be at most {MAX_PAGE} (got {n})"
        ))),
        n => Ok(n),
    }
}

fn text(field: &str, value: &str) -> Result<(), FieldError> {
    at_most_chars(field, MAX_TEXT, value)
}

/// The caller's id for a new event: none, or a UUID (normalised).
fn new_id(id: &str) -> Result<Option<Uuid>, FieldError> {
    if id.is_empty() {
        return Ok(None);
    }
    self::id(id).map(Some)
}

/// The one check of a new event's fields, for creates and publishes alike (a publish is a
/// create whose topic is required). Destructured in full: a field added to the request does
/// not compile until it is checked here.
pub(crate) fn create(req: v1::CreateEventRequest) -> Result<NewEvent, FieldError> {
    let v1::CreateEventRequest {
        id,
        user_id,
        title,
        description,
        completed,
        topic,
        data,
    } = req;
    if !topic.is_empty() {
        self::topic(&topic)?;
    }
    at_most_chars("user_id", MAX_USER_ID, &user_id)?;
    let id = new_id(&id)?.map(|chosen| crate::ids::owned(&user_id, chosen));
    text("title", &title)?;
    text("description", &description)?;
    let data = match data {
        None => None,
        Some(data) if data.encoded_len() > MAX_DATA => {
            return Err(too_long("data", MAX_DATA, data.encoded_len()));
        }
        // An empty object is "no data", as the REST contract omits it.
        Some(data) => Some(json_object(data)?).filter(|d| !d.is_empty()),
    };
    Ok(NewEvent {
        id,
        user_id,
        title,
        description,
        completed,
        topic,
        data,
        key: None,
    })
}

/// A publish: a create on a topic, which it must name.
pub(crate) fn publish(req: v1::PublishRequest) -> Result<NewEvent, FieldError> {
    let v1::PublishRequest {
        topic,
        user_id,
        title,
        description,
        completed,
        data,
        id,
    } = req;
    self::topic(&topic)?;
    create(v1::CreateEventRequest {
        id,
        user_id,
        title,
        description,
        completed,
        topic,
        data,
    })
}

pub(crate) fn patch(
    title: String,
    description: String,
    completed: bool,
) -> Result<EventPatch, FieldError> {
    text("title", &title)?;
    text("description", &description)?;
    Ok(EventPatch {
        title,
        description,
        completed,
    })
}

/// A request's `if_revision` and `if_exists`: revisions start at 1, so 0 is none.
pub(crate) fn precondition(if_revision: u64, if_exists: bool) -> Precondition {
    match (if_revision, if_exists) {
        (0, false) => Precondition::None,
        (0, true) => Precondition::Exists,
        (revision, _) => Precondition::Revision(revision),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(topic("orders.eu-west:v1_2").is_ok());
        assert_eq!(topic("").unwrap_err().0, "Topic cannot be empty");
        assert!(topic(&"a".repeat(256)).is_ok());
        assert!(
            topic(&"a".repeat(257))
                .unwrap_err()
                .0
                .starts_with("topic must be at most 256")
        );
        let err = topic("a b").unwrap_err().0;
        assert!(
            err.starts_with("topic may only contain") && err.contains("' '"),
            "{err}"
        );
        assert!(topic("naïve").is_err());
    }

    #[test]
    fn ids_and_owners() {
        let u = Uuid::new_v4();
        assert_eq!(id(&u.to_string()), Ok(u));
        let err = id(&"x".repeat(1000)).unwrap_err().0;
        assert!(
            err.starts_with("id must be a UUID") && err.len() < 100,
            "{err}"
        );
        assert_eq!(owner(String::new()), Ok(None));
        assert_eq!(owner("u1".into()), Ok(Some("u1".into())));
        assert!(owner("u".repeat(257)).unwrap_err().0.starts_with("user_id"));
    }

    #[test]
    fn limits() {
        assert_eq!(limit(0), Ok(DEFAULT_PAGE));
        assert_eq!(limit(1000), Ok(1000));
        assert!(limit(1001).is_err());
    }

    #[test]
    fn text_and_data_sizes() {
        let ok = v1::CreateEventRequest {
            title: "t".repeat(MAX_TEXT),
            ..Default::default()
        };
        assert!(create(ok).is_ok());
        let long = v1::CreateEventRequest {
            description: "d".repeat(MAX_TEXT + 1),
            ..Default::default()
        };
        assert!(
            create(long)
                .unwrap_err()
                .0
                .starts_with("description must be at most")
        );

        let big = eventsys::json::to_struct(
            &serde_json::json!({ "blob": "x".repeat(MAX_DATA) })
                .as_object()
                .unwrap()
                .clone(),
        );
        let req = v1::PublishRequest {
            topic: "t".into(),
            data: Some(big),
            ..Default::default()
        };
        assert!(
            publish(req)
                .unwrap_err()
                .0
                .starts_with("data must be at most")
        );
    }

    #[test]
    fn publish_requires_topic_and_create_checks_one_if_given() {
        let err = publish(v1::PublishRequest::default()).unwrap_err();
        assert_eq!(err.0, "Topic cannot be empty");
        assert!(create(v1::CreateEventRequest::default()).is_ok());
        let bad = v1::CreateEventRequest {
            topic: "no spaces".into(),
            ..Default::default()
        };
        assert!(create(bad).is_err());
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
