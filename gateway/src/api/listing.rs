//! Lists as the contract serves them: a JSON array written to the client page by page as the
//! backend's pages arrive (gateway memory stays one page whatever the list's size), or, with
//! `limit`, one page and a `Link: <…>; rel="next"` when more follow. The whole response, body
//! included, keeps the request's one deadline.

use std::{convert::Infallible, future::Future, io};

use axum::{
    body::{Body, Bytes},
    response::{IntoResponse, IntoResponseParts, ResponseParts},
};
use eventsys::v1;
use futures::{StreamExt, stream};
use http::{HeaderName, HeaderValue, StatusCode, header};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{
    ApiError,
    json::{ChangeJson, EventJson},
};
use crate::upstream::{self, Answer, CallError};

/// Events per backend page while streaming a whole list.
const PAGE: u32 = 1000;
/// Largest `limit` a client may ask for (the backends' page limit).
const MAX_LIMIT: u32 = 1000;

/// One page a backend returned, and where the next one starts.
pub(crate) struct Page<C, T = v1::Event> {
    pub(crate) items: Vec<T>,
    pub(crate) next: Option<C>,
    /// For a stream's history: the oldest seq (position) kept, when the read began before it.
    pub(crate) oldest_available: Option<u64>,
}

/// What a list holds: an element of its JSON array.
pub(crate) trait Listed: Send + 'static {
    /// Writes its JSON; `false` when it has none to show (logged).
    fn write_json(self, out: &mut Vec<u8>) -> bool;
}

impl Listed for v1::Event {
    fn write_json(self, out: &mut Vec<u8>) -> bool {
        let seq = self.seq;
        serde_json::to_writer(out, &EventJson::from(self))
            .inspect_err(|err| tracing::error!(seq, error = %err, "cannot encode event"))
            .is_ok()
    }
}

impl Listed for v1::Change {
    fn write_json(self, out: &mut Vec<u8>) -> bool {
        let position = self.position;
        let Some(change) = ChangeJson::of(self) else {
            tracing::error!(position, "a change of no known kind");
            return false;
        };
        serde_json::to_writer(out, &change)
            .inspect_err(|err| tracing::error!(position, error = %err, "cannot encode change"))
            .is_ok()
    }
}

/// A page as fetched, or why not.
pub(crate) type Fetched<C, T> = Result<Answer<Page<C, T>>, CallError>;

/// One kind of list: how to fetch a page from a cursor, and the URL of a page.
pub(crate) trait Pager: Send + Sync + 'static {
    type Cursor: Send + 'static;
    type Item: Listed;
    fn fetch(
        &self,
        from: Option<Self::Cursor>,
        limit: u32,
    ) -> impl Future<Output = Fetched<Self::Cursor, Self::Item>> + Send;
    /// The path and query of the page starting at `from`.
    fn link(&self, from: &Self::Cursor, limit: u32) -> String;
}

/// `?limit=`: a page of at most this many events; absent: the whole list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Limit {
    /// One page of at most this many events (1 to 1000); absent: the whole list, streamed.
    #[param(minimum = 1, maximum = 1000, nullable = false)]
    limit: Option<u32>,
}

impl Limit {
    fn checked(&self) -> Result<Option<u32>, ApiError> {
        match self.limit {
            Some(n) if n == 0 || n > MAX_LIMIT => Err(ApiError::bad_request(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            ))),
            other => Ok(other),
        }
    }
}

/// `Link: <…>; rel="next"` when a page was cut.
struct NextPage(String);

impl IntoResponseParts for NextPage {
    type Error = Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Infallible> {
        if let Ok(value) = HeaderValue::try_from(format!("<{}>; rel=\"next\"", self.0)) {
            parts.headers_mut().insert(header::LINK, value);
        }
        Ok(parts)
    }
}

/// `Events-Oldest-Available: M` on a history read that began before retention's oldest kept.
struct OldestAvailable(u64);

const OLDEST_AVAILABLE: HeaderName = HeaderName::from_static("events-oldest-available");

impl IntoResponseParts for OldestAvailable {
    type Error = Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Infallible> {
        parts
            .headers_mut()
            .insert(OLDEST_AVAILABLE, HeaderValue::from(self.0));
        Ok(parts)
    }
}

/// 200 and the list from `from`: one page with `limit`, else all of it, streamed.
pub(crate) async fn respond<P: Pager>(
    pager: P,
    from: Option<P::Cursor>,
    limit: Limit,
) -> Result<impl IntoResponse, ApiError> {
    let limit = limit.checked()?;
    // The first page is fetched before the response starts, so its failure is a plain error.
    let first = pager.fetch(from, limit.unwrap_or(PAGE)).await?;
    let Page {
        items,
        next,
        oldest_available,
    } = first.message;
    let (link, rest) = match limit {
        Some(limit) => (next.map(|from| NextPage(pager.link(&from, limit))), None),
        None => (None, next),
    };
    let body = Body::from_stream(array(pager, items, rest));
    let json = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    Ok((
        StatusCode::OK,
        first.backend,
        link,
        oldest_available.map(OldestAvailable),
        json,
        body,
    ))
}

enum Step<P: Pager> {
    Emit(P, Vec<P::Item>, Option<P::Cursor>),
    Fetch(P, P::Cursor),
    Close,
    Done,
}

/// `[`, every item of `first` and of the pages after it, `]`. A page that cannot be fetched
/// ends the body with an error, which aborts the response: the client sees it cut, never a
/// well-formed but partial list.
fn array<P: Pager>(
    pager: P,
    first: Vec<P::Item>,
    next: Option<P::Cursor>,
) -> impl futures::Stream<Item = Result<Bytes, io::Error>> + Send {
    let deadline = upstream::deadline();
    // `opened`: whether `[` is written, so the next event needs a comma.
    stream::unfold((Step::Emit(pager, first, next), false), move |(step, mut opened)| async move {
        let (chunks, then) = match step {
            Step::Emit(pager, items, next) => {
                let mut chunks = Vec::with_capacity(items.len() + 1);
                for item in items {
                    let mut chunk = Vec::from(if opened { &b","[..] } else { &b"["[..] });
                    if !item.write_json(&mut chunk) {
                        continue;
                    }
                    opened = true;
                    chunks.push(Ok(Bytes::from(chunk)));
                }
                let then = match next {
                    Some(from) => Step::Fetch(pager, from),
                    None => Step::Close,
                };
                (chunks, then)
            }
            Step::Fetch(pager, from) => {
                let fetched = match deadline {
                    Some(deadline) => upstream::within(deadline, pager.fetch(Some(from), PAGE))
                        .await
                        .unwrap_or_else(|_| Err(CallError::timed_out())),
                    None => pager.fetch(Some(from), PAGE).await,
                };
                match fetched {
                    Ok(page) => {
                        let Page { items, next, .. } = page.message;
                        (Vec::new(), Step::Emit(pager, items, next))
                    }
                    Err(err) => {
                        let err = ApiError::from(err);
                        tracing::warn!(status = err.status.as_u16(), error = %err.message, "list cut short");
                        (vec![Err(io::Error::other(err.message))], Step::Done)
                    }
                }
            }
            Step::Close => {
                let end: &'static [u8] = if opened { b"]" } else { b"[]" };
                (vec![Ok(Bytes::from_static(end))], Step::Done)
            }
            Step::Done => return None,
        };
        Some((chunks, (then, opened)))
    })
    .flat_map(stream::iter)
}
