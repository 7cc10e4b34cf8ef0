//! The follower's life under paused time, over a store whose change feed the test writes.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use uuid::Uuid;

use super::*;
use crate::{
    metrics::RpcMetrics,
    store::{
        Claim, Event, EventChange, EventPage, EventPatch, KeyClaim, NewEvent, Precondition, Result,
        Retention, TopicHead,
    },
};
use eventsys::topics::{Patterns, Selection};

/// A store that only follows: each `follow` is counted, and its feed is the test's to
/// write; `live` counts the feeds not dropped yet.
#[derive(Default)]
struct FakeFeed {
    follows: AtomicUsize,
    live: Arc<AtomicUsize>,
    feed: Mutex<Option<mpsc::UnboundedSender<Event>>>,
}

/// Counts a feed as live until it is dropped.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeFeed {
    fn publish(&self, topic: &str, seq: u64) {
        let event = Event {
            id: Uuid::new_v4(),
            user_id: String::new(),
            title: format!("{seq}"),
            description: String::new(),
            completed: false,
            created_at: chrono::Utc::now(),
            topic: topic.to_owned(),
            data: None,
            time: Some(chrono::Utc::now()),
            seq,
            revision: 1,
        };
        let feed = self.feed.lock().unwrap();
        feed.as_ref().expect("followed").send(event).unwrap();
    }
}

#[async_trait]
impl EventStore for FakeFeed {
    async fn follow(&self) -> Result<BoxStream<'static, Result<Followed>>> {
        self.follows.fetch_add(1, Ordering::SeqCst);
        self.live.fetch_add(1, Ordering::SeqCst);
        let (tx, mut rx) = mpsc::unbounded_channel();
        *self.feed.lock().unwrap() = Some(tx);
        let live = Live(self.live.clone());
        Ok(futures::stream::poll_fn(move |cx| {
            let _alive = &live;
            rx.poll_recv(cx)
                .map(|event| event.map(|e| Ok(Followed::Published(e))))
        })
        .boxed())
    }

    async fn events_after(&self, _: &str, _: u64, _: usize) -> Result<Vec<Event>> {
        Ok(Vec::new())
    }

    async fn changes_after(&self, _: &str, _: u64, _: usize) -> Result<Vec<EventChange>> {
        Ok(Vec::new())
    }

    async fn changes_dropped_through(&self, _: &str) -> Result<u64> {
        Ok(0)
    }

    async fn create(&self, _: NewEvent) -> Result<Event> {
        unimplemented!("the feed only follows")
    }

    async fn get(&self, _: Uuid, _: Option<String>) -> Result<Event> {
        unimplemented!("the feed only follows")
    }

    async fn list(&self, _: Option<String>, _: usize, _: Option<String>) -> Result<EventPage> {
        unimplemented!("the feed only follows")
    }

    async fn update(
        &self,
        _: Uuid,
        _: Option<String>,
        _: EventPatch,
        _: Precondition,
    ) -> Result<Event> {
        unimplemented!("the feed only follows")
    }

    async fn delete(&self, _: Uuid, _: Option<String>, _: Precondition) -> Result<()> {
        unimplemented!("the feed only follows")
    }

    async fn publish(&self, _: NewEvent) -> Result<Event> {
        unimplemented!("the feed only follows")
    }

    async fn compact(&self, _: Retention, _: usize) -> Result<usize> {
        unimplemented!("the feed only follows")
    }

    async fn dropped_through(&self, _: &str) -> Result<u64> {
        Ok(0)
    }

    async fn topics(&self, _: &Patterns, _: usize) -> Result<Vec<TopicHead>> {
        Ok(Vec::new())
    }

    async fn report_presence(
        &self,
        _: crate::store::presence::PresenceReport,
    ) -> Result<crate::store::presence::Reported> {
        unimplemented!("the feed only follows")
    }

    async fn expire_presence(
        &self,
        _: chrono::DateTime<chrono::Utc>,
        _: usize,
    ) -> Result<Vec<Event>> {
        unimplemented!("the feed only follows")
    }

    async fn presence(
        &self,
        _: &str,
        _: chrono::DateTime<chrono::Utc>,
        _: bool,
    ) -> Result<crate::store::presence::Presence> {
        unimplemented!("the feed only follows")
    }

    async fn claim(&self, _: &KeyClaim, _: Uuid) -> Result<Claim> {
        unimplemented!("the feed only follows")
    }

    async fn purge_keys(&self, _: usize) -> Result<usize> {
        unimplemented!("the feed only follows")
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

fn feed(store: &Arc<FakeFeed>) -> Feed {
    Feed::new(
        store.clone(),
        Arc::new(Stats::default()),
        FeedSettings::default(),
        CancellationToken::new(),
        RpcMetrics::new().feed_delay(),
    )
}

/// Runs a paused-time test's `body`, failing it when it has not finished within an hour of
/// virtual time (the clock jumps to the timeout when nothing else can run), instead of
/// hanging.
async fn bounded<F: std::future::Future>(body: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), body)
        .await
        .expect("the test waited an hour of virtual time for what never came")
}

