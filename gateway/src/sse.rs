//! `GET /subscribe/{topic}`: a topic's events as Server-Sent Events (`event: message`,
//! `id: <seq>`, `data: <event JSON>`), resumable with `Last-Event-ID` or `?lastEventId=`. All
//! of this gateway's clients of a topic share one backend stream (`hub`), framed once into a
//! ring each client's response reads (`reader`); when retention dropped what a client asks
//! for, it is told so (`event: gap`) first. `GET /subscribe?topic=…` does the same for the
//! topics of some patterns, its `id` a cursor of every topic's place (`selection`).

mod body;
mod frame;
mod hub;
mod reader;
mod ring;
mod selection;
mod source;

use axum::{extract::State, response::IntoResponse};
use utoipa_axum::{router::OpenApiRouter, routes};

pub(crate) use frame::Frame;
pub(crate) use hub::Hubs;
pub(crate) use source::StreamOf;

use frame::ServerEvent;

use crate::{
    api::{
        ApiError, Credentials, ErrorBody, FeedUser, FeedUserParam, LastEventId, Params,
        ResumeAfter, ResumeQuery, StreamQuery, Topic, TopicParam, TopicsParam, TopicsQuery, flag,
    },
    http::AppState,
    upstream::is_permanent,
};
use eventsys::topics::PRESENCE_PREFIX;
use reader::Reader;
use selection::{Ids, Place};

/// The stream route, registered with its OpenAPI row.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(subscribe))
        .routes(routes!(subscribe_many))
        .routes(routes!(changes))
}

/// `GET /subscribe/{topic}` → 200 `text/event-stream`, `x-backend` naming the backend that
/// feeds the topic's hub.
#[utoipa::path(get, path = "/subscribe/{topic}", tag = "topics",
    summary = "Subscribe to a topic (Server-Sent Events)",
    description = "Every event published on the topic through any backend, in `seq` order, \
        exactly once, as `event: message`, `id: <seq>`, `data: <Event JSON>` frames; comment \
        lines keep the connection alive. With `Last-Event-ID` (or `?lastEventId=`) the stream \
        first replays every event after that `seq`. When retention already dropped some of \
        them, one `event: gap` frame with data `{\"requestedAfter\": N, \"oldestAvailable\": M}` \
        comes first. With `?filter=` only the events the filter accepts are sent (ids stay \
        seqs). With `?presence=1` the topic's joins and leaves come inline as `event: join` \
        and `event: leave` frames, and the `id` is a cursor (as on `GET /subscribe?topic=`).",
    params(
        TopicParam,
        ("Last-Event-ID" = Option<String>, Header, nullable = false,
            description = "The `id` of the last frame the client has (a reconnecting EventSource sends it): a `seq`, or with `?presence=1` a cursor"),
        ResumeQuery,
        StreamQuery,
    ),
    responses(
        (status = 200, description = "The stream, one `ServerEvent` per frame", content_type = "text/event-stream",
            body = ServerEvent),
        (status = 400, description = "A bad topic, filter or resume point", body = ErrorBody),
        (status = 414, description = "The request line passed 8 KiB (a filter too long to send)", body = ErrorBody),
        (status = 431, description = "The request headers passed 8 KiB", body = ErrorBody),
    ),
    security((), ("bearer" = []), ("access_token" = []), ("cookie" = [])),
)]
async fn subscribe(
    State(state): State<AppState>,
    who: Credentials,
    Topic(topic): Topic,
    LastEventId(id): LastEventId,
    Params(StreamQuery { filter, presence }): Params<StreamQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.may_read(&state, &topic)?;
    let present = (topic.clone(), who.subject().to_owned());
    let inline = flag("presence", presence.as_deref())?;
    let filter = filter.filter(|f| !f.is_empty());
    let (of, place) = if !inline && filter.is_none() {
        let ResumeAfter(after) = ResumeAfter::of(id.as_deref())?;
        (StreamOf::Topic(topic), Place::Seq(after))
    } else {
        let presence_topic = format!("{PRESENCE_PREFIX}{topic}");
        let mut topics = vec![topic.as_str()];
        if inline {
            topics.push(&presence_topic);
        }
        let selection = selection::parse(topics, filter.as_deref())?;
        let at = selection.resume(id.as_deref())?;
        (StreamOf::Matching(selection), Place::Topics(at))
    };
    let slot = state.limiters.open_stream(who.client())?;
    // Opened before the response starts, so a bad topic or no backend is a plain HTTP error.
    let reader = Reader::open(&state, &of, place, who.stream_token(), slot).await?;
    // Counted once it is open: a refused stream is nobody's presence; a presence topic's
    // readers are not its topic's.
    let reader = match present.0.starts_with(PRESENCE_PREFIX) {
        true => reader,
        false => reader.present(state.presences.enter(&present.0, &present.1)),
    };
    Ok((reader.backend(), reader))
}

