//! What an SSE stream follows (a topic, or a user's change feed) and the two backend calls that
//! differ between them: opening the live stream after a place, and reading a page of history.
//! Either way each item is framed here, once, with its place (a topic event's `seq`, a change's
//! position): the hubs, rings and readers that carry frames are the same for both.

use eventsys::v1;
use tonic::{Status, Streaming};

use super::frame::Frame;
use crate::{
    http::AppState,
    upstream::{Answer, Bearer, CallError},
};

/// What an SSE stream follows: one hub per `StreamOf` per gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum StreamOf {
    /// A topic's published events, by `seq`.
    Topic(String),
    /// A user's change feed, by position.
    Changes(String),
}

impl std::fmt::Display for StreamOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamOf::Topic(topic) => write!(f, "topic {topic}"),
            StreamOf::Changes(user) => write!(f, "changes of {user}"),
        }
    }
}

/// A backend's live stream of either kind.
pub(super) enum Upstream {
    Topic(Streaming<v1::Event>),
    Changes(Streaming<v1::Change>),
}

impl Upstream {
    /// The next item's place and frame (`None` for one that cannot be framed), or the end.
    pub(super) async fn next(&mut self) -> Result<Option<(u64, Option<Frame>)>, Status> {
        Ok(match self {
            Upstream::Topic(events) => events
                .message()
                .await?
                .map(|event| (event.seq, Frame::event(event))),
            Upstream::Changes(changes) => changes
                .message()
                .await?
                .map(|change| (change.position, Frame::change(change))),
        })
    }
}

/// A page of stored history, framed.
pub(super) struct History {
    /// The oldest place retention kept, when the read began before it; else 0.
    pub(super) oldest_available: u64,
    /// Each item's place and frame, in order.
    pub(super) frames: Vec<(u64, Option<Frame>)>,
    /// More follow the last one.
    pub(super) more: bool,
}

impl StreamOf {
    /// Opens the live stream after `after` on a backend.
    pub(super) async fn open(
        &self,
        state: &AppState,
        after: u64,
        bearer: Option<&Bearer>,
    ) -> Result<Answer<Upstream>, CallError> {
        Ok(match self {
            StreamOf::Topic(topic) => {
                let request = v1::SubscribeRequest {
                    topic: topic.clone(),
                    after_seq: after,
                };
                let answer = state.upstream.call(request, bearer).await?;
                Answer {
                    message: Upstream::Topic(answer.message),
                    backend: answer.backend,
                }
            }
            StreamOf::Changes(user) => {
                let request = v1::WatchChangesRequest {
                    user_id: user.clone(),
                    after_position: after,
                };
                let answer = state.upstream.call(request, bearer).await?;
                Answer {
                    message: Upstream::Changes(answer.message),
                    backend: answer.backend,
                }
            }
        })
    }

    /// Up to `limit` stored items after `after`.
    pub(super) async fn history(
        &self,
        state: &AppState,
        after: u64,
        limit: u32,
        bearer: Option<&Bearer>,
    ) -> Result<History, CallError> {
        Ok(match self {
            StreamOf::Topic(topic) => {
                let request = v1::ListTopicEventsRequest {
                    topic: topic.clone(),
                    after_seq: after,
                    limit,
                };
                let reply = state.upstream.call(request, bearer).await?.message;
                History {
                    oldest_available: reply.oldest_available,
                    frames: reply
                        .events
                        .into_iter()
                        .map(|event| (event.seq, Frame::event(event)))
                        .collect(),
                    more: reply.more,
                }
            }
            StreamOf::Changes(user) => {
                let request = v1::ListChangesRequest {
                    user_id: user.clone(),
                    after_position: after,
                    limit,
                };
                let reply = state.upstream.call(request, bearer).await?.message;
                History {
                    oldest_available: reply.oldest_available,
                    frames: reply
                        .changes
                        .into_iter()
                        .map(|change| (change.position, Frame::change(change)))
                        .collect(),
                    more: reply.more,
                }
            }
        })
    }
}
