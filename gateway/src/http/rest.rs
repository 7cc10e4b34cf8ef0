//! The REST endpoints of `../shared/API.md` for events and topics, each one backend rpc (list
//! endpoints page through theirs). A handler reads like its contract row: extract, call,
//! answer with the status, the serving backend and the body.

use axum::{Json, extract::State, response::IntoResponse};
use eventsys::v1;
use http::StatusCode;
use serde_json::json;
use tonic::Code;

use super::{
    ApiError, AppState,
    auth::Credentials,
    extract::{EventId, JsonBody, Topic, UserId},
    json::{EventInput, EventJson, UpdateInput},
};
use crate::upstream::{CallError, Failure};

/// Page size used when a REST list is assembled from rpc pages.
const PAGE: u32 = 1000;

/// `POST /events` → 201 and the stored event.
pub(crate) async fn create_event(
    State(state): State<AppState>,
    who: Credentials,
    JsonBody(mut input): JsonBody<EventInput>,
) -> Result<impl IntoResponse, ApiError> {
    input.user_id = who.caller()?.owner(&input.user_id)?;
    let answer = state
        .upstream
        .call(input.into_create(), who.bearer.as_ref())
        .await?;
    let event = EventJson::from(answer.message);
    Ok((StatusCode::CREATED, answer.backend, Json(event)))
}

/// `GET /events?userId=` → 200 and every event of the user (of everyone without `userId`).
pub(crate) async fn list_events(
    State(state): State<AppState>,
    who: Credentials,
    UserId(user_id): UserId,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = who.caller()?.owner(&user_id)?;
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = v1::ListEventsRequest {
            user_id: user_id.clone(),
            limit: PAGE,
            page_token,
        };
        let answer = state.upstream.call(request, who.bearer.as_ref()).await?;
        events.extend(answer.message.events.into_iter().map(EventJson::from));
        page_token = answer.message.next_page_token;
        if page_token.is_empty() {
            return Ok((StatusCode::OK, answer.backend, Json(events)));
        }
    }
}

/// `GET /events/{id}?userId=` → 200 and the event, 404 if it is not there (or not theirs).
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
        Json(EventJson::from(answer.message)),
    ))
}

/// `PUT /events/{id}?userId=` → 200 `{"message": "event updated successfully"}`.
pub(crate) async fn update_event(
    State(state): State<AppState>,
    who: Credentials,
    EventId(id): EventId,
    UserId(user_id): UserId,
    JsonBody(input): JsonBody<UpdateInput>,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = who.caller()?.owner(&user_id)?;
    let request = v1::UpdateEventRequest {
        id,
        user_id,
        title: input.title,
        description: input.description,
        completed: input.completed,
    };
    let answer = state.upstream.call(request, who.bearer.as_ref()).await?;
    let body = json!({"message": "event updated successfully"});
    Ok((StatusCode::OK, answer.backend, Json(body)))
}

/// `DELETE /events/{id}?userId=` → 204.
pub(crate) async fn delete_event(
    State(state): State<AppState>,
    who: Credentials,
    EventId(id): EventId,
    UserId(user_id): UserId,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = who.caller()?.owner(&user_id)?;
    let backend = match state
        .upstream
        .call(v1::DeleteEventRequest { id, user_id }, who.bearer.as_ref())
        .await
    {
        Ok(answer) => answer.backend,
        // The attempt whose backend died may have deleted the event before it did: the event
        // is gone, which is what the client asked for.
        Err(CallError {
            retried: true,
            failure: Failure::Status { status, backend },
        }) if status.code() == Code::NotFound => backend,
        Err(err) => return Err(err.into()),
    };
    Ok((StatusCode::NO_CONTENT, backend, ()))
}

/// `POST /publish` → 200 `{"status": "Event broadcasted", "id", "seq"}`.
pub(crate) async fn publish(
    State(state): State<AppState>,
    who: Credentials,
    JsonBody(mut input): JsonBody<EventInput>,
) -> Result<impl IntoResponse, ApiError> {
    let caller = who.caller()?;
    caller.may_publish(&input.topic)?;
    input.user_id = caller.owner(&input.user_id)?;
    let answer = state
        .upstream
        .call(input.into_publish(), who.bearer.as_ref())
        .await?;
    let event = answer.message;
    let body = json!({"status": "Event broadcasted", "id": event.id, "seq": event.seq});
    Ok((StatusCode::OK, answer.backend, Json(body)))
}

/// `GET /topic-events/{topic}` → 200 and the topic's events, oldest first.
pub(crate) async fn topic_events(
    State(state): State<AppState>,
    who: Credentials,
    Topic(topic): Topic,
) -> Result<impl IntoResponse, ApiError> {
    who.may_read(&state, &topic)?;
    let mut events = Vec::new();
    let mut after_seq = 0;
    loop {
        let request = v1::ListTopicEventsRequest {
            topic: topic.clone(),
            after_seq,
            limit: PAGE,
        };
        let page = state.upstream.call(request, who.bearer.as_ref()).await?;
        after_seq = page.message.events.last().map_or(after_seq, |e| e.seq);
        events.extend(page.message.events.into_iter().map(EventJson::from));
        if !page.message.more {
            return Ok((StatusCode::OK, page.backend, Json(events)));
        }
    }
}
