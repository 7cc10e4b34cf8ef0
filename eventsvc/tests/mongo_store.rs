//! What only the MongoDB store has to show, against a real server (SecantusDB, started here on a
//! free port): the old Go service's published events numbered once, acknowledged writes that
//! survive the database's `kill -9`, and a database that goes away and comes back. The shared
//! contract is `store_conformance.rs`.

use std::{sync::Arc, time::Duration};

use eventsvc::store::{
    EventPatch, EventStore, JsonObject, MongoStore, NewEvent, Precondition, StoreError,
};
use futures::{StreamExt, future::join_all};
use mongodb::bson::{self, doc, oid::ObjectId};
use testdb::MongoServer;
use tokio::time::Instant;
use uuid::Uuid;

/// Go's zero `time.Time`, as the old service stored it for events it did not publish.
const GO_ZERO_TIME_MS: i64 = -62_135_596_800_000;

fn published(topic: &str, title: &str) -> NewEvent {
    NewEvent {
        topic: topic.into(),
        title: title.into(),
        user_id: "pub".into(),
        ..NewEvent::default()
    }
}

/// A document as the Go service wrote it: its field names, no `seq`, no `data`.
fn go_document(topic: &str, title: &str, time_ms: i64, created_ms: i64) -> bson::Document {
    doc! {
        "_id": ObjectId::new(),
        "id": Uuid::new_v4().to_string(),
        "userId": "legacy",
        "title": title,
        "description": "",
        "completed": false,
        "createdAt": bson::DateTime::from_millis(created_ms),
        "topic": topic,
        "time": bson::DateTime::from_millis(time_ms),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_old_services_published_events_get_seqs_once_in_their_order() {
    let Some(server) = MongoServer::shared("numbering the old service's events") else {
        return;
    };
    let uri = server.uri(&format!("legacy_{}", Uuid::new_v4().simple()));
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let events = client
        .default_database()
        .unwrap()
        .collection::<bson::Document>("events");
    // Inserted out of order; `b` and `c` share a time and `createdAt` decides.
    let t = 1_700_000_000_000;
    let old = [
        go_document("orders", "c", t + 10, t + 2),
        go_document("orders", "a", t, t),
        go_document("orders", "b", t + 10, t + 1),
        go_document("audit", "x", t + 5, t + 5),
        // Created, not published (zero time): stays out of every topic's history.
        go_document("orders", "unpublished", GO_ZERO_TIME_MS, t + 3),
    ];
    events.insert_many(old.clone()).await.unwrap();

    // Three backends start together on the data: each event is numbered once.
    let stores: Vec<MongoStore> = join_all((0..3).map(|_| MongoStore::open(&uri)))
        .await
        .into_iter()
        .map(|opened| opened.expect("open"))
        .collect();
    let history = |topic: &'static str| {
        let store = &stores[1];
        async move {
            store
                .events_after(topic, 0, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.seq, e.title))
                .collect::<Vec<_>>()
        }
    };
    let expected = vec![
        (1, "a".to_owned()),
        (2, "b".to_owned()),
        (3, "c".to_owned()),
    ];
    assert_eq!(history("orders").await, expected);
    assert_eq!(history("audit").await, vec![(1, "x".to_owned())]);
    let unpublished = Uuid::parse_str(old[4].get_str("id").unwrap()).unwrap();
    assert_eq!(stores[0].get(unpublished, None).await.unwrap().seq, 0);

    // New events follow them; a later start numbers nothing again.
    let next = stores[2].publish(published("orders", "d")).await.unwrap();
    assert_eq!(next.seq, 4);
    let again = MongoStore::open(&uri).await.unwrap();
    assert_eq!(
        again.events_after("orders", 3, 10).await.unwrap(),
        vec![next]
    );
    client.default_database().unwrap().drop().await.unwrap();
}

