//! A hub's timers under paused time, over a backend the test drives.

use tonic::Status;

use super::{
    super::{frame::Frame, ring::Read},
    *,
};
use crate::testing::{self, FakeBackend, advance, event, until};

const MS: Duration = Duration::from_millis(1);

/// Joins `topic` after `after` in the background; the backend's `Subscribe` comes to the
/// test, which accepts it; the reader's place once the hub is open.
async fn open(
    state: &AppState,
    backend: &mut FakeBackend,
    topic: &'static str,
) -> (
    Joined,
    tokio::sync::mpsc::Sender<Result<eventsys::v1::Event, Status>>,
) {
    let joining = {
        let state = state.clone();
        tokio::spawn(async move {
            let of = StreamOf::Topic(topic.into());
            state.hubs.join(&state, &of, Place::Seq(0), None).await
        })
    };
    let subscribed = backend.subscribed().await;
    assert_eq!(subscribed.request.topic, topic);
    let events = subscribed.accept();
    let joined = joining.await.unwrap().expect("the hub opens");
    (joined, events)
}

fn read(joined: &Joined, position: u64) -> Read {
    joined.member.ring.read(position)
}

#[tokio::test(start_paused = true)]
async fn a_hub_outlives_its_last_reader_by_linger_then_lets_its_stream_go() {
    testing::bounded(async {
        let mut backend = FakeBackend::start().await;
        let (state, _stop) = testing::gateway(&[&backend], &[]).await;
        let (joined, events) = open(&state, &mut backend, "t").await;
        assert!(joined.covered && joined.position == 0);
        drop(joined);

        advance(LINGER - MS).await;
        assert_eq!(state.hubs.count(), 1, "closed before LINGER");
        assert!(!events.is_closed());
        advance(2 * MS).await;
        assert_eq!(state.hubs.count(), 0, "still open after LINGER");
        // Its backend stream is reset: the backend stops sending.
        tokio::time::timeout(Duration::from_secs(1), events.closed())
            .await
            .expect("the backend's stream is let go");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_reader_back_within_linger_finds_the_same_hub() {
    testing::bounded(async {
        let mut backend = FakeBackend::start().await;
        let (state, _stop) = testing::gateway(&[&backend], &[]).await;
        let (first, events) = open(&state, &mut backend, "t").await;
        drop(first);
        advance(LINGER / 2).await;

        let of = StreamOf::Topic("t".into());
        let again = state
            .hubs
            .join(&state, &of, Place::Seq(0), None)
            .await
            .unwrap();
        assert_eq!(state.hubs.count(), 1, "a second hub was opened");
        // Its ring still holds all since it opened at 0: read from there, not from the store.
        assert!(again.covered && again.position == 0);
        advance(LINGER * 3).await;
        assert_eq!(state.hubs.count(), 1);
        assert!(backend.subscribes.try_recv().is_err(), "subscribed twice");
        // It still carries the backend's events.
        events.send(Ok(event("t", 1))).await.unwrap();
        until(|| matches!(read(&again, again.position), Read::Frame(_))).await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_quiet_hub_sends_a_keep_alive_every_interval_and_events_reset_it() {
    testing::bounded(async {
        let mut backend = FakeBackend::start().await;
        let (state, _stop) = testing::gateway(&[&backend], &["--sse-keep-alive", "15s"]).await;
        let keep_alive = Duration::from_secs(15);
        let (joined, events) = open(&state, &mut backend, "t").await;

        advance(keep_alive - MS).await;
        assert!(
            matches!(read(&joined, 0), Read::Empty),
            "a keep-alive too soon"
        );
        advance(2 * MS).await;
        match read(&joined, 0) {
            Read::Frame(frame) => {
                assert_eq!((frame.seq, &frame.bytes[..]), (None, &b":\n\n"[..]))
            }
            other => panic!("no keep-alive after the interval: {other:?}"),
        }

        // An event restarts the quiet period.
        advance(keep_alive / 2).await;
        events.send(Ok(event("t", 1))).await.unwrap();
        until(|| matches!(read(&joined, 1), Read::Frame(_))).await;
        advance(keep_alive - MS).await;
        assert!(
            matches!(read(&joined, 2), Read::Empty),
            "a keep-alive despite the event"
        );
        advance(2 * MS).await;
        assert!(matches!(
            read(&joined, 2),
            Read::Frame(Frame { seq: None, .. })
        ));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_stream_is_resubscribed_after_the_last_seq_with_growing_pauses() {
    testing::bounded(async {
        let mut backend = FakeBackend::start().await;
        let (state, _stop) = testing::gateway(&[&backend], &[]).await;
        let (joined, events) = open(&state, &mut backend, "t").await;
        events.send(Ok(event("t", 1))).await.unwrap();
        until(|| matches!(read(&joined, 0), Read::Frame(_))).await;

        // The backend ends the stream; the hub waits, then subscribes after seq 1. While the
        // backend turns it away (a passing refusal), the pauses grow within the backoff.
        drop(events);
        let ended = tokio::time::Instant::now();
        let mut previous = ended;
        for attempt in 0..4 {
            let subscribed = backend.subscribed().await;
            assert_eq!(subscribed.request.after_seq, 1);
            let pause = subscribed.at - previous;
            let backoff = crate::upstream::RESUBSCRIBE;
            assert!(
                pause >= backoff.min() && pause <= backoff.base(attempt) + MS,
                "attempt {attempt}: paused {pause:?}"
            );
            previous = subscribed.at;
            subscribed.refuse(Status::resource_exhausted("busy"));
        }
        // Taken at last: events flow again, with no gap and no repeat.
        let events = backend.subscribed().await.accept();
        events.send(Ok(event("t", 1))).await.unwrap();
        events.send(Ok(event("t", 2))).await.unwrap();
        until(|| matches!(read(&joined, 1), Read::Frame(Frame { seq: Some(2), .. }))).await;
        assert!(matches!(read(&joined, 2), Read::Empty), "seq 1 came twice");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_permanent_refusal_ends_the_hub_without_another_try() {
    testing::bounded(async {
        let mut backend = FakeBackend::start().await;
        let (state, _stop) = testing::gateway(&[&backend], &[]).await;
        let (joined, events) = open(&state, &mut backend, "t").await;
        drop(events);
        backend
            .subscribed()
            .await
            .refuse(Status::permission_denied("the token expired"));
        until(|| matches!(read(&joined, 0), Read::Closed)).await;
        assert_eq!(state.hubs.count(), 0);
        advance(Duration::from_secs(60)).await;
        assert!(backend.subscribes.try_recv().is_err(), "tried again");
    })
    .await;
}

/// A client joining an open hub reads it from the ring's start, with no store read, only when
/// the ring holds all it needs: the hub opened at or before the client's place and has
/// dropped nothing since. Else it starts at the ring's end (and catches up from the store).
#[tokio::test(start_paused = true)]
async fn a_joiner_reads_the_ring_from_its_start_only_when_it_holds_all_the_joiner_needs() {
    testing::bounded(async {
        let mut backend = FakeBackend::start().await;
        let (state, _stop) = testing::gateway(&[&backend], &[]).await;
        let of = StreamOf::Topic("t".into());
        let joining = {
            let (state, of) = (state.clone(), of.clone());
            tokio::spawn(async move { state.hubs.join(&state, &of, Place::Seq(5), None).await })
        };
        let events = backend.subscribed().await.accept();
        let opener = joining.await.unwrap().expect("the hub opens");
        events.send(Ok(event("t", 6))).await.unwrap();
        until(|| matches!(read(&opener, 0), Read::Frame(_))).await;

        let join = |after| {
            let (state, of) = (state.clone(), of.clone());
            async move {
                state
                    .hubs
                    .join(&state, &of, Place::Seq(after), None)
                    .await
                    .unwrap()
            }
        };
        let later = join(7).await;
        assert!(later.covered && later.position == 0);
        let earlier = join(2).await;
        assert!(!earlier.covered, "seqs 3 to 5 are not in the ring");
        assert_eq!(earlier.position, 1);

        // Past its bound the ring drops its oldest frames: no joiner is covered any more.
        for seq in 7..7 + RING_FRAMES as u64 {
            events.send(Ok(event("t", seq))).await.unwrap();
        }
        until(|| matches!(read(&opener, 0), Read::Lagged)).await;
        let late = join(5).await;
        assert!(!late.covered);
        assert_eq!(late.position, later.member.ring.end());
    })
    .await;
}
