//! The REST endpoints of `docs/api.md` for events and topics, each one backend rpc (list
//! endpoints page through theirs, see `listing`). A handler reads like its contract row:
//! extract, call, answer with the status, the serving backend and the body.

use axum::{Json, extract::State, response::IntoResponse};
use eventsys::{topics::Filter, v1};
use http::StatusCode;
use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use tonic::Code;
use utoipa::IntoParams;

use crate::http::AppState;

use super::{
    ApiError, Credentials, ErrorBody,
    error::precondition_failed,
    extract::{
        EventId, EventIdParam, FilterQuery, JsonBody, Params, Topic, TopicParam, UserId,
        UserIdParam,
    },
    json::{EventInput, EventJson, PublishInput, Published, UpdateInput, Updated},
    keyed::{KeyHeader, KeyHeaderParam},
    listing::{self, Limit, Page, Pager},
    revision::{ETag, IfMatch, IfMatchParam},
};
use crate::upstream::{Answer, Bearer, CallError, Failure, Keyed};

/// `POST /events` → 201 and the stored event.
#[utoipa::path(post, path = "/events", tag = "events",
    summary = "Create an event",
    request_body = EventInput,
    params(KeyHeaderParam),
    responses(
        (status = 201, description = "The stored event", body = EventJson,
            headers(("idempotent-replayed" = String,
                description = "`true` when this is the answer an earlier request with the same `Idempotency-Key` got"),
                ("etag" = String, description = "The event's revision, quoted (`\"1\"`)"))),
        (status = 400, description = "Bad JSON, wrong types, a field over its limit or a malformed `Idempotency-Key`", body = ErrorBody),
        (status = 409, description = "A request with this `Idempotency-Key` is still in progress (`ABORTED`, with `Retry-After`)", body = ErrorBody),
        (status = 422, description = "This `Idempotency-Key` was used for a request with another body", body = ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
pub(crate) async fn create_event(
    State(state): State<AppState>,
    who: Credentials,
    KeyHeader(key): KeyHeader,
    JsonBody(mut input): JsonBody<EventInput>,
) -> Result<impl IntoResponse, ApiError> {
    input.user_id = who.caller()?.owner(&input.user_id)?;
    let create = Keyed {
        request: input.into_create(),
        key,
    };
    let answer = state.upstream.call(create, who.bearer.as_ref()).await?;
    let (event, outcome) = answer.message;
    let tag = ETag(event.revision);
    let event = EventJson::from(event);
    Ok((
        StatusCode::CREATED,
        answer.backend,
        outcome,
        tag,
        Json(event),
    ))
}

/// `GET /events?userId=&limit=&pageToken=` → 200 and the user's events (everyone's without
/// `userId`), streamed; with `limit`, one page and a `Link` to the next.
#[utoipa::path(get, path = "/events", tag = "events",
    summary = "List events",
    description = "The user's events (everyone's without `userId`; in token mode the caller's). \
        Without `limit` the whole list, streamed; with it one page, and `Link: <…>; rel=\"next\"` \
        when more follow.",
    params(UserIdParam, Limit, PageToken),
    responses(
        (status = 200, description = "The events, oldest first", body = Vec<EventJson>,
            headers(("link" = String, description = "`<next page URL>; rel=\"next\"` when the page was cut"))),
        (status = 400, description = "A bad `limit` or `pageToken`", body = ErrorBody),
    ),
    security((), ("bearer" = []), ("access_token" = [])),
)]
pub(crate) async fn list_events(
    State(state): State<AppState>,
    who: Credentials,
    UserId(given): UserId,
    Params(page): Params<PageToken>,
    Params(limit): Params<Limit>,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = who.caller()?.owner(&given)?;
    let pager = UserEvents {
        state,
        bearer: who.bearer,
        user_id,
        given,
    };
    listing::respond(pager, page.page_token.filter(|t| !t.is_empty()), limit).await
}

/// `?pageToken=`: where a page of `GET /events` starts (from the previous page's `Link`).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageToken {
    /// Copied from the previous page's `Link` (empty: the first page).
    #[serde(rename = "pageToken")]
    #[param(pattern = "^([0-9a-f]{24})?$", nullable = false)]
    page_token: Option<String>,
}