/// Runs other tasks, without letting time pass, until `done`.
async fn until(done: impl Fn() -> bool) {
    while !done() {
        tokio::task::yield_now().await;
    }
}

fn follower(feed: &Feed) -> Follower {
    feed.subscribers().follower.borrow().clone()
}

/// Subscribes to `topic` and reads one live event through it (so the follower runs).
async fn subscribed(feed: &Feed, store: &FakeFeed, topic: &str, seq: u64) -> EventStream {
    let mut events = feed.subscribe(StreamOf::Topic(topic.to_owned()), seq - 1, None);
    until(|| follower(feed) == Follower::Running && !feed.subscribers().streams.is_empty()).await;
    store.publish(topic, seq);
    let first = events
        .next()
        .await
        .expect("an event")
        .expect("not an error");
    assert_eq!(first.seq, seq);
    events
}

#[tokio::test(start_paused = true)]
async fn the_follower_stops_idle_stop_after_the_last_subscriber_leaves() {
    bounded(async {
        let store = Arc::new(FakeFeed::default());
        let feed = feed(&store);
        let events = subscribed(&feed, &store, "t", 1).await;
        drop(events);
        until(|| feed.subscribers().streams.is_empty()).await;

        tokio::time::sleep(IDLE_STOP - Duration::from_millis(1)).await;
        assert_eq!(
            follower(&feed),
            Follower::Running,
            "stopped before IDLE_STOP"
        );
        assert_eq!(store.live.load(Ordering::SeqCst), 1);

        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(follower(&feed), Follower::Stopped);
        assert_eq!(
            store.live.load(Ordering::SeqCst),
            0,
            "the store's feed is let go"
        );

        // The next subscriber starts a new follower.
        let _again = subscribed(&feed, &store, "t", 2).await;
        assert_eq!(store.follows.load(Ordering::SeqCst), 2);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_back_within_idle_stop_keeps_the_follower() {
    bounded(async {
        let store = Arc::new(FakeFeed::default());
        let feed = feed(&store);
        drop(subscribed(&feed, &store, "t", 1).await);
        until(|| feed.subscribers().streams.is_empty()).await;
        tokio::time::sleep(IDLE_STOP / 2).await;

        let _back = subscribed(&feed, &store, "u", 2).await;
        // Long past the first idle period: the follower that was running still is.
        tokio::time::sleep(IDLE_STOP * 3).await;
        assert_eq!(follower(&feed), Follower::Running);
        assert_eq!(
            store.follows.load(Ordering::SeqCst),
            1,
            "one follower throughout"
        );
    })
    .await;
}

/// Two selections on one follower: each gets the events of its own topics that its filter
/// accepts, each topic's in order; a selection's leaving takes its ring out of the follower's
/// list.
#[tokio::test(start_paused = true)]
async fn selections_get_their_topics_events_that_their_filters_accept() {
    bounded(async {
        let store = Arc::new(FakeFeed::default());
        let feed = feed(&store);
        let selection = |patterns: &[&str], filter: Option<&str>| {
            Selection::new(
                Patterns::parse(patterns.iter().copied()).unwrap(),
                filter.map(|f| eventsys::topics::Filter::parse(f).unwrap()),
            )
        };
        let mut wide =
            feed.subscribe_selection(selection(&["a.*"], None), Default::default(), None);
        let narrow_of = selection(&["a.x", "b"], Some(r#"title != "2""#));
        let mut narrow = feed.subscribe_selection(narrow_of.clone(), Default::default(), None);
        until(|| follower(&feed) == Follower::Running && feed.subscribers().selections.len() == 2)
            .await;
        for (topic, seq) in [
            ("a.x", 1),
            ("b", 1),
            ("a.x", 2),
            ("c", 1),
            ("a.y", 1),
            ("b", 2),
        ] {
            store.publish(topic, seq);
        }
        let next = async |events: &mut EventStream| {
            let event: eventsys::v1::Event = events
                .next()
                .await
                .expect("an event")
                .expect("not an error")
                .decode()
                .unwrap();
            (event.topic, event.seq)
        };
        for want in [("a.x", 1), ("a.x", 2), ("a.y", 1)] {
            let got = next(&mut wide).await;
            assert_eq!((got.0.as_str(), got.1), want);
        }
        for want in [("a.x", 1), ("b", 1)] {
            let got = next(&mut narrow).await;
            assert_eq!((got.0.as_str(), got.1), want);
        }
        // `b` 2 is rejected (its title is "2"); the next accepted one comes through.
        store.publish("a.x", 3);
        let got = next(&mut narrow).await;
        assert_eq!((got.0.as_str(), got.1), ("a.x", 3));

        drop(narrow);
        until(|| feed.subscribers().selections.len() == 1).await;
        let left = feed.subscribers().selections[0].0.clone();
        assert_ne!(*left, narrow_of);
    })
    .await;
}
