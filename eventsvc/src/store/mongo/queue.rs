//! A topic's publishes from this process, in batches. Publishers of one topic race for its next
//! `seq` (the unique index takes one, the others read again), so many of them at once mostly
//! lose; queued here, a topic's publishes race only with other processes', and those queued
//! while a batch was being stored go together in the next (`publish::publish_batch`): one
//! command and one journal commit for all of them. A lone publish goes at once (no timer).
//! Measured with the turns this replaced (one publish at a time per topic): see
//! docs/perf/log.md, "MongoDB: creates and publishes in batches".

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::oneshot;

use super::publish::{Publishing, publish_batch};
use crate::store::{Event, NewEvent, Result, StoreError, batching};

/// A publish waiting for its batch, with where its answer goes.
struct Waiting {
    new: NewEvent,
    answer: oneshot::Sender<Result<Event>>,
}

/// Each topic with a batch being stored, and the publishes queued behind it. An entry lives
/// while its topic's task runs, so the map is bounded by the publishes in flight, as each
/// queue is. The lock is held only to queue or take.
type Topics = Arc<Mutex<HashMap<String, Vec<Waiting>>>>;

/// This process's publish queues, one per topic with publishes in flight.
pub(super) struct PublishQueues {
    to: Publishing,
    topics: Topics,
}

impl PublishQueues {
    pub(super) fn new(to: Publishing) -> PublishQueues {
        PublishQueues {
            to,
            topics: Topics::default(),
        }
    }

    /// Stores `new` in its topic's next batch; its answer.
    pub(super) async fn publish(&self, new: NewEvent) -> Result<Event> {
        let (answer, answered) = oneshot::channel();
        let topic = new.topic.clone();
        let waiting = Waiting { new, answer };
        let first = {
            let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
            match topics.get_mut(&topic) {
                Some(queue) => {
                    queue.push(waiting);
                    None
                }
                None => {
                    topics.insert(topic.clone(), Vec::new());
                    Some(waiting)
                }
            }
        };
        // A task of its own, not this caller's: a caller that gives up (its deadline) must not
        // stop the batch it is storing for the others.
        if let Some(first) = first {
            let draining = Draining {
                topics: self.topics.clone(),
                topic,
                removed: false,
            };
            tokio::spawn(drain(self.to.clone(), draining, vec![first]));
        }
        answered.await.map_err(|_| StoreError::Unavailable {
            op: "publish",
            reason: "the topic's publishing task stopped".into(),
        })?
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A topic's task's hold on its entry: dropped before the task removed it (a panic), the entry
/// goes, and with it every publish still queued (answered `Unavailable`).
struct Draining {
    topics: Topics,
    topic: String,
    /// The task removed its entry itself: the topic's entry, if any, is a newer task's.
    removed: bool,
}

impl Drop for Draining {
    fn drop(&mut self) {
        if !self.removed {
            self.topics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.topic);
        }
    }
}

/// Stores `batch`, then what queued meanwhile, until the topic's queue is empty.
async fn drain(to: Publishing, mut draining: Draining, mut batch: Vec<Waiting>) {
    loop {
        let news: Vec<&NewEvent> = batch.iter().map(|w| &w.new).collect();
        let answers = publish_batch(&to, &draining.topic, &news).await;
        for (waiting, answer) in batch.drain(..).zip(answers) {
            let _ = waiting.answer.send(answer);
        }
        let mut topics = draining
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let queue = topics.get_mut(&draining.topic).filter(|q| !q.is_empty());
        let Some(queue) = queue else {
            // Removed under the same lock a publisher queues under: none is left behind.
            topics.remove(&draining.topic);
            drop(topics);
            draining.removed = true;
            return;
        };
        let take = batching::take(queue, |waiting| waiting.new.size());
        batch = queue.drain(..take).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_topic_with_nothing_in_flight_keeps_no_entry() {
        // Collections of a client that never connects: each batch fails fast, and still the
        // queue drains and its entry goes.
        let client = mongodb::Client::with_uri_str(
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=10&connectTimeoutMS=10",
        )
        .await
        .unwrap();
        let db = client.database("none");
        let queues = PublishQueues::new(Publishing {
            events: db.collection("events"),
            counters: db.collection("counters"),
            hints: db.collection("counters"),
        });
        let new = |title: &str| NewEvent {
            topic: "t".into(),
            title: title.into(),
            ..NewEvent::default()
        };
        let (a, b) = tokio::join!(queues.publish(new("a")), queues.publish(new("b")));
        assert!(matches!(a, Err(StoreError::Unavailable { .. })), "{a:?}");
        assert!(matches!(b, Err(StoreError::Unavailable { .. })), "{b:?}");
        assert_eq!(queues.len(), 0);
    }
}
