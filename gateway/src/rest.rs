//! The REST endpoints of `../shared/API.md` for events and topics, each translated to one
//! backend rpc (list endpoints page through theirs).

use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, QueryRejection},
    },
    response::{IntoResponse, Response},
};
use eventsys::v1;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    endpoint::BACKEND_HEADER,
    error::ApiError,
    json::{EventInput, EventJson, UpdateInput},
    state::{AppState, Retry},
};

/// Page size used when a REST list is assembled from rpc pages.
const PAGE: u32 = 1000;

#[derive(Debug, Default, Deserialize)]
pub struct Owner {
    #[serde(rename = "userId", default)]
    user_id: Option<String>,
}

type OwnerQuery = Result<Query<Owner>, QueryRejection>;

fn owner(query: OwnerQuery) -> Result<String, ApiError> {
    let Query(owner) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(owner.user_id.unwrap_or_default())
}

/// A JSON body whatever its Content-Type (the old service's clients do not all send one).
fn body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::http(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RESOURCE_EXHAUSTED",
                format!("request body larger than {limit} bytes"),
            )
        } else {
            ApiError::bad_request(rejection.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// An id that is not a UUID names no event.
fn event_id(id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::not_found())
}

fn reply(status: StatusCode, backend: Option<HeaderValue>, body: impl Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Some(backend) = backend {
        response.headers_mut().insert(BACKEND_HEADER, backend);
    }
    response
}

pub async fn create_event(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let input: EventInput = body(raw, state.settings.body_limit)?;
    let request = input.into_create();
    let answer = state
        .call(Retry::Never, move |mut c| {
            let request = request.clone();
            async move { c.create_event(request).await }
        })
        .await?;
    Ok(reply(
        StatusCode::CREATED,
        answer.backend,
        EventJson::from(answer.message),
    ))
}

pub async fn list_events(
    State(state): State<AppState>,
    query: OwnerQuery,
) -> Result<Response, ApiError> {
    let user_id = owner(query)?;
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = v1::ListEventsRequest {
            user_id: user_id.clone(),
            limit: PAGE,
            page_token,
        };
        let answer = state
            .call(Retry::Once, move |mut c| {
                let request = request.clone();
                async move { c.list_events(request).await }
            })
            .await?;
        events.extend(answer.message.events.into_iter().map(EventJson::from));
        page_token = answer.message.next_page_token;
        if page_token.is_empty() {
            return Ok(reply(StatusCode::OK, answer.backend, events));
        }
    }
}

pub async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: OwnerQuery,
) -> Result<Response, ApiError> {
    let request = v1::GetEventRequest {
        id: event_id(&id)?,
        user_id: owner(query)?,
    };
    let answer = state
        .call(Retry::Once, move |mut c| {
            let request = request.clone();
            async move { c.get_event(request).await }
        })
        .await?;
    Ok(reply(
        StatusCode::OK,
        answer.backend,
        EventJson::from(answer.message),
    ))
}

pub async fn update_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: OwnerQuery,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = event_id(&id)?;
    let user_id = owner(query)?;
    let input: UpdateInput = body(raw, state.settings.body_limit)?;
    let request = v1::UpdateEventRequest {
        id,
        user_id,
        title: input.title,
        description: input.description,
        completed: input.completed,
    };
    let answer = state
        .call(Retry::Once, move |mut c| {
            let request = request.clone();
            async move { c.update_event(request).await }
        })
        .await?;
    let body = serde_json::json!({"message": "event updated successfully"});
    Ok(reply(StatusCode::OK, answer.backend, body))
}

pub async fn delete_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: OwnerQuery,
) -> Result<Response, ApiError> {
    let request = v1::DeleteEventRequest {
        id: event_id(&id)?,
        user_id: owner(query)?,
    };
    let deleted = state
        .call(Retry::Once, move |mut c| {
            let request = request.clone();
            async move { c.delete_event(request).await }
        })
        .await;
    let backend = match deleted {
        Ok(answer) => answer.backend,
        // The attempt whose backend died may have deleted the event before it did: the event
        // is gone, which is what the client asked for.
        Err(err) if err.after_retry && err.status == StatusCode::NOT_FOUND => err.backend,
        Err(err) => return Err(err),
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(backend) = backend {
        response.headers_mut().insert(BACKEND_HEADER, backend);
    }
    Ok(response)
}

pub async fn publish(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let input: EventInput = body(raw, state.settings.body_limit)?;
    let request = input.into_publish();
    let answer = state
        .call(Retry::Never, move |mut c| {
            let request = request.clone();
            async move { c.publish(request).await }
        })
        .await?;
    let event = answer.message;
    let body = serde_json::json!({"status": "Event broadcasted", "id": event.id, "seq": event.seq});
    Ok(reply(StatusCode::OK, answer.backend, body))
}

pub async fn topic_events(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Response, ApiError> {
    let mut events = Vec::new();
    let mut after_seq = 0;
    loop {
        let request = v1::ListTopicEventsRequest {
            topic: topic.clone(),
            after_seq,
            limit: PAGE,
        };
        let answer = state
            .call(Retry::Once, move |mut c| {
                let request = request.clone();
                async move { c.list_topic_events(request).await }
            })
            .await?;
        let page = answer.message;
        after_seq = page.events.last().map_or(after_seq, |e| e.seq);
        events.extend(page.events.into_iter().map(EventJson::from));
        if !page.more {
            return Ok(reply(StatusCode::OK, answer.backend, events));
        }
    }
}
