//! The election between stores on one file, in one process (each store takes part as a
//! process would): one leads, the others' writes are committed by its writer and answered as
//! its writer answered them, and when it closes another takes over.

use std::time::{Duration, Instant};

use super::super::SqliteStore;
use crate::store::{EventPatch, EventStore, NewEvent, Precondition, StoreError};

/// Waits (bounded) until `led` says `store` leads or not.
async fn until_leading(store: &SqliteStore, led: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.lead.leading() != led {
        assert!(Instant::now() < deadline, "leading stayed {}", !led);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn named(title: &str) -> NewEvent {
    NewEvent {
        id: Some(uuid::Uuid::now_v7()),
        user_id: "u".into(),
        title: title.into(),
        topic: "t".into(),
        ..NewEvent::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_has_its_writes_committed_by_the_leader_and_gives_its_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let leader = SqliteStore::open(path.clone()).await.unwrap();
    until_leading(&leader, true).await;
    let follower = std::sync::Arc::new(SqliteStore::open(path.clone()).await.unwrap());
    assert!(!follower.lead.leading());

    // With the lock held elsewhere, the follower's writes wait in the leader's queue (one in
    // its writer, the rest queued), none in the follower's.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let writes: Vec<_> = (0..3)
        .map(|i| {
            let follower = follower.clone();
            tokio::spawn(async move { follower.publish(named(&format!("w{i}"))).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader.writer.queued() < 2 {
        assert!(
            Instant::now() < deadline,
            "the writes never reached the leader"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(follower.writer.queued(), 0);
    other.execute_batch("COMMIT").unwrap();
    let mut seqs = Vec::new();
    for write in writes {
        let event = write.await.unwrap().unwrap();
        assert_eq!(follower.get(event.id, None).await.unwrap(), event);
        seqs.push(event.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3]);

    // Each answer as the leader's writer gave it, refusals included.
    let first = named("first");
    let stored = follower.publish(first.clone()).await.unwrap();
    assert_eq!(stored.seq, 4);
    assert_eq!(follower.publish(first.clone()).await.unwrap(), stored);
    let other_content = NewEvent {
        title: "other".into(),
        ..first
    };
    assert!(matches!(
        follower.create(other_content).await,
        Err(StoreError::AlreadyExists)
    ));
    let patch = EventPatch {
        title: "patched".into(),
        ..EventPatch::default()
    };
    let patched = follower
        .update(stored.id, None, patch.clone(), Precondition::None)
        .await
        .unwrap();
    assert_eq!(patched.title, "patched");
    let missing = uuid::Uuid::now_v7();
    assert!(matches!(
        follower
            .update(missing, None, patch, Precondition::None)
            .await,
        Err(StoreError::NotFound)
    ));
    follower
        .delete(stored.id, None, Precondition::None)
        .await
        .unwrap();
    assert!(matches!(
        follower.delete(stored.id, None, Precondition::None).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(follower.writer.queued(), 0);
}

/// `step`, failing the test with its name if it takes longer than any step should (a hand-over
/// that hung once in CI: this says where, instead of stalling the run).
async fn within<T>(step: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .unwrap_or_else(|_| panic!("{step}: no answer within 20 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_leader_closes_the_follower_writes_on_and_takes_the_lead() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let leader = SqliteStore::open(path.clone()).await.unwrap();
    until_leading(&leader, true).await;
    let follower = SqliteStore::open(path.clone()).await.unwrap();
    let sent = within("sent", follower.create(named("sent")))
        .await
        .unwrap();
    let socket = super::beside(&path, "-writer.sock");
    assert!(socket.exists());

    drop(leader);
    // Until it leads, it commits its own writes; then it serves the socket again.
    let own = within("own", follower.create(named("own"))).await.unwrap();
    until_leading(&follower, true).await;
    let led = within("led", follower.create(named("led"))).await.unwrap();
    for event in [sent, own, led] {
        assert_eq!(follower.get(event.id, None).await.unwrap(), event);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the new leader never listened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let third = within("open third", SqliteStore::open(path)).await.unwrap();
    let event = within("third", third.create(named("third"))).await.unwrap();
    assert_eq!(follower.get(event.id, None).await.unwrap(), event);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_sends_garbage_or_too_much_is_dropped_and_the_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let leader = SqliteStore::open(path.clone()).await.unwrap();
    until_leading(&leader, true).await;
    let socket = super::beside(&path, "-writer.sock");
    let follower = SqliteStore::open(path.clone()).await.unwrap();

    // A frame that is not a write; a length past the largest frame; each connection closed
    // by the leader, nothing stored.
    let garbage = b"not json";
    let mut frames = vec![(garbage.len() as u32).to_be_bytes().to_vec()];
    frames[0].extend_from_slice(garbage);
    frames.push(u32::MAX.to_be_bytes().to_vec());
    for frame in frames {
        let mut peer = tokio::net::UnixStream::connect(&socket).await.unwrap();
        peer.write_all(&frame).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut rest))
            .await
            .expect("the leader closes the connection");
        assert!(read.is_err() || rest.is_empty(), "answered: {rest:?}");
    }
    // The leader serves on.
    let event = follower.create(named("after")).await.unwrap();
    assert_eq!(leader.get(event.id, None).await.unwrap(), event);
    let page = leader.list(None, 10, None).await.unwrap();
    assert_eq!(page.events, [event]);
}

/// A publish committed by the leader reaches a follower's feed at once: the leader's writer
/// signals the commit and the follower's watch wakes it, with its poll set to an hour (so
/// without the signal the follower would not read it within the test's bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_by_another_process_wakes_a_follower_without_its_poll() {
    use futures::StreamExt;

    use crate::store::Followed;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let leader = SqliteStore::open(path.clone()).await.unwrap();
    until_leading(&leader, true).await;
    let mut follower = SqliteStore::open(path.clone()).await.unwrap();
    follower.follow_poll = Duration::from_secs(3600);
    let mut followed = follower.follow().await.unwrap();
    for title in ["first", "second"] {
        let event = leader.publish(named(title)).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), followed.next())
            .await
            .unwrap_or_else(|_| panic!("{title}: the follower was not woken"));
        match next {
            Some(Ok(Followed::Published(got))) => assert_eq!(got, event),
            _ => panic!("{title}: not the published event"),
        }
    }
}