/// The old service's documents have no revision: they read as revision 1 and take `If-Match`
/// preconditions like any other, alone and in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_old_services_documents_are_at_revision_one() {
    let Some(server) = MongoServer::shared("revisions of the old service's events") else {
        return;
    };
    let uri = server.uri(&format!("legacy_rev_{}", Uuid::new_v4().simple()));
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let events = client
        .default_database()
        .unwrap()
        .collection::<bson::Document>("events");
    let old: Vec<_> = (0..12)
        .map(|i| go_document("", &format!("old {i}"), GO_ZERO_TIME_MS, 1_700_000_000_000))
        .collect();
    events.insert_many(old.clone()).await.unwrap();
    let ids: Vec<Uuid> = old
        .iter()
        .map(|d| Uuid::parse_str(d.get_str("id").unwrap()).unwrap())
        .collect();
    let store = MongoStore::open(&uri).await.unwrap();
    assert_eq!(store.get(ids[0], None).await.unwrap().revision, 1);
    let patch = |title: &str| EventPatch {
        title: title.into(),
        ..EventPatch::default()
    };
    // Alone: a stale revision is refused, the right one applies.
    assert!(matches!(
        store
            .update(ids[0], None, patch("x"), Precondition::Revision(2))
            .await,
        Err(StoreError::PreconditionFailed { current: Some(1) })
    ));
    let updated = store
        .update(ids[0], None, patch("new"), Precondition::Revision(1))
        .await
        .unwrap();
    assert_eq!((updated.revision, updated.title.as_str()), (2, "new"));
    // Together (one batch, as far as they meet): every other one deleted at revision 1, the
    // rest updated at revision 1, each once.
    let answers = join_all(ids[1..].iter().enumerate().map(|(i, id)| {
        let store = &store;
        async move {
            if i % 2 == 0 {
                store
                    .delete(*id, None, Precondition::Revision(1))
                    .await
                    .map(|()| 0)
            } else {
                let event = store
                    .update(*id, None, patch("batched"), Precondition::Revision(1))
                    .await?;
                Ok(event.revision)
            }
        }
    }))
    .await;
    let answers: Vec<u64> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers, [0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0]);
    client.default_database().unwrap().drop().await.unwrap();
}

/// A backend killed in the middle of a transaction leaves it open on the server, holding what
/// it wrote (here a user's feed head) for the transaction's lifetime (60 s). Its sessions are
/// registered with a heartbeat; a live backend ends them once the heartbeat is missed, and the
/// user's next write goes through in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_a_dead_backend_left_open_holds_its_users_only_seconds() {
    let Some(server) = MongoServer::shared("a dead backend's open transaction") else {
        return;
    };
    let uri = server.uri(&format!("dead_{}", Uuid::new_v4().simple()));
    let store = MongoStore::open(&uri).await.expect("open");
    // The dead backend: a transaction holding the head of `held`'s feed, never ended, its
    // session registered with a heartbeat long stopped.
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let database = client.default_database().unwrap();
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    database
        .collection::<bson::Document>("change_heads")
        .update_one(doc! {"_id": "held"}, doc! {"$inc": {"last": 1_i64}})
        .upsert(true)
        .session(&mut session)
        .await
        .unwrap();
    let stopped = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() - 10_000);
    database
        .collection::<bson::Document>("backends")
        .insert_one(doc! {"_id": "dead", "lsids": [session.id().clone()], "at": stopped})
        .await
        .unwrap();
    // Neither committed nor aborted: as a killed process leaves it.
    std::mem::forget(session);

    let started = Instant::now();
    let created = store
        .create(NewEvent {
            user_id: "held".into(),
            title: "after the death".into(),
            ..NewEvent::default()
        })
        .await
        .expect("written once the dead backend's sessions are ended");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "held for {waited:?}");
    let feed = store.changes_after("held", 0, 10).await.unwrap();
    assert_eq!(
        feed.iter()
            .map(|c| (c.position, c.event.id))
            .collect::<Vec<_>>(),
        [(1, created.id)],
        "the dead transaction's increment is gone"
    );
    let dead = database
        .collection::<bson::Document>("backends")
        .find_one(doc! {"_id": "dead"})
        .await
        .unwrap();
    assert!(dead.is_none(), "its entry is ended with its sessions");
    println!("a user held by a dead backend's transaction wrote again after {waited:?}");
    database.drop().await.unwrap();
}

