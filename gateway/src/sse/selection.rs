//! Multi-topic streams at the gateway: what a client asks one to follow (topic patterns and a
//! filter, checked), how its place is written as an SSE `id` and read back from
//! `Last-Event-ID`, and where a hub or a reader stands in any stream (`Place`).

use std::{collections::BTreeMap, fmt};

use eventsys::topics::{Cursor, CursorError, Filter, Patterns, Selection};

use crate::api::ApiError;

/// Checks what a client sent for a multi-topic (or filtered) stream: a bad pattern or filter is
/// 400, the filter's with the position of the mistake.
pub(crate) fn parse<'a>(
    topics: impl IntoIterator<Item = &'a str>,
    filter: Option<&str>,
) -> Result<Selection, ApiError> {
    let patterns = Patterns::parse(topics).map_err(|e| ApiError::bad_request(e.0))?;
    let filter = match filter.filter(|f| !f.is_empty()) {
        None => None,
        Some(text) => Some(Filter::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))?),
    };
    Ok(Selection::new(patterns, filter))
}

/// A selection's SSE ids: where its stream stands, written and read back.
pub(crate) trait Ids {
    /// The SSE `id` of a frame after which the stream stands at `at`; `Err` when a cursor
    /// would pass its bound (the stream ends, and its client is refused when it comes back).
    fn id(&self, at: &Cursor) -> Result<String, CursorError>;
    /// Where a client resumes: its `Last-Event-ID` (none: every topic from its beginning).
    fn resume(&self, id: Option<&str>) -> Result<Cursor, ApiError>;
}

/// The one topic a selection follows, when it names exactly one: its ids are then that
/// topic's seqs, as `/subscribe/{topic}`'s are.
fn one_topic(selection: &Selection) -> Option<&str> {
    let mut patterns = selection.patterns().iter();
    match (patterns.next(), patterns.next()) {
        (Some(only), None) => only.exact(),
        _ => None,
    }
}

impl Ids for Selection {
    fn id(&self, at: &Cursor) -> Result<String, CursorError> {
        match one_topic(self) {
            Some(topic) => Ok(at.get(topic).to_string()),
            None => at.encode(self.patterns()),
        }
    }

    fn resume(&self, id: Option<&str>) -> Result<Cursor, ApiError> {
        let Some(id) = id.filter(|id| !id.is_empty()) else {
            return Ok(Cursor::default());
        };
        let refused = |e: CursorError| ApiError::bad_request(format!("Last-Event-ID: {e}"));
        match one_topic(self) {
            Some(topic) => {
                let seq: u64 = id.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "Last-Event-ID must be an event seq number (got {id:?})"
                    ))
                })?;
                Cursor::from_positions([(topic.to_owned(), seq)], self.patterns()).map_err(refused)
            }
            None => Cursor::decode(id, self.patterns()).map_err(refused),
        }
    }
}

/// Where a stream stands: a topic's (a change feed's) last `seq` (position), or each topic's
/// of a selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    Seq(u64),
    Topics(Cursor),
}

impl Place {
    /// A single stream's place (0 for a selection's: not one number).
    pub(crate) fn seq(&self) -> u64 {
        match self {
            Place::Seq(seq) => *seq,
            Place::Topics(_) => 0,
        }
    }

    /// A selection's places (none for a single stream).
    pub(crate) fn topics(&self) -> BTreeMap<String, u64> {
        match self {
            Place::Seq(_) => BTreeMap::new(),
            Place::Topics(at) => at.iter().map(|(t, s)| (t.to_owned(), s)).collect(),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Seq(seq) => write!(f, "{seq}"),
            Place::Topics(at) => write!(f, "{} topics' places", at.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_pattern_or_filter_is_400_with_the_reason() {
        let err = parse(["orders"], Some("data.a >")).unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
        assert!(err.message.contains("at position 8"), "{}", err.message);
        let err = parse(["orders*"], None).unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
        assert!(parse(["orders.*", "alerts"], Some("")).is_ok());
    }

    #[test]
    fn one_topics_ids_are_its_seqs_and_others_are_cursors() {
        let one = parse(["orders"], Some("data.a > 1")).unwrap();
        let mut at = one.resume(Some("41")).unwrap();
        assert_eq!(one.id(&at).unwrap(), "41");
        at.advance("orders", 42).unwrap();
        assert_eq!(one.id(&at).unwrap(), "42");
        assert!(one.resume(Some("x")).is_err());

        let many = parse(["orders.*", "alerts"], None).unwrap();
        assert_eq!(many.resume(None).unwrap(), Cursor::default());
        let mut at = Cursor::default();
        at.advance("orders.eu", 3).unwrap();
        let id = many.id(&at).unwrap();
        assert_eq!(many.resume(Some(&id)).unwrap(), at);
        let err = many.resume(Some("41")).unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
        let other = parse(["orders.*"], None).unwrap();
        let err = other.resume(Some(&id)).unwrap_err();
        assert!(err.message.contains("another set"), "{}", err.message);
    }
}