/// A user's events (or everyone's), paged by the backends' page tokens.
struct UserEvents {
    state: AppState,
    bearer: Option<Bearer>,
    user_id: String,
    /// `userId` as the client gave it, for the next page's URL.
    given: String,
}

impl Pager for UserEvents {
    type Cursor = String;
    type Item = v1::Event;

    async fn fetch(
        &self,
        from: Option<String>,
        limit: u32,
    ) -> Result<Answer<Page<String>>, CallError> {
        let request = v1::ListEventsRequest {
            user_id: self.user_id.clone(),
            limit,
            page_token: from.unwrap_or_default(),
        };
        let answer = self
            .state
            .upstream
            .call(request, self.bearer.as_ref())
            .await?;
        let token = answer.message.next_page_token;
        Ok(Answer {
            backend: answer.backend,
            message: Page {
                items: answer.message.events,
                next: Some(token).filter(|t| !t.is_empty()),
                oldest_available: None,
            },
        })
    }

    fn link(&self, from: &String, limit: u32) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if !self.given.is_empty() {
            query.append_pair("userId", &self.given);
        }
        query.append_pair("limit", &limit.to_string());
        query.append_pair("pageToken", from);
        format!("/events?{}", query.finish())
    }
}

/// `GET /events/{id}?userId=` → 200 and the event, 404 if it is not there (or not theirs).
#[utoipa::path(get, path = "/events/{id}", tag = "events",
    summary = "Read an event",
    params(EventIdParam, UserIdParam),
    responses(
        (status = 200, description = "The event", body = EventJson,
            headers(("etag" = String, description = "The event's revision, quoted (`\"3\"`): what `If-Match` names"))),
        (status = 400, description = "A `userId` over 256 characters", body = ErrorBody),
        (status = 404, description = "No such event (or another user's)", body = ErrorBody,
            example = json!({"error": "event not found", "message": "event not found", "code": "NOT_FOUND"})),
    ),
    security((), ("bearer" = []), ("access_token" = [])),
)]
pub(crate) async fn get_event(
    State(state): State<AppState>,
    who: Credentials,
    EventId(id): EventId,
    UserId(user_id): UserId,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = who.caller()?.owner(&user_id)?;
    let answer = state
        .upstream
        .call(v1::GetEventRequest { id, user_id }, who.bearer.as_ref())
        .await?;
    Ok((
        StatusCode::OK,
        answer.backend,
        ETag(answer.message.revision),
        Json(EventJson::from(answer.message)),
    ))
}

/// `PUT /events/{id}?userId=` (`If-Match:`) → 200 `{"message": "event updated successfully",
/// "revision"}`.
#[utoipa::path(put, path = "/events/{id}", tag = "events",
    summary = "Update an event's title, description and completed",
    params(EventIdParam, UserIdParam, IfMatchParam),
    request_body = UpdateInput,
    responses(
        (status = 200, description = "Updated", body = Updated,
            headers(("etag" = String, description = "The event's new revision, quoted"))),
        (status = 400, description = "Bad JSON, wrong types, a field over its limit or a malformed `If-Match`", body = ErrorBody),
        (status = 404, description = "No such event (or another user's), without `If-Match`", body = ErrorBody),
        (status = 412, description = "`If-Match` did not hold: the event is at another revision (`revision` says which) or, without `revision`, does not exist (for you)", body = ErrorBody,
            example = json!({"error": "the event is at revision 4", "message": "the event is at revision 4", "code": "FAILED_PRECONDITION", "revision": 4})),
    ),
    security((), ("bearer" = [])),
)]
pub(crate) async fn update_event(
    State(state): State<AppState>,
    who: Credentials,
    EventId(id): EventId,
    UserId(user_id): UserId,
    if_match: IfMatch,
    JsonBody(input): JsonBody<UpdateInput>,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = who.caller()?.owner(&user_id)?;
    let (if_revision, if_exists) = if_match.fields();
    let request = v1::UpdateEventRequest {
        id,
        user_id,
        title: input.title,
        description: input.description,
        completed: input.completed,
        if_revision,
        if_exists,
    };
    let answer = state.upstream.call(request, who.bearer.as_ref()).await?;
    let revision = answer.message.revision;
    let body = Updated {
        message: "event updated successfully",
        revision,
    };
    Ok((StatusCode::OK, answer.backend, ETag(revision), Json(body)))
}