/// Writes for a while (publishes too when `publish`; creates of owned events, which are
/// transactions with their change feed entries, when `owned`), kills the server with `kill -9`,
/// starts it on the same data and looks for every write it acknowledged.
async fn acknowledged_writes_survive_kill_9(mut server: MongoServer, publish: bool, owned: bool) {
    let uri = server.uri("durability");
    let store = Arc::new(MongoStore::open(&uri).await.expect("open"));
    let writers = (0..4).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let until = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < until {
                let mut new = published(&format!("t{}", n % 2), "durable");
                if !owned {
                    new.user_id.clear();
                }
                let written = if publish && n < 2 {
                    store.publish(new).await
                } else {
                    store.create(new).await
                };
                acknowledged.push(written.expect("written while the server is up"));
            }
            acknowledged
        })
    });
    let acknowledged: Vec<_> = join_all(writers)
        .await
        .into_iter()
        .flat_map(|w| w.unwrap())
        .collect();
    server.kill();
    server.restart();
    let reopened = MongoStore::open(&uri).await.expect("reopen");
    let mut lost = Vec::new();
    for event in &acknowledged {
        match reopened.get(event.id, None).await {
            Ok(found) => assert_eq!(&found, event),
            Err(StoreError::NotFound) => lost.push(event.seq),
            Err(err) => panic!("{err}"),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost (seqs: {lost:?})",
        lost.len(),
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_ask_for_the_journal_themselves() {
    // A server that syncs a write only when the write asks (`j: true`), as a mongod with its
    // journal default off: what survives is what the store asked for. (SecantusDB honours `j`
    // on plain writes, which publishes and creates of events without an owner are, but not on
    // `commitTransaction`, which updates, deletes and creates of owned events use (their
    // change feed entries commit with them): those are durable there with `--sync-on-commit`,
    // tested below.)
    if let Some(server) = MongoServer::start_syncing_only_when_asked("the journal test") {
        acknowledged_writes_survive_kill_9(server, true, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_of_the_database() {
    if let Some(server) = MongoServer::start("the database's kill -9") {
        acknowledged_writes_survive_kill_9(server, true, true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_goes_away_fails_fast_and_is_found_again() {
    let Some(mut server) = MongoServer::start("a database that goes away") else {
        return;
    };
    let store = MongoStore::open(&server.uri("outage")).await.expect("open");
    let before = store.publish(published("live", "before")).await.unwrap();
    let mut feed = store.follow().await.unwrap();

    server.kill();
    // Each kind of call gives up as unavailable (503 at the gateway), well inside the
    // gateway's 10 s request deadline: nothing waits for the server to come back.
    for call in [
        "ping",
        "create",
        "get",
        "update",
        "delete",
        "publish",
        "events_after",
    ] {
        let started = Instant::now();
        let patch = || EventPatch {
            title: "down".into(),
            description: String::new(),
            completed: false,
        };
        let failed = match call {
            "ping" => store.ping().await.err(),
            "create" => store.create(published("", "down")).await.err(),
            "get" => store.get(before.id, None).await.err(),
            "update" => store
                .update(before.id, None, patch(), Precondition::None)
                .await
                .err(),
            "delete" => store
                .delete(before.id, None, Precondition::None)
                .await
                .err(),
            "publish" => store.publish(published("live", "down")).await.err(),
            _ => store.events_after("live", 0, 10).await.err(),
        };
        assert!(
            matches!(failed, Some(StoreError::Unavailable { .. })),
            "{call}: {failed:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(8), "{call} hung");
    }
    // Changes sent together (a batch's transaction) give up as fast.
    let started = Instant::now();
    let patch = || EventPatch {
        title: "down".into(),
        description: String::new(),
        completed: false,
    };
    let changes =
        join_all((0..10).map(|_| store.update(Uuid::now_v7(), None, patch(), Precondition::None)))
            .await;
    for failed in changes {
        assert!(
            matches!(failed, Err(StoreError::Unavailable { .. })),
            "{failed:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(8), "a batch hung");
    // The change feed ends with an error rather than hanging: subscribers resubscribe.
    let ended = tokio::time::timeout(Duration::from_secs(30), feed.next())
        .await
        .expect("the feed reports the outage");
    assert!(matches!(ended, Some(Err(_)) | None), "{ended:?}");

    server.restart();
    // The same store, not reopened, writes and follows again.
    let mut attempts = 0;
    let after = loop {
        attempts += 1;
        match store.publish(published("live", "after")).await {
            Ok(event) => break event,
            Err(StoreError::Unavailable { .. }) if attempts < 10 => continue,
            Err(err) => panic!("{err}"),
        }
    };
    assert_eq!(after.seq, before.seq + 1, "nothing lost, nothing doubled");
    store.ping().await.expect("the store answers again");
    let mut feed = store.follow().await.unwrap();
    let next = store.publish(published("live", "followed")).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(30), feed.next())
        .await
        .expect("the reopened feed delivers")
        .expect("an event")
        .unwrap();
    assert_eq!(seen, eventsvc::store::Followed::Published(next));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_sent_together_are_each_stored_once_and_a_taken_id_fails_alone() {
    let Some(server) = MongoServer::shared("the MongoDB store's create batches") else {
        return;
    };
    let uri = server.uri(&format!("batch_{}", Uuid::new_v4().simple()));
    let store = Arc::new(MongoStore::open(&uri).await.unwrap());
    let owner = |title: &str| NewEvent {
        user_id: "batch".into(),
        title: title.into(),
        ..NewEvent::default()
    };
    let taken = store
        .create(NewEvent {
            id: Some(Uuid::now_v7()),
            ..owner("taken")
        })
        .await
        .unwrap();
    // Sixty at once (they queue behind one another's inserts): every tenth repeats one new id
    // with the same content (stored once, each answered with it), every tenth another names
    // the id stored above with other content (refused alone), the rest are new.
    let repeated = Uuid::now_v7();
    let creates: Vec<_> = (0..60)
        .map(|i| {
            let store = store.clone();
            let new = match i % 10 {
                3 => NewEvent {
                    id: Some(repeated),
                    ..owner("repeated")
                },
                7 => NewEvent {
                    id: Some(taken.id),
                    ..owner("other content")
                },
                _ => owner(&format!("c{i}")),
            };
            tokio::spawn(async move { store.create(new).await })
        })
        .collect();
    let mut stored = Vec::new();
    for (i, create) in join_all(creates).await.into_iter().enumerate() {
        match (i % 10, create.unwrap()) {
            (7, Err(StoreError::AlreadyExists)) => {}
            (3, Ok(event)) => {
                assert_eq!(event.id, repeated);
                stored.push(event);
            }
            (_, Ok(event)) if i % 10 != 7 => stored.push(event),
            (_, other) => panic!("create {i}: {other:?}"),
        }
    }
    for event in &stored {
        assert_eq!(store.get(event.id, None).await.unwrap(), *event);
    }
    let page = store.list(Some("batch".into()), 100, None).await.unwrap();
    assert_eq!(
        page.events.len(),
        1 + 48 + 1,
        "the first, the new ones, and the repeated id once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_of_two_processes_in_batches_take_each_seq_once_in_order() {
    let Some(server) = MongoServer::shared("the MongoDB store's publish batches") else {
        return;
    };
    let uri = server.uri(&format!("batch_{}", Uuid::new_v4().simple()));
    let stores = [
        Arc::new(MongoStore::open(&uri).await.unwrap()),
        Arc::new(MongoStore::open(&uri).await.unwrap()),
    ];
    // Two stores (as two backends) publish on one topic at once, each many at a time, so
    // their batches race for the same seqs; one id is published by both, eight times.
    let repeated = Uuid::now_v7();
    let publishes: Vec<_> = (0..80)
        .map(|i| {
            let store = stores[i % 2].clone();
            let new = if i % 10 == 0 {
                NewEvent {
                    id: Some(repeated),
                    ..published("t", "repeated")
                }
            } else {
                NewEvent {
                    id: Some(Uuid::now_v7()),
                    ..published("t", &format!("p{i}"))
                }
            };
            tokio::spawn(async move { store.publish(new).await })
        })
        .collect();
    let mut seqs = Vec::new();
    let mut repeats = Vec::new();
    for (i, publish) in join_all(publishes).await.into_iter().enumerate() {
        let event = publish
            .unwrap()
            .unwrap_or_else(|e| panic!("publish {i}: {e:?}"));
        if i % 10 == 0 {
            repeats.push(event.seq);
        } else {
            seqs.push(event.seq);
        }
    }
    assert!(
        repeats.windows(2).all(|w| w[0] == w[1]),
        "the repeated id has one seq: {repeats:?}"
    );
    seqs.push(repeats[0]);
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=73).collect::<Vec<u64>>(),
        "each seq once, none skipped"
    );
    let history = stores[0].events_after("t", 0, 100).await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.seq).collect::<Vec<_>>(),
        seqs,
        "stored once each, in seq order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn updates_and_deletes_sent_together_each_get_their_own_answer() {
    let Some(server) = MongoServer::shared("the MongoDB store's change batches") else {
        return;
    };
    let uri = server.uri(&format!("batch_{}", Uuid::new_v4().simple()));
    // Two stores (as two backends) on one database: their batches touch the same events, so
    // their transactions conflict and are run again.
    let stores = [
        Arc::new(MongoStore::open(&uri).await.unwrap()),
        Arc::new(MongoStore::open(&uri).await.unwrap()),
    ];
    let mut events = Vec::new();
    for i in 0..20 {
        let new = NewEvent {
            user_id: "batch".into(),
            title: format!("e{i}"),
            ..NewEvent::default()
        };
        events.push(stores[0].create(new).await.unwrap());
    }
    let patch = |title: String| EventPatch {
        title,
        description: "changed".into(),
        completed: true,
    };
    let owner = |name: &str| Some(name.to_owned());
    // All at once, queued behind one another: events 0–9 updated by both stores (each answered
    // with its own patch), 0–4 also by another owner (not found); 10–14 deleted by both (one
    // finds it); 15–19 deleted by another owner (not found, kept); an unknown id updated and
    // deleted (not found).
    let mut calls = Vec::new();
    for (i, event) in events.iter().enumerate() {
        for (s, store) in stores.iter().enumerate() {
            let (store, id) = (store.clone(), event.id);
            let call = match i {
                0..10 => {
                    let title = format!("s{s}e{i}");
                    tokio::spawn(async move {
                        let updated = store
                            .update(id, owner("batch"), patch(title.clone()), Precondition::None)
                            .await;
                        updated.map(|event| Some(event.title)).map(|t| (t, title))
                    })
                }
                10..15 => tokio::spawn(async move {
                    store
                        .delete(id, None, Precondition::None)
                        .await
                        .map(|()| (None, String::new()))
                }),
                _ => tokio::spawn(async move {
                    store
                        .delete(id, owner("other"), Precondition::None)
                        .await
                        .map(|()| (None, String::new()))
                }),
            };
            calls.push((i, call));
        }
        if i < 5 {
            let (store, id) = (stores[i % 2].clone(), event.id);
            let call = tokio::spawn(async move {
                let updated = store
                    .update(
                        id,
                        owner("other"),
                        patch("theirs".into()),
                        Precondition::None,
                    )
                    .await;
                updated.map(|_| (None, String::new()))
            });
            calls.push((100, call));
        }
    }
    let unknown = Uuid::now_v7();
    for store in &stores {
        let store = store.clone();
        calls.push((
            100,
            tokio::spawn(async move {
                store
                    .update(unknown, None, patch("none".into()), Precondition::None)
                    .await
                    .map(|_| (None, String::new()))
            }),
        ));
        let store = stores[1].clone();
        calls.push((
            100,
            tokio::spawn(async move {
                store
                    .delete(unknown, None, Precondition::None)
                    .await
                    .map(|()| (None, String::new()))
            }),
        ));
    }
    let mut deleted = [0; 20];
    for (i, call) in calls {
        match (i, call.await.unwrap()) {
            (0..10, Ok((Some(title), wanted))) => assert_eq!(title, wanted, "its own patch"),
            (10..15, Ok(_)) => deleted[i] += 1,
            (10..15 | 15..20 | 100, Err(StoreError::NotFound)) => {}
            (i, other) => panic!("change of event {i}: {other:?}"),
        }
    }
    assert_eq!(&deleted[10..15], &[1; 5], "each deleted once");
    for (i, event) in events.iter().enumerate() {
        let stored = stores[1].get(event.id, None).await;
        match (i, stored) {
            (0..10, Ok(stored)) => {
                assert!(
                    [format!("s0e{i}"), format!("s1e{i}")].contains(&stored.title),
                    "event {i}: {stored:?}"
                );
                assert_eq!(
                    (stored.description.as_str(), stored.completed),
                    ("changed", true)
                );
                assert_eq!(
                    (stored.user_id.as_str(), stored.created_at),
                    ("batch", event.created_at)
                );
            }
            (10..15, Err(StoreError::NotFound)) => {}
            (15..20, Ok(stored)) => assert_eq!(&stored, event, "kept as it was"),
            (i, other) => panic!("event {i}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_the_server_refuses_fails_alone_in_its_batch() {
    let Some(server) = MongoServer::shared("a refused update in a batch") else {
        return;
    };
    let uri = server.uri(&format!("batch_{}", Uuid::new_v4().simple()));
    let store = Arc::new(MongoStore::open(&uri).await.unwrap());
    // 9 MiB of data: with 8 MiB of description the document passes MongoDB's 16 MiB limit.
    let mut data = JsonObject::new();
    data.insert("blob".into(), "x".repeat(9 << 20).into());
    let big = NewEvent {
        title: "big".into(),
        data: Some(data),
        ..NewEvent::default()
    };
    let big = store.create(big).await.unwrap();
    let mut small = Vec::new();
    for i in 0..30 {
        let new = NewEvent {
            title: format!("e{i}"),
            ..NewEvent::default()
        };
        small.push(store.create(new).await.unwrap().id);
    }
    let patch = |title: &str, description: String| EventPatch {
        title: title.into(),
        description,
        completed: false,
    };
    let updates: Vec<_> = small
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let store = store.clone();
            let description = if i == 15 {
                "x".repeat(8 << 20)
            } else {
                String::new()
            };
            let id = if i == 15 { big.id } else { id };
            tokio::spawn(async move {
                store
                    .update(id, None, patch("changed", description), Precondition::None)
                    .await
            })
        })
        .collect();
    for (i, update) in join_all(updates).await.into_iter().enumerate() {
        match (i, update.unwrap()) {
            (15, Err(StoreError::Internal { .. })) => {}
            (15, other) => panic!("the oversized update: {other:?}"),
            (_, Ok(event)) => assert_eq!(event.title, "changed"),
            (i, Err(err)) => panic!("update {i} failed with the refused one: {err:?}"),
        }
    }
    assert_eq!(
        store.get(big.id, None).await.unwrap(),
        big,
        "left as it was"
    );
}
