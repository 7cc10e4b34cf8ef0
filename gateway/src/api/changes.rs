//! `GET /changes/history`: a user's change feed as a list (the stored part of the `/changes`
//! stream), paged by position as topic history is by `seq`.

use axum::{extract::State, response::IntoResponse};
use eventsys::v1;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{
    ApiError, Credentials, ErrorBody,
    extract::{FeedUser, FeedUserParam, Params},
    json::ChangeJson,
    listing::{self, Limit, Page, Pager},
};
use crate::{
    http::AppState,
    upstream::{Answer, Bearer, CallError},
};

/// `GET /changes/history?userId=&afterPosition=&limit=` → 200 and the user's changes, oldest
/// first.
#[utoipa::path(get, path = "/changes/history", tag = "changes",
    summary = "A user's changes, as a list",
    description = "Every create, update and delete of the user's events after `afterPosition`, \
        oldest first: what `GET /changes` replays. Without `limit` all of them, streamed; with \
        it one page and `Link: <…>; rel=\"next\"` when more follow.",
    params(FeedUserParam, AfterPosition, Limit),
    responses(
        (status = 200, description = "The changes, in position order", body = Vec<ChangeJson>,
            headers(
                ("link" = String, description = "`<next page URL>; rel=\"next\"` when the page was cut"),
                ("events-oldest-available" = u64, description = "The oldest position retention kept, when the read began before it"),
            )),
        (status = 400, description = "No `userId` (anonymous mode), a bad `afterPosition` or `limit`", body = ErrorBody),
        (status = 403, description = "`userId` names another user than the token's", body = ErrorBody),
    ),
    security((), ("bearer" = []), ("access_token" = [])),
)]
pub(crate) async fn change_history(
    State(state): State<AppState>,
    who: Credentials,
    FeedUser(user_id): FeedUser,
    Params(after): Params<AfterPosition>,
    Params(limit): Params<Limit>,
) -> Result<impl IntoResponse, ApiError> {
    let user = who.feed_user(user_id.as_deref())?;
    let pager = ChangeHistory {
        state,
        bearer: who.bearer,
        user,
        given: user_id.unwrap_or_default(),
    };
    listing::respond(pager, Some(after.after_position.unwrap_or(0)), limit).await
}

/// `?afterPosition=`: changes after this position (0 or absent: from the start).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AfterPosition {
    /// Changes with a greater `position` are returned.
    #[serde(rename = "afterPosition")]
    #[param(minimum = 0, maximum = 18446744073709551615_u64, nullable = false)]
    after_position: Option<u64>,
}

/// A user's change feed, paged by position.
struct ChangeHistory {
    state: AppState,
    bearer: Option<Bearer>,
    user: String,
    /// `userId` as the client gave it, for the next page's URL.
    given: String,
}

impl Pager for ChangeHistory {
    type Cursor = u64;
    type Item = v1::Change;

    async fn fetch(
        &self,
        from: Option<u64>,
        limit: u32,
    ) -> Result<Answer<Page<u64, v1::Change>>, CallError> {
        let request = v1::ListChangesRequest {
            user_id: self.user.clone(),
            after_position: from.unwrap_or(0),
            limit,
        };
        let answer = self
            .state
            .upstream
            .call(request, self.bearer.as_ref())
            .await?;
        let reply = answer.message;
        let last = reply.changes.last().map(|c| c.position);
        Ok(Answer {
            backend: answer.backend,
            message: Page {
                next: last.filter(|_| reply.more),
                items: reply.changes,
                oldest_available: Some(reply.oldest_available).filter(|p| *p > 0),
            },
        })
    }

    fn link(&self, from: &u64, limit: u32) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if !self.given.is_empty() {
            query.append_pair("userId", &self.given);
        }
        query.append_pair("afterPosition", &from.to_string());
        query.append_pair("limit", &limit.to_string());
        format!("/changes/history?{}", query.finish())
    }
}