/// `DELETE /events/{id}?userId=` (`If-Match:`) → 204.
#[utoipa::path(delete, path = "/events/{id}", tag = "events",
    summary = "Delete an event",
    params(EventIdParam, UserIdParam, IfMatchParam),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A `userId` over 256 characters or a malformed `If-Match`", body = ErrorBody),
        (status = 404, description = "No such event (or another user's), without `If-Match`", body = ErrorBody),
        (status = 412, description = "`If-Match` did not hold: the event is at another revision (`revision` says which) or, without `revision`, does not exist (for you)", body = ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
pub(crate) async fn delete_event(
    State(state): State<AppState>,
    who: Credentials,
    EventId(id): EventId,
    UserId(user_id): UserId,
    if_match: IfMatch,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = who.caller()?.owner(&user_id)?;
    let (if_revision, if_exists) = if_match.fields();
    let request = v1::DeleteEventRequest {
        id,
        user_id,
        if_revision,
        if_exists,
    };
    let backend = match state.upstream.call(request, who.bearer.as_ref()).await {
        Ok(answer) => answer.backend,
        // The attempt whose backend died may have deleted the event before it did: the event
        // is gone, which is what the client asked for.
        Err(CallError {
            retried: true,
            failure: Failure::Status { status, backend },
        }) if gone(&status) => backend,
        Err(err) => return Err(err.into()),
    };
    Ok((StatusCode::NO_CONTENT, backend, ()))
}

/// Whether a delete's refusal says its event does not exist: NOT_FOUND, or (with `If-Match`)
/// FAILED_PRECONDITION at no revision.
fn gone(status: &tonic::Status) -> bool {
    status.code() == Code::NotFound || precondition_failed(status) == Some(None)
}

/// `POST /publish` → 200 `{"status": "Event broadcasted", "id", "seq"}`.
#[utoipa::path(post, path = "/publish", tag = "topics",
    summary = "Publish an event on a topic",
    description = "Stores the event and delivers it to every subscriber of its topic, in `seq` order.",
    request_body = PublishInput,
    params(KeyHeaderParam),
    responses(
        (status = 200, description = "Stored and delivered", body = Published,
            headers(("idempotent-replayed" = String,
                description = "`true` when this is the answer an earlier request with the same `Idempotency-Key` got"))),
        (status = 400, description = "No topic (`Topic cannot be empty`), bad JSON, wrong types, a field over its limit or a malformed `Idempotency-Key`", body = ErrorBody),
        (status = 409, description = "A request with this `Idempotency-Key` is still in progress (`ABORTED`, with `Retry-After`)", body = ErrorBody),
        (status = 422, description = "This `Idempotency-Key` was used for a request with another body", body = ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
pub(crate) async fn publish(
    State(state): State<AppState>,
    who: Credentials,
    KeyHeader(key): KeyHeader,
    JsonBody(PublishInput(mut input)): JsonBody<PublishInput>,
) -> Result<impl IntoResponse, ApiError> {
    let caller = who.caller()?;
    caller.may_publish(&input.topic)?;
    input.user_id = caller.owner(&input.user_id)?;
    let publish = Keyed {
        request: input.into_publish(),
        key,
    };
    let answer = state.upstream.call(publish, who.bearer.as_ref()).await?;
    let (event, outcome) = answer.message;
    let body = Published {
        status: "Event broadcasted",
        id: event.id,
        seq: event.seq,
    };
    Ok((StatusCode::OK, answer.backend, outcome, Json(body)))
}

/// `GET /topic-events/{topic}?afterSeq=&limit=` → 200 and the topic's events, oldest first,
/// streamed; with `limit`, one page and a `Link` to the next.
#[utoipa::path(get, path = "/topic-events/{topic}", tag = "topics",
    summary = "A topic's history",
    description = "The topic's events after `afterSeq`, oldest first. Without `limit` all of them, \
        streamed; with it one page, and `Link: <…>; rel=\"next\"` when more follow. With \
        `?filter=` only the events it accepts; a page then reads at most ten pages' worth and \
        may hold fewer than `limit` (or none) with a `Link` on.",
    params(TopicParam, AfterSeq, Limit, FilterQuery),
    responses(
        (status = 200, description = "The events, in `seq` order", body = Vec<EventJson>,
            headers(
                ("link" = String, description = "`<next page URL>; rel=\"next\"` when the page was cut"),
                ("events-oldest-available" = u64, description = "The oldest `seq` retention kept, when the read began before it"),
            )),
        (status = 400, description = "A bad topic, `afterSeq`, `limit` or filter", body = ErrorBody),
        (status = 414, description = "The request line passed 8 KiB (a filter too long to send)", body = ErrorBody),
        (status = 431, description = "The request headers passed 8 KiB", body = ErrorBody),
    ),
    security((), ("bearer" = []), ("access_token" = [])),
)]
pub(crate) async fn topic_events(
    State(state): State<AppState>,
    who: Credentials,
    Topic(topic): Topic,
    Params(after): Params<AfterSeq>,
    Params(limit): Params<Limit>,
    Params(FilterQuery { filter }): Params<FilterQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.may_read(&state, &topic)?;
    // Checked here too, so a mistake is 400 with its position before any backend is asked.
    let filter = match filter.filter(|f| !f.is_empty()) {
        Some(text) => Some(
            Filter::parse(&text)
                .map_err(|e| ApiError::bad_request(e.to_string()))?
                .to_string(),
        ),
        None => None,
    };
    let pager = TopicHistory {
        state,
        bearer: who.bearer,
        topic,
        filter,
    };
    listing::respond(pager, Some(after.after_seq.unwrap_or(0)), limit).await
}

/// `?afterSeq=`: history after this `seq` (0 or absent: from the start).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AfterSeq {
    /// Events with a greater `seq` are returned.
    #[serde(rename = "afterSeq")]
    #[param(minimum = 0, maximum = 18446744073709551615_u64, nullable = false)]
    after_seq: Option<u64>,
}

