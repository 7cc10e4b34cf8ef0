//! Pages of stored history (a topic's events, a user's changes) as the list methods answer
//! them: bounded by count and bytes, told what retention dropped, and for a topic's events
//! with a filter applied.

use eventsys::{
    topics::{Filter, Subject},
    v1,
};
use prost::Message;
use tonic::Status;

use crate::{
    convert,
    store::{EventStore, StoreError},
};

/// Pages of events a filtered history read looks through at most.
const FILTER_SCAN: usize = 10;

/// Whether `filter` accepts an event as the wire carries it.
fn accepts(filter: &Filter, event: &v1::Event) -> bool {
    let data = event
        .data
        .clone()
        .and_then(|data| eventsys::json::from_struct(data).ok());
    filter.accepts(&Subject {
        title: &event.title,
        user_id: &event.user_id,
        topic: &event.topic,
        data: data.as_ref(),
    })
}

/// Largest encoded page: far below what a client decodes (gRPC's default is 4 MiB, the
/// gateway's 16 MiB), and small enough that a gateway streaming a list holds little.
const PAGE_BYTES: usize = 2 * 1024 * 1024;

/// A page of a stream's history (topic events, a feed's changes).
pub(super) struct HistoryPage<T> {
    pub(super) items: Vec<T>,
    pub(super) more: bool,
    /// The oldest `seq` (position) kept, when the read began before it; else 0.
    pub(super) oldest_available: u64,
}

/// One page of a stream's stored history after `after`: `limit` at most, fewer when they would
/// pass `PAGE_BYTES`. Retention dropped what it no longer keeps: the reader gets the rest,
/// told so. It may drop more while this reads: then the read is done again from the newer
/// bound (a few times at most; after that nothing at or below the bound is answered).
pub(super) async fn history<T, D, R>(
    after: u64,
    limit: usize,
    dropped_through: impl Fn() -> D,
    read: impl Fn(u64, usize) -> R,
    seq: impl Fn(&T) -> u64,
) -> Result<HistoryPage<T>, Status>
where
    T: Message,
    D: std::future::Future<Output = Result<u64, StoreError>>,
    R: std::future::Future<Output = Result<Vec<T>, StoreError>>,
{
    let mut dropped = dropped_through().await?;
    let mut stored;
    let mut reads = 0;
    loop {
        reads += 1;
        // One extra tells whether more follow.
        stored = read(after.max(dropped), limit + 1).await?;
        let now = dropped_through().await?;
        if now == dropped || reads == 3 {
            dropped = now;
            break;
        }
        dropped = now;
    }
    stored.retain(|item| seq(item) > dropped);
    let gap = after < dropped;
    let mut more = stored.len() > limit;
    stored.truncate(limit);
    let fits = fitting(&stored);
    if fits < stored.len() {
        stored.truncate(fits);
        more = true;
    }
    Ok(HistoryPage {
        items: stored,
        more,
        oldest_available: if gap { dropped + 1 } else { 0 },
    })
}

/// How many of `events`, from the first, fit in a page (at least one, so every page moves on).
pub(super) fn fitting<T: Message>(events: &[T]) -> usize {
    let mut total = 0;
    for (i, event) in events.iter().enumerate() {
        // The field's tag and length prefix on top of the message.
        total += event.encoded_len() + 8;
        if total > PAGE_BYTES {
            return i.max(1);
        }
    }
    events.len()
}

/// A page of `topic`'s events after `after`; with a filter, pages are read until `limit`
/// events pass it or `FILTER_SCAN` pages were read, and the answer says where the reading
/// stopped.
pub(super) async fn topic_events(
    store: &dyn EventStore,
    topic: &str,
    after: u64,
    limit: usize,
    filter: Option<Filter>,
) -> Result<v1::ListTopicEventsResponse, Status> {
    let page = |after| {
        history(
            after,
            limit,
            || store.dropped_through(topic),
            move |after, n| async move {
                let stored = store.events_after(topic, after, n).await?;
                Ok(stored.into_iter().map(convert::event).collect())
            },
            |event: &v1::Event| event.seq,
        )
    };
    let first = page(after).await?;
    let oldest_available = first.oldest_available;
    let Some(filter) = filter else {
        return Ok(v1::ListTopicEventsResponse {
            next_after_seq: first.items.last().map_or(0, |e| e.seq),
            events: first.items,
            more: first.more,
            oldest_available,
        });
    };
    let mut events = Vec::new();
    let mut read = first;
    let mut pages = 1;
    let mut through = 0;
    loop {
        let mut items = read.items.into_iter();
        for event in items.by_ref() {
            through = event.seq;
            if accepts(&filter, &event) {
                events.push(event);
                if events.len() == limit {
                    break;
                }
            }
        }
        let more = read.more || items.next().is_some();
        if !more || events.len() == limit || pages == FILTER_SCAN {
            let fits = fitting(&events);
            let cut = fits < events.len();
            if cut {
                events.truncate(fits);
                through = events.last().map_or(through, |e| e.seq);
            }
            return Ok(v1::ListTopicEventsResponse {
                events,
                more: more || cut,
                oldest_available,
                next_after_seq: through,
            });
        }
        read = page(through).await?;
        pages += 1;
    }
}
