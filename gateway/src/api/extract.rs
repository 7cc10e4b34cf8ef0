//! Extractors for the contract's inputs, each rejecting with our JSON error: a JSON body read
//! whatever its Content-Type, the owner (`?userId=`), an event id, a topic, and the SSE resume
//! point (`Last-Event-ID` or `?lastEventId=`).

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
};
use http::request::Parts;
use serde::{Deserialize, de::DeserializeOwned};
use utoipa::IntoParams;

use super::ApiError;
use crate::http::AppState;

/// A JSON body whatever its Content-Type (the old service's clients do not all send one).
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state).await?;
        // serde reads a struct from an array too (`[null, null]` would be an event).
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(ApiError::bad_request(
                "invalid JSON: the body must be a JSON object",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON: {}", describe(&e))))
    }
}

/// Field names quoted in an error at most this long (they may be the client's own).
const MAX_QUOTED_NAME: usize = 64;

/// What is wrong with a JSON body and where, without its text: serde quotes the value it
/// refused (`invalid type: string "…", expected a boolean`), and a client's 300-character value
/// came back in an 811-byte answer. Values (`"…"`) are left out; names (`` `…` ``: a field,
/// a variant) are kept up to `MAX_QUOTED_NAME` characters.
fn describe(err: &serde_json::Error) -> String {
    if err.is_eof() {
        return format!(
            "the body ends early (line {} column {})",
            err.line(),
            err.column()
        );
    }
    let text = err.to_string();
    let mut out = String::with_capacity(text.len().min(256));
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // serde writes the value as Rust's `Debug` does: quotes inside are escaped.
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("(not shown)");
            }
            '`' => {
                let name: String = chars.by_ref().take_while(|c| *c != '`').collect();
                out.push('`');
                if name.chars().count() > MAX_QUOTED_NAME {
                    out.extend(name.chars().take(MAX_QUOTED_NAME));
                    out.push('…');
                } else {
                    out.push_str(&name);
                }
                out.push('`');
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod body_errors {
    use super::*;

    fn error_of(body: &str) -> String {
        let err = serde_json::from_str::<std::collections::BTreeMap<String, bool>>(body)
            .expect_err("refused");
        describe(&err)
    }

    #[test]
    fn a_refused_value_is_not_repeated_but_what_and_where_are_said() {
        let value = "v".repeat(300);
        let said = error_of(&format!(r#"{{"completed": "{value}"}}"#));
        assert!(!said.contains("vvv"), "{said}");
        assert!(said.contains("expected a boolean"), "{said}");
        assert!(said.contains("line 1 column 316"), "{said}");
        assert!(said.len() < 120, "{said}");
        // Escaped quotes inside the value do not end it early.
        let said = error_of(r#"{"completed": "a "quoted" secret"}"#);
        assert!(!said.contains("secret"), "{said}");
    }

    #[test]
    fn syntax_errors_and_early_ends_say_where() {
        assert!(error_of("{not json").contains("line 1 column 2"));
        assert!(error_of(r#"{"completed": tru"#).contains("line 1"));
        assert_eq!(
            error_of(r#"{"completed": "#),
            "the body ends early (line 1 column 14)"
        );
    }
}

/// Query parameters, rejected with our JSON error.
pub(crate) struct Params<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(params) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Params(params))
    }
}

/// The owner an event request acts for (`?userId=`; empty when not given).
pub(crate) struct UserId(pub(crate) String);

/// `?userId=`, as `UserId` reads it.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UserIdParam {
    /// Scopes the request to this user's events (anonymous mode). In token mode the token's
    /// subject decides: another user's id is 403, absent means the caller.
    #[serde(rename = "userId", default)]
    #[param(max_length = 256, nullable = false)]
    user_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for UserId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(owner) = Query::<UserIdParam>::from_request_parts(parts, state).await?;
        Ok(UserId(owner.user_id.unwrap_or_default()))
    }
}

/// `?userId=` of a change feed as given: absent is `None` (in token mode the caller); given, it
/// names a user (empty names nobody: 400).
pub(crate) struct FeedUser(pub(crate) Option<String>);

/// `?userId=` of a change feed, as `FeedUser` reads it: required in anonymous mode (whose
/// feed?), the token's subject otherwise.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FeedUserParam {
    /// Whose changes (anonymous mode, required). In token mode the token's subject: another
    /// user's id is 403, absent means the caller.
    #[serde(rename = "userId")]
    #[param(required = true, min_length = 1, max_length = 256)]
    user_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for FeedUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(given) = Query::<FeedUserParam>::from_request_parts(parts, state).await?;
        match given.user_id {
            Some(user) if user.is_empty() => Err(ApiError::bad_request(
                "userId must name a user (it is empty)",
            )),
            user => Ok(FeedUser(user)),
        }
    }
}

