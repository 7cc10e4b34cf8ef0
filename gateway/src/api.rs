//! The REST API of `docs/api.md`: one handler per contract row (`rest`), the extractors that
//! read a request's parts as the contract says (`extract`, `auth`'s `Credentials`, `keyed`'s
//! `Idempotency-Key`), the JSON shapes (`json`), streamed lists (`listing`), and the one error
//! body every door answers with (`error`). Handlers call backends only through `upstream`.

mod auth;
mod changes;
mod error;
mod extract;
mod json;
mod keyed;
mod listing;
mod presence;
mod rest;
mod revision;

use utoipa_axum::{router::OpenApiRouter, routes};

pub(crate) use auth::{Credentials, token_expiry};
pub(crate) use error::{ApiError, ErrorBody};
pub(crate) use extract::{
    FeedUser, FeedUserParam, LastEventId, Params, ResumeAfter, ResumeQuery, StreamQuery, Topic,
    TopicParam, TopicsParam, TopicsQuery, flag,
};
pub(crate) use json::{ChangeJson, EventJson, JSON_VALUE, json_value_schema};

use crate::http::AppState;

/// The REST routes, each handler registered with its `#[utoipa::path]` row, so the router and
/// `/openapi.json` cannot differ.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(rest::create_event, rest::list_events))
        .routes(routes!(
            rest::get_event,
            rest::update_event,
            rest::delete_event
        ))
        .routes(routes!(rest::publish))
        .routes(routes!(rest::topic_events))
        .routes(routes!(changes::change_history))
        .routes(routes!(presence::presence))
}
