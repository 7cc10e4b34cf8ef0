//! The `EventStore` contract, written once against the trait and run against every store:
//! SQLite always; MongoDB on SecantusDB (started by the tests) or on the replica set
//! `EVENTSVC_TEST_MONGO_URI` names; PostgreSQL on a cluster the tests start.

use std::{collections::HashSet, sync::Arc};

use std::time::Duration;

use eventsvc::store::{
    Claim, EventPatch, EventStore, Followed, JsonObject, KeyClaim, NewEvent, Precondition,
    Retention, StoreError,
};
use serde_json::json;
use uuid::Uuid;

/// A store under test and whatever keeps it alive (a temporary directory, a database to drop).
pub struct Fixture {
    pub store: Arc<dyn EventStore>,
    /// A second, independent handle on the same data: another connection pool, as another
    /// process would have.
    pub other: Arc<dyn EventStore>,
    _keep: Box<dyn std::any::Any + Send>,
    /// Run after the case (dropping a test database).
    cleanup: Option<futures::future::BoxFuture<'static, ()>>,
}

fn event(user: &str, title: &str) -> NewEvent {
    NewEvent {
        user_id: user.into(),
        title: title.into(),
        description: format!("about {title}"),
        ..NewEvent::default()
    }
}

fn on_topic(topic: &str, title: &str) -> NewEvent {
    NewEvent {
        topic: topic.into(),
        ..event("pub", title)
    }
}

fn object(value: serde_json::Value) -> JsonObject {
    value.as_object().cloned().expect("an object")
}