/// The `{id}` of `/events/{id}`, normalised; an id that is not a UUID names no event (404).
pub(crate) struct EventId(pub(crate) String);

/// `{id}`, as `EventId` reads it (for the API description).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "only describes the parameter")]
pub(crate) struct EventIdParam {
    /// The event's id (a UUID; anything else names no event: 404).
    #[param(format = Uuid)]
    id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for EventId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state).await?;
        uuid::Uuid::parse_str(&id)
            .map(|u| EventId(u.to_string()))
            .map_err(|_| ApiError::not_found())
    }
}

/// The `{topic}` of `/topic-events/{topic}` and `/subscribe/{topic}`, as given: backends
/// validate topics.
pub(crate) struct Topic(pub(crate) String);

/// `{topic}`, as `Topic` reads it (for the API description).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "only describes the parameter")]
pub(crate) struct TopicParam {
    /// The topic: 1 to 256 of `A-Z a-z 0-9 . _ : -`.
    #[param(min_length = 1, max_length = 256, pattern = "^[A-Za-z0-9._:-]+$")]
    topic: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Topic {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(topic) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(Topic(topic))
    }
}

/// The `seq` an SSE stream resumes after: the `Last-Event-ID` header (what a browser sends
/// when it reconnects), else `?lastEventId=`, else 0 (the whole topic).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ResumeAfter(pub(crate) u64);

/// Where an SSE stream resumes, as `ResumeAfter` reads it.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ResumeQuery {
    /// The `seq` of the last event the client has, for a browser's first connect (the
    /// `Last-Event-ID` header wins when both are sent).
    #[serde(rename = "lastEventId")]
    #[param(pattern = "^[0-9]{0,19}$", nullable = false)]
    last_event_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ResumeAfter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(query) = Query::<ResumeQuery>::from_request_parts(parts, state).await?;
        // An empty `Last-Event-ID` is no id (EventSource sends none until it has one). Both
        // are checked even when the header wins: a malformed parameter is an error either way.
        let header = parts
            .headers
            .get("last-event-id")
            .map(|value| value.to_str().unwrap_or("?").trim());
        let header = seq(header)?;
        let query = seq(query.last_event_id.as_deref())?;
        Ok(ResumeAfter(header.or(query).unwrap_or(0)))
    }
}

/// The id an SSE stream resumes after, as sent: the `Last-Event-ID` header (trimmed), else
/// `?lastEventId=`; empty is none. Read as a `seq` (`ResumeAfter::of`) or a cursor.
pub(crate) struct LastEventId(pub(crate) Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(query) = Query::<ResumeQuery>::from_request_parts(parts, state).await?;
        let header = match parts.headers.get("last-event-id") {
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(LastEventId(
            header
                .filter(|h| !h.is_empty())
                .or(query.last_event_id)
                .filter(|id| !id.is_empty()),
        ))
    }
}

impl ResumeAfter {
    /// A stream's `seq` to resume after, from its id (none: 0).
    pub(crate) fn of(id: Option<&str>) -> Result<ResumeAfter, ApiError> {
        Ok(ResumeAfter(seq(id)?.unwrap_or(0)))
    }
}

