//! `GET /topics/{topic}/presence`: who has streams of a topic open, over every gateway (the
//! backends count what each gateway reports), and the cheap occupancy form `?count=1`.

use axum::{Json, extract::State, response::IntoResponse};
use eventsys::v1;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiError, Credentials, ErrorBody,
    extract::{Params, Topic, TopicParam, flag},
    json::rfc3339,
};
use crate::http::AppState;

/// `?count=1`: only the count.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CountOnly {
    /// `1` (or `true`): only `count` and `gateways`, no subjects.
    #[param(nullable = false, value_type = Option<String>, pattern = "^(0|1|true|false)$")]
    count: Option<String>,
}

/// Who is on a topic.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PresenceJson {
    topic: String,
    /// Open streams of the topic, anonymous ones included.
    count: u64,
    /// Named subjects (token `sub`s), by id; absent with `?count=1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    subjects: Option<Vec<SubjectJson>>,
    /// Gateways with streams of the topic.
    gateways: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SubjectJson {
    user_id: String,
    /// Its open streams of the topic, over every gateway.
    connections: u64,
    /// When its earliest one opened (RFC 3339, milliseconds, UTC).
    since: String,
}

/// `GET /topics/{topic}/presence[?count=1]` → 200 and who is on the topic.
#[utoipa::path(get, path = "/topics/{topic}/presence", tag = "topics",
    summary = "Who has streams of a topic open",
    description = "Open `GET /subscribe/{topic}` streams of the topic over every gateway (as \
        each reported within the backends' presence TTL): `count` (anonymous ones included), \
        the named `subjects` (token subjects; anonymous streams are never named) and how many \
        `gateways`. `?count=1` answers the count alone. In token mode it needs the topic's \
        subscribe right.",
    params(TopicParam, CountOnly),
    responses(
        (status = 200, description = "Who is on the topic", body = PresenceJson),
        (status = 400, description = "A bad topic or `count`", body = ErrorBody),
    ),
    security((), ("bearer" = []), ("access_token" = [])),
)]
pub(crate) async fn presence(
    State(state): State<AppState>,
    who: Credentials,
    Topic(topic): Topic,
    Params(CountOnly { count }): Params<CountOnly>,
) -> Result<impl IntoResponse, ApiError> {
    who.may_read(&state, &topic)?;
    let count_only = flag("count", count.as_deref())?;
    let request = v1::PresenceRequest { topic, count_only };
    let answer = state.upstream.call(request, who.bearer.as_ref()).await?;
    let v1::PresenceResponse {
        topic,
        count,
        subjects,
        gateways,
    } = answer.message;
    let subjects = (!count_only).then(|| {
        subjects
            .into_iter()
            .map(|s| SubjectJson {
                user_id: s.user_id,
                connections: s.connections,
                since: rfc3339(s.since).unwrap_or_default(),
            })
            .collect()
    });
    let body = PresenceJson {
        topic,
        count,
        subjects,
        gateways,
    };
    Ok((answer.backend, Json(body)))
}
