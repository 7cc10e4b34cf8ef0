//! What an SSE stream follows (a topic, or a user's change feed) and the two backend calls that
//! differ between them: opening the live stream after a place, and reading a page of history.
//! Either way each item is framed here, once, with its place (a topic event's `seq`, a change's
//! position): the hubs, rings and readers that carry frames are the same for both. A
//! selection's events are framed by its hub instead, whose cursor each frame's `id` is.

use eventsys::v1;
use tonic::{Status, Streaming};

use eventsys::topics::Selection;

use super::{frame::Frame, selection::Place};
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
    /// The events of a selection's topics, by `seq` per topic.
    Matching(Selection),
}

impl std::fmt::Display for StreamOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamOf::Topic(topic) => write!(f, "topic {topic}"),
            StreamOf::Changes(user) => write!(f, "changes of {user}"),
            StreamOf::Matching(selection) => write!(f, "topics {selection}"),
        }
    }
}

/// A backend's live stream of any kind.
pub(super) enum Upstream {
    Topic(Streaming<v1::Event>),
    Changes(Streaming<v1::Change>),
    Matching(Streaming<v1::Event>),
}

/// What a backend stream carries next.
pub(super) enum Item {
    /// A topic's event or a change: its place and frame (`None` for one that cannot be
    /// framed).
    Placed(u64, Option<Frame>),
    /// A selection's event, for its hub to frame with the stream's cursor.
    Selected(v1::Event),
}

impl Upstream {
    /// The next item, or the end.
    pub(super) async fn next(&mut self) -> Result<Option<Item>, Status> {
        Ok(match self {
            Upstream::Topic(events) => events
                .message()
                .await?
                .map(|event| Item::Placed(event.seq, Frame::event(event))),
            Upstream::Changes(changes) => changes
                .message()
                .await?
                .map(|change| Item::Placed(change.position, Frame::change(change))),
            Upstream::Matching(events) => events.message().await?.map(Item::Selected),
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
        after: &Place,
        bearer: Option<&Bearer>,
    ) -> Result<Answer<Upstream>, CallError> {
        Ok(match self {
            StreamOf::Matching(selection) => {
                let request = v1::SubscribeRequest {
                    topic: String::new(),
                    after_seq: 0,
                    patterns: selection.patterns().to_strings(),
                    filter: selection.filter_text().unwrap_or_default().to_owned(),
                    after_seqs: after.topics().into_iter().collect(),
                    cursor: String::new(),
                };
                let answer = state.upstream.call(request, bearer).await?;
                Answer {
                    message: Upstream::Matching(answer.message),
                    backend: answer.backend,
                }
            }
            StreamOf::Topic(topic) => {
                let request = v1::SubscribeRequest {
                    topic: topic.clone(),
                    after_seq: after.seq(),
                    patterns: Vec::new(),
                    filter: String::new(),
                    after_seqs: Default::default(),
                    cursor: String::new(),
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
                    after_position: after.seq(),
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
            // A selection's history is read per topic (`topic_history`).
            StreamOf::Matching(_) => History {
                oldest_available: 0,
                frames: Vec::new(),
                more: false,
            },
            StreamOf::Topic(topic) => {
                let request = v1::ListTopicEventsRequest {
                    topic: topic.clone(),
                    after_seq: after,
                    limit,
                    filter: String::new(),
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

/// A page of one topic of a selection, its filter applied.
pub(super) struct TopicPage {
    pub(super) oldest_available: u64,
    pub(super) events: Vec<v1::Event>,
    /// The last `seq` the page read (past events the filter rejected).
    pub(super) through: u64,
    pub(super) more: bool,
}

/// Up to `limit` stored events of `topic` after `after` that `selection`'s filter accepts.
pub(super) async fn topic_history(
    selection: &Selection,
    state: &AppState,
    topic: &str,
    after: u64,
    limit: u32,
    bearer: Option<&Bearer>,
) -> Result<TopicPage, CallError> {
    let request = v1::ListTopicEventsRequest {
        topic: topic.to_owned(),
        after_seq: after,
        limit,
        filter: selection.filter_text().unwrap_or_default().to_owned(),
    };
    let reply = state.upstream.call(request, bearer).await?.message;
    Ok(TopicPage {
        oldest_available: reply.oldest_available,
        through: reply
            .next_after_seq
            .max(reply.events.last().map_or(0, |e| e.seq)),
        events: reply.events,
        more: reply.more,
    })
}