/// `?filter=` and `?presence=` of a single topic's stream.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// Only events this filter accepts (docs/api.md, "Filters"; at most 1024 bytes).
    #[param(max_length = 1024, nullable = false)]
    pub(crate) filter: Option<String>,
    /// `1`: the topic's joins and leaves inline (`event: join`, `event: leave`); the `id`
    /// is then a cursor, as on `GET /subscribe?topic=`.
    #[param(nullable = false, value_type = Option<String>, pattern = "^(0|1|true|false)$")]
    pub(crate) presence: Option<String>,
}

/// A `0`/`1` (`false`/`true`) query flag; absent is off.
pub(crate) fn flag(name: &str, given: Option<&str>) -> Result<bool, ApiError> {
    match given {
        None | Some("0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name} must be 1 or 0 (got {other:?})"
        ))),
    }
}

/// A resume point as given: absent or empty is none.
fn seq(given: Option<&str>) -> Result<Option<u64>, ApiError> {
    match given {
        None | Some("") => Ok(None),
        Some(id) => id.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "Last-Event-ID must be an event seq number (got {id:?})"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn resume(uri: &str, header: Option<&str>) -> Result<ResumeAfter, ApiError> {
        let mut request = http::Request::builder().uri(uri);
        if let Some(value) = header {
            request = request.header("last-event-id", value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        ResumeAfter::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn header_wins_over_query_and_bad_ids_are_rejected() {
        assert_eq!(resume("/s/t", None).await.unwrap(), ResumeAfter(0));
        assert_eq!(
            resume("/s/t?lastEventId=7", None).await.unwrap(),
            ResumeAfter(7)
        );
        assert_eq!(
            resume("/s/t?lastEventId=7", Some("12")).await.unwrap(),
            ResumeAfter(12)
        );
        let err = resume("/s/t?lastEventId=7", Some("x1")).await.unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
        let err = resume("/s/t?lastEventId=x", Some("12")).await.unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
        assert_eq!(
            resume("/s/t?lastEventId=7", Some("")).await.unwrap(),
            ResumeAfter(7)
        );
    }
}

/// A multi-topic stream's query: `?topic=` (1 to 16, repeatable) and `?filter=` (its resume
/// id is `LastEventId`'s).
pub(crate) struct TopicsQuery {
    pub(crate) topics: Vec<String>,
    pub(crate) filter: Option<String>,
}

/// `GET /subscribe`'s query, as `TopicsQuery` reads it (for the API description).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "only describes the parameters")]
pub(crate) struct TopicsParam {
    /// A topic pattern, repeatable (1 to 16): `orders` (that topic), `orders.*` (every topic
    /// starting `orders.`), `*` (every topic).
    #[param(min_items = 1, max_items = 16, explode = true)]
    topic: Vec<String>,
    /// Only events this filter accepts (docs/api.md, "Filters"; at most 1024 bytes).
    #[param(max_length = 1024, nullable = false)]
    filter: Option<String>,
    /// The `id` of the last frame the client has, for a browser's first connect (the
    /// `Last-Event-ID` header wins when both are sent).
    #[param(rename = "lastEventId", nullable = false)]
    last_event_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for TopicsQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let mut query = TopicsQuery {
            topics: Vec::new(),
            filter: None,
        };
        let pairs = form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes());
        for (key, value) in pairs {
            match &*key {
                "topic" => query.topics.push(value.into_owned()),
                "filter" if query.filter.is_some() => {
                    return Err(ApiError::bad_request("give one filter"));
                }
                "filter" => query.filter = Some(value.into_owned()),
                _ => {}
            }
            if query.topics.len() > eventsys::topics::MAX_PATTERNS {
                break;
            }
        }
        Ok(query)
    }
}

/// `?filter=` of a single stream or a topic's history: only the events it accepts.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FilterQuery {
    /// Only events this filter accepts (docs/api.md, "Filters"; at most 1024 bytes).
    #[param(max_length = 1024, nullable = false)]
    pub(crate) filter: Option<String>,
}