/// A topic's history, paged by `seq`, its filter (canonical text) applied.
struct TopicHistory {
    state: AppState,
    bearer: Option<Bearer>,
    topic: String,
    filter: Option<String>,
}

impl Pager for TopicHistory {
    type Cursor = u64;
    type Item = v1::Event;

    async fn fetch(&self, from: Option<u64>, limit: u32) -> Result<Answer<Page<u64>>, CallError> {
        let request = v1::ListTopicEventsRequest {
            topic: self.topic.clone(),
            after_seq: from.unwrap_or(0),
            limit,
            filter: self.filter.clone().unwrap_or_default(),
        };
        let answer = self
            .state
            .upstream
            .call(request, self.bearer.as_ref())
            .await?;
        let reply = answer.message;
        // With a filter, the page may end past its last event (or hold none).
        let last = reply
            .next_after_seq
            .max(reply.events.last().map_or(0, |e| e.seq));
        Ok(Answer {
            backend: answer.backend,
            message: Page {
                next: Some(last).filter(|_| reply.more),
                items: reply.events,
                oldest_available: Some(reply.oldest_available).filter(|seq| *seq > 0),
            },
        })
    }

    fn link(&self, from: &u64, limit: u32) -> String {
        let topic = utf8_percent_encode(&self.topic, PATH_SEGMENT);
        let mut link = format!("/topic-events/{topic}?afterSeq={from}&limit={limit}");
        if let Some(filter) = &self.filter {
            link.push_str("&filter=");
            link.extend(utf8_percent_encode(filter, NON_ALPHANUMERIC));
        }
        link
    }
}

/// What must be escaped in a path segment (RFC 3986 `pchar` keeps the rest).
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');
