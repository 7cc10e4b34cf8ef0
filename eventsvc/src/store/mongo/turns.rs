//! One publish at a time per topic from this process. Publishers of one topic race for its next
//! `seq` (the unique index takes one, the others read again), so many of them at once mostly
//! lose; queued here instead, a topic's publishes race only with other processes'. Measured
//! with the transactions this store used before (same race, costlier to lose): 32 clients on
//! one topic went from 61–80 to 207–234 publishes/s.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::{Mutex as Turn, OwnedMutexGuard};

/// The topics with a publish in progress or waiting here. The map's lock is held only to find
/// or drop an entry; an entry lives while someone holds or awaits its turn, so the map is
/// bounded by the publishes in flight.
#[derive(Default)]
pub(super) struct TopicTurns(Mutex<HashMap<String, Arc<Turn<()>>>>);

/// This publish's turn on its topic; the next one's begins when it is dropped.
pub(super) struct Held<'a> {
    turns: &'a TopicTurns,
    topic: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl TopicTurns {
    /// Waits for `topic`'s turn.
    pub(super) async fn take(&self, topic: &str) -> Held<'_> {
        let turn = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(topic.to_owned())
            .or_default()
            .clone();
        Held {
            turns: self,
            topic: topic.to_owned(),
            guard: Some(turn.lock_owned().await),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut turns = self.turns.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the map holds it: nobody holds or awaits this topic's turn any more.
        if turns
            .get(&self.topic)
            .is_some_and(|turn| Arc::strong_count(turn) == 1)
        {
            turns.remove(&self.topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_turn_per_topic_and_nothing_kept_after() {
        let turns = TopicTurns::default();
        let first = turns.take("a").await;
        let other_topic = turns.take("b").await;
        let mut waiting = Box::pin(turns.take("a"));
        assert!(
            futures::poll!(waiting.as_mut()).is_pending(),
            "a's second publish waits for the first"
        );
        drop(other_topic);
        drop(first);
        let second = waiting.await;
        assert_eq!(turns.len(), 1, "only a is in use");
        drop(second);
        assert_eq!(turns.len(), 0, "the map holds no idle topic");
    }
}