pub async fn crud_round_trip(f: Fixture) {
    let s = f.store;
    let new = NewEvent {
        completed: true,
        topic: "labels.only".into(),
        data: Some(object(json!({"k": [1, 2.5, "x", null, {"deep": true}]}))),
        ..event("u1", "first")
    };
    let created = s.create(new.clone()).await.unwrap();
    assert_eq!(created.user_id, "u1");
    assert_eq!(created.title, "first");
    assert!(created.completed);
    assert_eq!(created.data, new.data);
    assert_eq!(
        (created.seq, created.time),
        (0, None),
        "create does not publish"
    );
    assert_eq!(created.id.get_version_num(), 7, "ids are time-ordered (v7)");
    assert_eq!(s.get(created.id, None).await.unwrap(), created);

    let patch = EventPatch {
        title: "renamed".into(),
        description: "new words".into(),
        completed: false,
    };
    let updated = s
        .update(created.id, None, patch.clone(), Precondition::None)
        .await
        .unwrap();
    assert_eq!(updated.title, "renamed");
    assert_eq!(updated.description, "new words");
    assert!(!updated.completed);
    fn untouched(e: &eventsvc::store::Event) -> impl PartialEq + std::fmt::Debug + '_ {
        (
            e.id,
            &e.user_id,
            e.created_at,
            &e.topic,
            &e.data,
            e.seq,
            e.time,
        )
    }
    assert_eq!(untouched(&updated), untouched(&created));
    assert_eq!(s.get(created.id, None).await.unwrap(), updated);

    s.delete(created.id, None, Precondition::None)
        .await
        .unwrap();
    assert!(matches!(
        s.get(created.id, None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.delete(created.id, None, Precondition::None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.update(created.id, None, patch, Precondition::None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.get(Uuid::new_v4(), None).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn user_scoping(f: Fixture) {
    let s = f.store;
    let alice = s.create(event("alice", "a1")).await.unwrap();
    let bob = s.create(event("bob", "b1")).await.unwrap();
    let alice2 = s.create(event("alice", "a2")).await.unwrap();
    let owner = |u: &str| Some(u.to_string());

    assert_eq!(s.get(alice.id, owner("alice")).await.unwrap(), alice);
    assert!(matches!(
        s.get(alice.id, owner("bob")).await,
        Err(StoreError::NotFound)
    ));
    let patch = EventPatch {
        title: "hijacked".into(),
        ..EventPatch::default()
    };
    assert!(matches!(
        s.update(alice.id, owner("bob"), patch, Precondition::None)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.delete(alice.id, owner("bob"), Precondition::None).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.get(alice.id, None).await.unwrap(),
        alice,
        "left untouched"
    );

    let ids =
        |page: eventsvc::store::EventPage| page.events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list(owner("alice"), 100, None).await.unwrap()),
        [alice.id, alice2.id]
    );
    assert_eq!(
        ids(s.list(owner("bob"), 100, None).await.unwrap()),
        [bob.id]
    );
    assert!(
        s.list(owner("nobody"), 100, None)
            .await
            .unwrap()
            .events
            .is_empty()
    );
    assert_eq!(
        ids(s.list(None, 100, None).await.unwrap()),
        [alice.id, bob.id, alice2.id]
    );
    s.delete(bob.id, owner("bob"), Precondition::None)
        .await
        .unwrap();
}

pub async fn list_pages_in_creation_order(f: Fixture) {
    let s = f.store;
    let mut made = Vec::new();
    for i in 0..25 {
        let user = if i % 2 == 0 { "even" } else { "odd" };
        made.push(s.create(event(user, &format!("e{i}"))).await.unwrap().id);
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = s.list(None, 10, cursor).await.unwrap();
        pages += 1;
        assert!(page.events.len() <= 10);
        seen.extend(page.events.iter().map(|e| e.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, made);

    let evens = s.list(Some("even".into()), 5, None).await.unwrap();
    assert_eq!(evens.events.len(), 5);
    let rest = s.list(Some("even".into()), 100, evens.next).await.unwrap();
    assert_eq!(rest.events.len(), 8);
    assert!(rest.events.iter().all(|e| e.user_id == "even"));
    assert_eq!(rest.next, None);
    assert!(matches!(
        s.list(None, 10, Some("garbage".into())).await,
        Err(StoreError::InvalidCursor)
    ));
}

pub async fn publish_orders_per_topic_and_never_reuses_seq(f: Fixture) {
    let s = f.store;
    for i in 1..=5u64 {
        assert_eq!(
            s.publish(on_topic("a", &format!("a{i}")))
                .await
                .unwrap()
                .seq,
            i
        );
        if i <= 3 {
            assert_eq!(
                s.publish(on_topic("b", &format!("b{i}")))
                    .await
                    .unwrap()
                    .seq,
                i
            );
        }
    }
    let published = s.events_after("a", 0, 100).await.unwrap();
    assert_eq!(
        published.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(
        published
            .iter()
            .all(|e| e.topic == "a" && e.time == Some(e.created_at))
    );
    let after = s.events_after("a", 2, 2).await.unwrap();
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    assert!(s.events_after("a", 5, 100).await.unwrap().is_empty());
    assert!(
        s.events_after("nothing-here", 0, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // Events created with a topic label are not part of the topic's stream.
    s.create(on_topic("a", "not published")).await.unwrap();
    assert_eq!(s.events_after("a", 0, 100).await.unwrap().len(), 5);

    // Deleting the newest event must not hand its seq out again: a subscriber that already saw
    // seq 5 would otherwise skip the next event.
    s.delete(published[4].id, None, Precondition::None)
        .await
        .unwrap();
    assert_eq!(s.publish(on_topic("a", "a6")).await.unwrap().seq, 6);
}

pub async fn concurrent_publishers_get_strictly_increasing_seqs(f: Fixture) {
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    let handles = [f.store.clone(), f.other.clone()];
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = handles[w % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..EACH {
                let e = store
                    .publish(on_topic("race", &format!("w{w}-{i}")))
                    .await
                    .unwrap();
                seqs.push(e.seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one writer's seqs go up: {seqs:?}"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=(WRITERS * EACH) as u64).collect();
    assert_eq!(all, expected, "every seq handed out exactly once, no gaps");

    // Readers on either handle see the same order.
    for store in handles {
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let batch = store.events_after("race", after, 64).await.unwrap();
            let Some(last) = batch.last() else { break };
            after = last.seq;
            seen.extend(batch.iter().map(|e| e.seq));
        }
        assert_eq!(seen, expected);
    }
}

pub async fn unicode_and_large_payloads(f: Fixture) {
    let s = f.store;
    let title = "événement ✓ 事件 حدث 🎉 \u{0} tab\tquote\"".to_string();
    let long = "ж".repeat(32 * 1024); // 64 KiB of two-byte characters
    let data = object(json!({
        "emoji": "👩‍👩‍👧‍👦",
        "blob": "x".repeat(200 * 1024),
        "nested": {"list": (0..1000).collect::<Vec<_>>(), "ключ": "значение"},
        "float": 1.0e-7,
        "big": 9_007_199_254_740_991_i64,
    }));
    let new = NewEvent {
        user_id: "用户-1".into(),
        title: title.clone(),
        description: long.clone(),
        data: Some(data.clone()),
        ..NewEvent::default()
    };
    let created = s.create(new.clone()).await.unwrap();
    let read = s.get(created.id, Some("用户-1".into())).await.unwrap();
    assert_eq!(read, created);
    assert_eq!(read.title, title);
    assert_eq!(read.description, long);
    assert_eq!(read.data, Some(data));

    let published = s
        .publish(NewEvent {
            topic: "unicode".into(),
            ..new
        })
        .await
        .unwrap();
    assert_eq!(s.events_after("unicode", 0, 1).await.unwrap(), [published]);
}

pub async fn ids_are_unique(f: Fixture) {
    let s = f.store;
    let mut ids = HashSet::new();
    for i in 0..50 {
        assert!(ids.insert(s.create(event("u", &i.to_string())).await.unwrap().id));
    }
}

/// A create or publish naming its id stores it at most once: a repeat with the same content
/// returns the stored event (a publish its seq: none allocated again), other content under the
/// id is ALREADY_EXISTS, and a repeat from another process (another pool) sees the same.
pub async fn writes_naming_their_id_are_stored_once(f: Fixture) {
    let s = f.store;
    let id = uuid::Uuid::new_v4();
    let new = NewEvent {
        id: Some(id),
        ..event("u", "once")
    };
    let first = s.create(new.clone()).await.unwrap();
    assert_eq!(first.id, id);
    assert_eq!(s.create(new.clone()).await.unwrap(), first);
    let other = NewEvent {
        title: "something else".into(),
        ..new.clone()
    };
    assert!(matches!(
        s.create(other).await,
        Err(StoreError::AlreadyExists)
    ));
    let page = s.list(Some("u".into()), 10, None).await.unwrap();
    assert_eq!(page.events, [first]);

    let published = NewEvent {
        id: Some(uuid::Uuid::new_v4()),
        ..on_topic("once", "p")
    };
    let stored = s.publish(published.clone()).await.unwrap();
    let again = s.publish(published.clone()).await.unwrap();
    assert_eq!(again, stored, "the same event and seq");
    let next = s.publish(on_topic("once", "q")).await.unwrap();
    assert_eq!(next.seq, stored.seq + 1, "no seq spent on the repeat");
    let changed = NewEvent {
        title: "changed".into(),
        ..published
    };
    assert!(matches!(
        s.publish(changed).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(s.events_after("once", 0, 10).await.unwrap(), [stored, next]);
}

fn key(scope: &str, key: &str, fingerprint: u8) -> KeyClaim {
    KeyClaim {
        scope: scope.into(),
        key: key.into(),
        fingerprint: [fingerprint; 32],
        ttl: Duration::from_secs(3600),
        lease: Duration::from_secs(30),
    }
}

/// An idempotency key: the first claim is fresh; while its write runs another request's claim
/// is in flight and the same write's (the same id) is fresh again; once written, claims get the
/// answer (also from another process, also after the event changed), a different fingerprint is
/// reused, another scope is independent; a claim past its lease or time is fresh.
pub async fn idempotency_keys_answer_once(f: Fixture) {
    let s = f.store;
    let claim = key("user:u", "k-1", 1);
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(s.claim(&claim, first).await.unwrap(), Claim::Fresh);
    assert!(matches!(
        f.other.claim(&claim, second).await,
        Err(StoreError::KeyInFlight)
    ));
    assert_eq!(f.other.claim(&claim, first).await.unwrap(), Claim::Fresh);
    let written = s
        .publish(NewEvent {
            id: Some(first),
            key: Some(claim.clone()),
            ..on_topic("keyed", "once")
        })
        .await
        .unwrap();
    s.update(first, None, EventPatch::default(), Precondition::None)
        .await
        .unwrap();
    for store in [&s, &f.other] {
        assert_eq!(
            store.claim(&claim, second).await.unwrap(),
            Claim::Done(Box::new(written.clone())),
            "the answer as given"
        );
    }
    assert!(matches!(
        s.claim(&key("user:u", "k-1", 2), second).await,
        Err(StoreError::KeyReused)
    ));
    // Another caller's key of the same name and body is theirs alone: neither the answer nor
    // a conflict leaks across scopes.
    for other in [key("user:v", "k-1", 1), key("user:w", "k-1", 2)] {
        assert_eq!(
            f.other.claim(&other, Uuid::new_v4()).await.unwrap(),
            Claim::Fresh,
            "{other:?}"
        );
    }
    assert_eq!(s.events_after("keyed", 0, 10).await.unwrap().len(), 1);

    // A claim whose writer vanished (lease over) is taken over; the late writer is refused.
    let short = KeyClaim {
        lease: Duration::from_millis(1),
        ..key("user:u", "k-2", 1)
    };
    // (Its own id: an abandoned claim whose id names a stored event is answered with that
    // event, where a store records the answer after the write.)
    let vanished = Uuid::new_v4();
    assert_eq!(s.claim(&short, vanished).await.unwrap(), Claim::Fresh);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let third = Uuid::new_v4();
    assert_eq!(s.claim(&short, third).await.unwrap(), Claim::Fresh);
    let late = s
        .create(NewEvent {
            id: Some(Uuid::new_v4()),
            key: Some(short.clone()),
            ..event("u", "late")
        })
        .await;
    assert!(matches!(late, Err(StoreError::KeyInFlight)), "{late:?}");
    let created = s
        .create(NewEvent {
            id: Some(third),
            key: Some(short.clone()),
            ..event("u", "taken over")
        })
        .await
        .unwrap();
    assert_eq!(
        s.claim(&short, first).await.unwrap(),
        Claim::Done(Box::new(created))
    );

    // Expired keys are new again.
    let brief = KeyClaim {
        ttl: Duration::from_millis(1),
        ..key("user:u", "k-3", 1)
    };
    assert_eq!(s.claim(&brief, first).await.unwrap(), Claim::Fresh);
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.purge_keys(100).await.unwrap();
    assert_eq!(
        s.claim(&key("user:u", "k-3", 9), second).await.unwrap(),
        Claim::Fresh
    );
}

/// Retention by count: a topic keeps its newest events, in batches, and says through which
/// `seq` it dropped; other topics and unpublished events are untouched; seqs are never reused.
pub async fn retention_keeps_the_newest_and_records_the_gap(f: Fixture) {
    let s = f.store;
    for i in 0..25 {
        s.publish(on_topic("trimmed", &format!("{i}")))
            .await
            .unwrap();
    }
    for i in 0..3 {
        s.publish(on_topic("short", &format!("{i}"))).await.unwrap();
    }
    let created = s.create(event("u", "not published")).await.unwrap();
    let retention = Retention {
        max_events: Some(10),
        max_age: None,
    };
    let mut dropped = 0;
    loop {
        // Batches of 4: a full batch means more may be due.
        let batch = f.other.compact(retention, 4).await.unwrap();
        dropped += batch;
        if batch < 4 {
            break;
        }
    }
    assert_eq!(dropped, 15);
    let kept: Vec<u64> = s
        .events_after("trimmed", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(kept, (16..=25).collect::<Vec<_>>());
    assert_eq!(s.dropped_through("trimmed").await.unwrap(), 15);
    assert_eq!(s.dropped_through("short").await.unwrap(), 0);
    assert_eq!(s.events_after("short", 0, 10).await.unwrap().len(), 3);
    assert_eq!(s.get(created.id, None).await.unwrap(), created);
    let next = s.publish(on_topic("trimmed", "after")).await.unwrap();
    assert_eq!(next.seq, 26, "seqs are never reused");
}

/// The topics a set of patterns selects: published on (a create's label is no topic), by
/// name in byte order, each with its newest seq and what retention dropped.
pub async fn topics_are_listed_by_pattern(f: Fixture) {
    use eventsys::topics::Patterns;
    let s = f.store;
    for topic in [
        "orders.eu",
        "orders",
        "ordersx",
        "orders.eu.de",
        "alerts",
        "a.b",
        "orders.eu",
    ] {
        s.publish(on_topic(topic, "x")).await.unwrap();
    }
    s.create(on_topic("orders.label", "created, not published"))
        .await
        .unwrap();
    let listed = |patterns: &'static [&'static str], limit: usize| {
        let other = f.other.clone();
        async move {
            let patterns = Patterns::parse(patterns.iter().copied()).unwrap();
            other
                .topics(&patterns, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|h| (h.topic, h.last_seq, h.dropped_through))
                .collect::<Vec<_>>()
        }
    };
    let named = |heads: Vec<(String, u64, u64)>| -> Vec<String> {
        heads.into_iter().map(|(topic, _, _)| topic).collect()
    };
    assert_eq!(
        listed(&["orders.*"], 10).await,
        [
            ("orders.eu".to_owned(), 2, 0),
            ("orders.eu.de".to_owned(), 1, 0)
        ]
    );
    assert_eq!(
        named(listed(&["orders", "alerts"], 10).await),
        ["alerts", "orders"]
    );
    assert_eq!(
        named(listed(&["*"], 10).await),
        [
            "a.b",
            "alerts",
            "orders",
            "orders.eu",
            "orders.eu.de",
            "ordersx"
        ]
    );
    assert_eq!(
        named(listed(&["orders.*", "*"], 2).await),
        ["a.b", "alerts"]
    );
    assert_eq!(
        named(listed(&["orders.eu.*", "a.b"], 10).await),
        ["a.b", "orders.eu.de"]
    );
    assert!(listed(&["nothing.*", "none"], 10).await.is_empty());
    let retention = Retention {
        max_events: Some(1),
        max_age: None,
    };
    while f.other.compact(retention, 10).await.unwrap() > 0 {}
    assert_eq!(
        listed(&["orders.eu"], 10).await,
        [("orders.eu".to_owned(), 2, 1)]
    );
}

/// Presence: gateways report their members; a subject's first connection anywhere and its
/// last one gone are a `join` and a `leave` on the topic's presence topic, recorded once (a
/// silent gateway's leaves by whichever handle expires it first); counts leave out gateways
/// that stopped reporting.
pub async fn presence_records_joins_and_leaves_once(f: Fixture) {
    use chrono::{Duration as Span, SubsecRound, Utc};
    use eventsvc::store::presence::{Member, PresenceReport, Present};
    let t0 = Utc::now() - Span::seconds(60);
    let member = |topic: &str, subject: &str, connections, at| Member {
        topic: topic.into(),
        subject: subject.into(),
        connections,
        since: at,
    };
    let report = |gateway: &str, at, full, members: Vec<Member>| PresenceReport {
        gateway: gateway.into(),
        at,
        full,
        members,
    };
    let names = |events: &[eventsvc::store::Event]| -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| (e.title.clone(), e.user_id.clone()))
            .collect()
    };
    let pair = |title: &str, user: &str| (title.to_owned(), user.to_owned());
    let s = f.store;

    let first = report(
        "g1",
        t0,
        true,
        vec![member("orders", "ann", 1, t0), member("orders", "", 3, t0)],
    );
    let reported = s.report_presence(first).await.unwrap();
    assert_eq!(names(&reported.events), [pair("join", "ann")]);
    assert!(!reported.resync);
    assert_eq!(reported.events[0].topic, "$presence.orders");
    let t1 = t0 + Span::seconds(1);
    // A gateway the store does not know, reporting changes only: asked for everything.
    let second = report(
        "g2",
        t1,
        false,
        vec![
            member("orders", "ann", 2, t1),
            member("orders", "bob", 1, t1),
        ],
    );
    let reported = f.other.report_presence(second).await.unwrap();
    assert_eq!(names(&reported.events), [pair("join", "bob")]);
    assert!(reported.resync);
    let now = s.presence("orders", t0, true).await.unwrap();
    assert_eq!((now.count, now.gateways), (7, 2));
    assert_eq!(
        now.subjects,
        [
            Present {
                user_id: "ann".into(),
                connections: 3,
                since: t0.trunc_subsecs(3)
            },
            Present {
                user_id: "bob".into(),
                connections: 1,
                since: t1.trunc_subsecs(3)
            },
        ]
    );
    let cheap = s.presence("orders", t0, false).await.unwrap();
    assert_eq!((cheap.count, cheap.subjects.len()), (7, 0));

    // Ann leaves g1 but is still on g2: no leave. g2 reports nobody (full): both leave.
    let t2 = t1 + Span::seconds(1);
    let reported = s
        .report_presence(report(
            "g1",
            t2,
            false,
            vec![member("orders", "ann", 0, t2)],
        ))
        .await
        .unwrap();
    assert!(reported.events.is_empty(), "{:?}", names(&reported.events));
    let reported = s
        .report_presence(report("g2", t2, true, Vec::new()))
        .await
        .unwrap();
    let mut left = names(&reported.events);
    left.sort();
    assert_eq!(left, [pair("leave", "ann"), pair("leave", "bob")]);
    // Only g1's anonymous three are left.
    let now = s.presence("orders", t0, true).await.unwrap();
    assert_eq!((now.count, now.gateways, now.subjects.len()), (3, 1, 0));
    // Counting only gateways that reported since a time leaves silent ones out.
    let later = s
        .presence("orders", t2 + Span::seconds(1), true)
        .await
        .unwrap();
    assert_eq!((later.count, later.gateways), (0, 0));

    // A gateway gone silent is expired once, whichever handle does it.
    let t3 = t2 + Span::seconds(1);
    s.report_presence(report("g3", t3, true, vec![member("alerts", "cy", 1, t3)]))
        .await
        .unwrap();
    let cutoff = t3 + Span::seconds(10);
    let (one, two) = tokio::join!(
        s.expire_presence(cutoff, 10),
        f.other.expire_presence(cutoff, 10)
    );
    let mut expired = names(&one.unwrap());
    expired.extend(names(&two.unwrap()));
    expired.sort();
    assert_eq!(expired, [pair("leave", "cy")]);
    assert!(s.expire_presence(cutoff, 10).await.unwrap().is_empty());
    assert_eq!(s.presence("alerts", t0, true).await.unwrap().count, 0);

    // The joins and leaves are a topic's events, in order, with seqs.
    let stored = s.events_after("$presence.orders", 0, 10).await.unwrap();
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let stored = names(&stored);
    assert_eq!(stored[..2], [pair("join", "ann"), pair("join", "bob")]);
    let alerts = s.events_after("$presence.alerts", 0, 10).await.unwrap();
    assert_eq!(names(&alerts), [pair("join", "cy"), pair("leave", "cy")]);
    assert_eq!(alerts[1].data.as_ref().unwrap()["topic"], "alerts");
}

/// The change feed: a follower (in another process) gets every publish that commits after it
/// started, once, each topic's in `seq` order, whoever published it; creates are not in it.
pub async fn the_feed_delivers_every_publish_once_in_order(f: Fixture) {
    use futures::StreamExt;
    let mut feed = f.other.follow().await.unwrap();
    let publishers: Vec<_> = ["left", "right"]
        .into_iter()
        .map(|topic| {
            let store = f.store.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    store
                        .publish(on_topic(topic, &format!("{i}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // Without an owner: no change feed entry either.
    f.store.create(event("", "not on the feed")).await.unwrap();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let mut seen: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for _ in 0..20 {
        let followed = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("the feed delivers")
            .expect("the feed is open")
            .unwrap();
        let Followed::Published(event) = followed else {
            panic!("not a publish: {followed:?}");
        };
        seen.entry(event.topic.clone()).or_default().push(event.seq);
    }
    let expected: Vec<u64> = (1..=10).collect();
    assert_eq!(seen.get("left"), Some(&expected));
    assert_eq!(seen.get("right"), Some(&expected));
}

/// Users' change feeds: each create, update and delete of an owned event once, in order, with
/// the event as the change left it; nothing for what did not change, nor for events without
/// an owner; each user's feed apart.
pub async fn changes_are_recorded_once_in_order(f: Fixture) {
    use eventsvc::store::ChangeKind::{Created, Deleted, Updated};
    let s = f.store;
    let user = format!("feed-{}", Uuid::now_v7());
    let new = NewEvent {
        id: Some(Uuid::now_v7()),
        ..event(&user, "watched")
    };
    let created = s.create(new.clone()).await.unwrap();
    // A repeat of the create, a refused update and an owner-less event change nothing.
    assert_eq!(s.create(new).await.unwrap(), created);
    assert!(
        s.update(created.id, None, patch("stale"), Precondition::Revision(9))
            .await
            .is_err()
    );
    s.create(event("", "nobody's")).await.unwrap();
    let other = s.create(event("someone else", "theirs")).await.unwrap();
    let updated = s
        .update(created.id, None, patch("renamed"), Precondition::None)
        .await
        .unwrap();
    s.delete(created.id, None, Precondition::Revision(2))
        .await
        .unwrap();

    let feed = f.other.changes_after(&user, 0, 100).await.unwrap();
    let summary: Vec<_> = feed.iter().map(|c| (c.position, c.kind)).collect();
    assert_eq!(summary, [(1, Created), (2, Updated), (3, Deleted)]);
    assert_eq!(feed[0].event, created);
    assert_eq!(feed[1].event, updated);
    let deleted = &feed[2].event;
    assert_eq!(
        (
            deleted.id,
            &deleted.user_id,
            deleted.revision,
            deleted.created_at
        ),
        (updated.id, &updated.user_id, 2, updated.created_at),
        "a delete says which event, at which revision"
    );
    assert!(
        deleted.title.is_empty() && deleted.data.is_none(),
        "and keeps none of its text"
    );
    assert!(feed.windows(2).all(|w| w[0].time <= w[1].time));
    assert_eq!(
        f.other.changes_after(&user, 1, 1).await.unwrap(),
        feed[1..2].to_vec()
    );
    let theirs = s.changes_after("someone else", 0, 100).await.unwrap();
    assert!(theirs.iter().any(|c| c.event.id == other.id));
    assert!(theirs.iter().all(|c| c.event.user_id == "someone else"));
    assert!(s.changes_after("", 0, 100).await.unwrap().is_empty());
    assert_eq!(s.changes_dropped_through(&user).await.unwrap(), 0);
}

/// The follower delivers every change of every feed once, each feed in position order,
/// whichever process wrote it.
pub async fn the_follower_delivers_every_change_once_in_order(f: Fixture) {
    use futures::StreamExt;
    let mut followed = f.other.follow().await.unwrap();
    let users: Vec<String> = (0..2)
        .map(|i| format!("follow-{i}-{}", Uuid::now_v7()))
        .collect();
    let writers: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let store = if i == 0 { &f.store } else { &f.other }.clone();
            let user = user.clone();
            tokio::spawn(async move {
                for n in 0..5 {
                    let e = store.create(event(&user, &format!("{n}"))).await.unwrap();
                    store
                        .update(e.id, None, patch("x"), Precondition::None)
                        .await
                        .unwrap();
                    store.delete(e.id, None, Precondition::None).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let mut seen: std::collections::HashMap<String, Vec<u64>> = Default::default();
    while seen.values().map(Vec::len).sum::<usize>() < 30 {
        let next = tokio::time::timeout(Duration::from_secs(10), followed.next())
            .await
            .expect("the follower delivers")
            .expect("it is open")
            .unwrap();
        if let Followed::Changed(change) = next
            && users.contains(&change.event.user_id)
        {
            seen.entry(change.event.user_id.clone())
                .or_default()
                .push(change.position);
        }
    }
    let expected: Vec<u64> = (1..=15).collect();
    for user in &users {
        assert_eq!(seen.get(user), Some(&expected), "{user}");
    }
}

/// Retention trims change feeds as it trims topics, and says how far.
pub async fn retention_trims_change_feeds(f: Fixture) {
    let s = f.store;
    let user = format!("kept-{}", Uuid::now_v7());
    for n in 0..12 {
        s.create(event(&user, &format!("{n}"))).await.unwrap();
    }
    let retention = Retention {
        max_events: Some(5),
        max_age: None,
    };
    while s.compact(retention, 4).await.unwrap() > 0 {}
    assert_eq!(s.changes_dropped_through(&user).await.unwrap(), 7);
    let kept: Vec<u64> = s
        .changes_after(&user, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.position)
        .collect();
    assert_eq!(kept, [8, 9, 10, 11, 12]);
    let next = s.create(event(&user, "next")).await.unwrap();
    let last = s.changes_after(&user, 12, 10).await.unwrap();
    assert_eq!((last[0].position, last[0].event.id), (13, next.id));
}

fn patch(title: &str) -> EventPatch {
    EventPatch {
        title: title.into(),
        description: String::new(),
        completed: false,
    }
}

/// Revisions: 1 when stored, one more per update; an update or delete whose precondition does
/// not hold changes nothing and says the revision it found.
pub async fn revisions_and_preconditions(f: Fixture) {
    use Precondition::{Exists, Revision};
    let s = f.store;
    let created = s.create(event("rev", "one")).await.unwrap();
    assert_eq!(created.revision, 1);
    assert_eq!(s.get(created.id, None).await.unwrap().revision, 1);
    let published = s.publish(on_topic("revised", "p")).await.unwrap();
    assert_eq!(published.revision, 1);

    let two = s
        .update(created.id, None, patch("two"), Precondition::None)
        .await
        .unwrap();
    assert_eq!(
        two.revision, 2,
        "an update without a precondition counts too"
    );
    let three = s
        .update(created.id, None, patch("three"), Revision(2))
        .await
        .unwrap();
    assert_eq!((three.revision, three.title.as_str()), (3, "three"));
    assert_eq!(f.other.get(created.id, None).await.unwrap(), three);

    // A stale revision: refused, with the current one; nothing changed.
    assert!(matches!(
        s.update(created.id, None, patch("stale"), Revision(2))
            .await,
        Err(StoreError::PreconditionFailed { current: Some(3) })
    ));
    assert!(matches!(
        s.delete(created.id, None, Revision(1)).await,
        Err(StoreError::PreconditionFailed { current: Some(3) })
    ));
    assert_eq!(s.get(created.id, None).await.unwrap(), three);

    // The update that made revision 3, sent again: a repeat, answered with what it made.
    assert_eq!(
        s.update(created.id, None, patch("three"), Revision(2))
            .await
            .unwrap(),
        three
    );

    // `Exists` holds at any revision; another owner's event does not exist for them.
    let four = s
        .update(created.id, None, patch("four"), Exists)
        .await
        .unwrap();
    assert_eq!(four.revision, 4);
    let owner = Some("someone else".to_owned());
    assert!(matches!(
        s.update(created.id, owner.clone(), patch("x"), Revision(4))
            .await,
        Err(StoreError::PreconditionFailed { current: None })
    ));
    assert!(matches!(
        s.delete(created.id, owner, Exists).await,
        Err(StoreError::PreconditionFailed { current: None })
    ));

    s.delete(created.id, Some("rev".into()), Revision(4))
        .await
        .unwrap();
    assert!(matches!(
        s.update(created.id, None, patch("gone"), Exists).await,
        Err(StoreError::PreconditionFailed { current: None })
    ));
    assert!(matches!(
        s.delete(created.id, None, Revision(4)).await,
        Err(StoreError::PreconditionFailed { current: None })
    ));
    assert!(matches!(
        s.delete(created.id, None, Precondition::None).await,
        Err(StoreError::NotFound)
    ));
}

/// Updates racing on one revision, from two processes: exactly one applies; the others are
/// told the revision it made. Repeated on fresh events so that the races meet inside batches
/// and across them.
pub async fn concurrent_updates_of_one_revision_apply_once(f: Fixture) {
    for round in 0..10 {
        let created = f
            .store
            .create(event("race", &format!("{round}")))
            .await
            .unwrap();
        let racers: Vec<_> = (0..6)
            .map(|i| {
                let store = if i % 2 == 0 { &f.store } else { &f.other }.clone();
                let id = created.id;
                tokio::spawn(async move {
                    store
                        .update(
                            id,
                            None,
                            patch(&format!("racer {i}")),
                            Precondition::Revision(1),
                        )
                        .await
                })
            })
            .collect();
        let mut won = Vec::new();
        for racer in racers {
            match racer.await.unwrap() {
                Ok(event) => won.push(event),
                Err(StoreError::PreconditionFailed { current: Some(2) }) => {}
                Err(other) => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(
            won.len(),
            1,
            "round {round}: one update of revision 1 applies"
        );
        assert_eq!(won[0].revision, 2);
        assert_eq!(f.store.get(created.id, None).await.unwrap(), won[0]);
    }
}

/// Declares one `#[tokio::test]` per contract case for a store, given an async expression
/// that yields `Option<Fixture>` (`None`: the store's server is not available here).
macro_rules! conformance {
    ($store:ident, $fixture:expr) => {
        mod $store {
            use super::*;
            conformance!(@cases $fixture;
                crud_round_trip,
                user_scoping,
                list_pages_in_creation_order,
                publish_orders_per_topic_and_never_reuses_seq,
                concurrent_publishers_get_strictly_increasing_seqs,
                unicode_and_large_payloads,
                ids_are_unique,
                writes_naming_their_id_are_stored_once,
                idempotency_keys_answer_once,
                retention_keeps_the_newest_and_records_the_gap,
                the_feed_delivers_every_publish_once_in_order,
                revisions_and_preconditions,
                concurrent_updates_of_one_revision_apply_once,
                topics_are_listed_by_pattern,
                presence_records_joins_and_leaves_once,
            );
        }
    };
    (@cases $fixture:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if let Some(mut fixture) = $fixture.await {
                    let cleanup = fixture.cleanup.take();
                    super::$case(fixture).await;
                    if let Some(cleanup) = cleanup {
                        cleanup.await;
                    }
                }
            }
        )+
    };
}

async fn sqlite() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("events.db");
    let store = eventsvc::store::SqliteStore::open(path.clone())
        .await
        .unwrap();
    let other = eventsvc::store::SqliteStore::open(path).await.unwrap();
    Some(Fixture {
        store: Arc::new(store),
        other: Arc::new(other),
        _keep: Box::new(dir),
        cleanup: None,
    })
}

/// The MongoDB store on a fresh database, dropped afterwards: on the replica set
/// `EVENTSVC_TEST_MONGO_URI` names, else on a SecantusDB server this test binary starts (see
/// `testdb`). Without either, says SKIPPED.
async fn mongo() -> Option<Fixture> {
    let database = format!("eventsvc_test_{}", Uuid::new_v4().simple());
    let uri = testdb::mongo_uri("MongoDB conformance case", &database)?;
    let open = || eventsvc::store::MongoStore::open(&uri);
    let store = open().await.expect("open MongoDB store");
    let other = open().await.expect("open MongoDB store");
    let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
    Some(Fixture {
        store: Arc::new(store),
        other: Arc::new(other),
        _keep: Box::new(()),
        cleanup: Some(Box::pin(async move {
            let _ = client.database(&database).drop().await;
        })),
    })
}

/// The PostgreSQL store on a fresh database of a cluster this test binary starts (see
/// `testdb`); SKIPPED where PostgreSQL is not installed.
async fn postgres() -> Option<Fixture> {
    let server = testdb::PostgresServer::shared("PostgreSQL conformance case")?;
    let uri = server.database(&format!("eventsvc_test_{}", Uuid::new_v4().simple()));
    let open = || eventsvc::store::PostgresStore::open(&uri);
    let store = open().await.expect("open PostgreSQL store");
    let other = open().await.expect("open PostgreSQL store");
    Some(Fixture {
        store: Arc::new(store),
        other: Arc::new(other),
        _keep: Box::new(()),
        // The cluster, and every test database in it, goes with this test binary.
        cleanup: None,
    })
}

conformance!(sqlite_store, sqlite());
/// Change feeds (kept apart from `conformance!` while a store lacked them).
macro_rules! feeds {
    ($store:ident, $fixture:expr) => {
        mod $store {
            use super::*;
            conformance!(@cases $fixture;
                changes_are_recorded_once_in_order,
                the_follower_delivers_every_change_once_in_order,
                retention_trims_change_feeds,
            );
        }
    };
}
feeds!(sqlite_feeds, sqlite());
feeds!(postgres_feeds, postgres());
feeds!(mongo_feeds, mongo());
conformance!(mongo_store, mongo());
conformance!(postgres_store, postgres());
