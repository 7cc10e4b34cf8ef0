//! Every store call timed by operation (`eventsvc_store_duration_seconds{operation}`), for
//! whichever engine is behind it: a decorator over `EventStore`, so neither store measures
//! itself and both report the same operations.

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use prometheus::{Histogram, HistogramVec};
use uuid::Uuid;

use super::{
    Claim, Event, EventChange, EventPage, EventPatch, EventStore, Followed, KeyClaim, NewEvent,
    Precondition, Result, Retention, TopicHead,
    presence::{Presence, PresenceReport, Reported},
};
use chrono::{DateTime, Utc};
use eventsys::topics::Patterns;

/// The operations, in the order of `TimedStore::latency`.
const OPERATIONS: [&str; 15] = [
    "create",
    "get",
    "list",
    "update",
    "delete",
    "publish",
    "events_after",
    "compact",
    "dropped_through",
    "claim",
    "purge_keys",
    "topics",
    "report_presence",
    "expire_presence",
    "presence",
];

#[derive(Clone, Copy)]
enum Op {
    Create,
    Get,
    List,
    Update,
    Delete,
    Publish,
    EventsAfter,
    Compact,
    DroppedThrough,
    Claim,
    PurgeKeys,
    Topics,
    ReportPresence,
    ExpirePresence,
    Presence,
}

/// `inner`, with each call's duration observed under its operation (errors included: a
/// failing store is slow or fast in ways worth seeing).
pub(crate) struct TimedStore {
    inner: Arc<dyn EventStore>,
    latency: Vec<Histogram>,
}

impl TimedStore {
    pub(crate) fn new(inner: Arc<dyn EventStore>, by_operation: &HistogramVec) -> TimedStore {
        TimedStore {
            inner,
            latency: OPERATIONS
                .iter()
                .map(|op| by_operation.with_label_values(&[*op]))
                .collect(),
        }
    }

    async fn timed<T>(&self, op: Op, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let outcome = call.await;
        self.latency[op as usize].observe(started.elapsed().as_secs_f64());
        outcome
    }
}

#[async_trait]
impl EventStore for TimedStore {
    async fn create(&self, event: NewEvent) -> Result<Event> {
        self.timed(Op::Create, self.inner.create(event)).await
    }

    async fn get(&self, id: Uuid, owner: Option<String>) -> Result<Event> {
        self.timed(Op::Get, self.inner.get(id, owner)).await
    }

    async fn list(
        &self,
        owner: Option<String>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<EventPage> {
        self.timed(Op::List, self.inner.list(owner, limit, cursor))
            .await
    }

    async fn update(
        &self,
        id: Uuid,
        owner: Option<String>,
        patch: EventPatch,
        when: Precondition,
    ) -> Result<Event> {
        self.timed(Op::Update, self.inner.update(id, owner, patch, when))
            .await
    }

    async fn delete(&self, id: Uuid, owner: Option<String>, when: Precondition) -> Result<()> {
        self.timed(Op::Delete, self.inner.delete(id, owner, when))
            .await
    }

    async fn publish(&self, event: NewEvent) -> Result<Event> {
        self.timed(Op::Publish, self.inner.publish(event)).await
    }

    async fn events_after(&self, topic: &str, after_seq: u64, limit: usize) -> Result<Vec<Event>> {
        self.timed(
            Op::EventsAfter,
            self.inner.events_after(topic, after_seq, limit),
        )
        .await
    }

    async fn changes_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventChange>> {
        self.timed(
            Op::EventsAfter,
            self.inner.changes_after(user, after, limit),
        )
        .await
    }

    async fn changes_dropped_through(&self, user: &str) -> Result<u64> {
        self.timed(Op::DroppedThrough, self.inner.changes_dropped_through(user))
            .await
    }

    /// The feed's long-lived stream is not a timed call.
    async fn follow(&self) -> Result<BoxStream<'static, Result<Followed>>> {
        self.inner.follow().await
    }

    async fn compact(&self, retention: Retention, batch: usize) -> Result<usize> {
        self.timed(Op::Compact, self.inner.compact(retention, batch))
            .await
    }

    async fn dropped_through(&self, topic: &str) -> Result<u64> {
        self.timed(Op::DroppedThrough, self.inner.dropped_through(topic))
            .await
    }

    async fn topics(&self, patterns: &Patterns, limit: usize) -> Result<Vec<TopicHead>> {
        self.timed(Op::Topics, self.inner.topics(patterns, limit))
            .await
    }

    async fn report_presence(&self, report: PresenceReport) -> Result<Reported> {
        self.timed(Op::ReportPresence, self.inner.report_presence(report))
            .await
    }

    async fn expire_presence(&self, cutoff: DateTime<Utc>, batch: usize) -> Result<Vec<Event>> {
        self.timed(
            Op::ExpirePresence,
            self.inner.expire_presence(cutoff, batch),
        )
        .await
    }

    async fn presence(
        &self,
        topic: &str,
        alive_since: DateTime<Utc>,
        subjects: bool,
    ) -> Result<Presence> {
        self.timed(
            Op::Presence,
            self.inner.presence(topic, alive_since, subjects),
        )
        .await
    }

    async fn claim(&self, claim: &KeyClaim, id: Uuid) -> Result<Claim> {
        self.timed(Op::Claim, self.inner.claim(claim, id)).await
    }

    async fn purge_keys(&self, batch: usize) -> Result<usize> {
        self.timed(Op::PurgeKeys, self.inner.purge_keys(batch))
            .await
    }

    /// Not timed: a health probe is not the store's load.
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    fn commits_every_write(&self) -> bool {
        self.inner.commits_every_write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_line_up_with_their_labels() {
        for (op, name) in [
            (Op::Create, "create"),
            (Op::Get, "get"),
            (Op::List, "list"),
            (Op::Update, "update"),
            (Op::Delete, "delete"),
            (Op::Publish, "publish"),
            (Op::EventsAfter, "events_after"),
            (Op::Compact, "compact"),
            (Op::DroppedThrough, "dropped_through"),
            (Op::Claim, "claim"),
            (Op::PurgeKeys, "purge_keys"),
            (Op::Topics, "topics"),
            (Op::ReportPresence, "report_presence"),
            (Op::ExpirePresence, "expire_presence"),
            (Op::Presence, "presence"),
        ] {
            assert_eq!(OPERATIONS[op as usize], name);
        }
    }
}