/// `GET /subscribe?topic=orders.*&topic=alerts` → 200 `text/event-stream` of every matching
/// topic's events on one connection, `x-backend` naming the backend that feeds its hub.
#[utoipa::path(get, path = "/subscribe", tag = "topics",
    summary = "Subscribe to many topics (Server-Sent Events)",
    description = "Every event of every topic the patterns match (topics first published after \
        the stream opened included), through any backend: each topic's events in `seq` order, \
        exactly once, as `event: message`, `id: <cursor>`, `data: <Event JSON>` (its `topic` \
        and `seq` say which). Topics interleave in the order the gateway forwards them. The \
        `id` is an opaque cursor of every topic's place: `Last-Event-ID` (or `?lastEventId=`) \
        resumes each topic after its own; topics it does not name (all, without one) start at \
        their beginning. When retention dropped what follows a topic's place, one `event: gap` \
        frame with data `{\"topic\": T, \"requestedAfter\": N, \"oldestAvailable\": M}` comes \
        before that topic's next event. `?filter=` passes only the events it accepts. A \
        cursor of other patterns, or not one, is 400; patterns that match more than 1000 \
        topics are 400.",
    params(
        TopicsParam,
        ("Last-Event-ID" = Option<String>, Header, nullable = false,
            description = "The `id` of the last frame the client has (a reconnecting EventSource sends it)"),
    ),
    responses(
        (status = 200, description = "The stream, one `ServerEvent` per frame", content_type = "text/event-stream",
            body = ServerEvent),
        (status = 400, description = "A bad pattern, filter or cursor", body = ErrorBody),
        (status = 403, description = "A pattern wider than the token's subscribe rights (named)", body = ErrorBody),
        (status = 414, description = "The request line passed 8 KiB (patterns, a filter or `lastEventId` too long to send)", body = ErrorBody),
        (status = 431, description = "The request headers passed 8 KiB (a `Last-Event-ID` too long to send)", body = ErrorBody),
    ),
    security((), ("bearer" = []), ("access_token" = []), ("cookie" = [])),
)]
async fn subscribe_many(
    State(state): State<AppState>,
    who: Credentials,
    TopicsQuery { topics, filter }: TopicsQuery,
    LastEventId(last_event_id): LastEventId,
) -> Result<impl IntoResponse, ApiError> {
    let selection = selection::parse(topics.iter().map(String::as_str), filter.as_deref())?;
    for pattern in selection.patterns().iter() {
        who.may_read_pattern(&state, pattern)?;
    }
    let at = selection.resume(last_event_id.as_deref())?;
    let slot = state.limiters.open_stream(who.client())?;
    let of = StreamOf::Matching(selection);
    let reader = Reader::open(&state, &of, Place::Topics(at), who.stream_token(), slot).await?;
    Ok((reader.backend(), reader))
}

/// `GET /changes?userId=` → 200 `text/event-stream` of a user's changes, `x-backend` naming
/// the backend that feeds the user's hub.
#[utoipa::path(get, path = "/changes", tag = "changes",
    summary = "Follow a user's changes (Server-Sent Events)",
    description = "Every create, update and delete of the user's events (the token's subject; \
        `userId` in anonymous mode), through any backend, in commit order, exactly once: \
        `event: created` or `updated` with `data:` the event after the change (its `revision` \
        included), `event: deleted` with `data:` its `id`, `userId` and last `revision`; \
        `id:` is the change's position in the user's feed. Resume, retention (`event: gap`), \
        keep-alives and limits as for `GET /subscribe/{topic}`.",
    params(
        FeedUserParam,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = "^[0-9]{0,19}$",
            description = "The position of the last change the client has (a reconnecting EventSource sends it)"),
        ResumeQuery,
    ),
    responses(
        (status = 200, description = "The stream, one `ServerEvent` per frame", content_type = "text/event-stream",
            body = ServerEvent),
        (status = 400, description = "No `userId` (anonymous mode) or a bad resume point", body = ErrorBody),
        (status = 403, description = "`userId` names another user than the token's", body = ErrorBody),
    ),
    security((), ("bearer" = []), ("access_token" = []), ("cookie" = [])),
)]
async fn changes(
    State(state): State<AppState>,
    who: Credentials,
    FeedUser(user_id): FeedUser,
    ResumeAfter(after): ResumeAfter,
) -> Result<impl IntoResponse, ApiError> {
    let user = who.feed_user(user_id.as_deref())?;
    let slot = state.limiters.open_stream(who.client())?;
    let of = StreamOf::Changes(user);
    let reader = Reader::open(&state, &of, Place::Seq(after), who.stream_token(), slot).await?;
    Ok((reader.backend(), reader))
}

/// Logs why a (re)subscription or catch-up failed; `true` when it never will succeed as
/// asked (`upstream::is_permanent`), which ends the stream: the client reconnects with a
/// fresh token and `Last-Event-ID`.
fn log_refusal(of: &StreamOf, err: &ApiError) -> bool {
    if is_permanent(err.code) {
        tracing::info!(stream = %of, error = %err.message, "subscription refused: ending the stream");
        true
    } else {
        tracing::warn!(stream = %of, error = %err.message, "resubscribe failed");
        false
    }
}
