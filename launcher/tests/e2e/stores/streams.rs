//! Streams and writes across two backends on a database server: every subscriber every event once in
//! order, lists in creation order, and a backend's `kill -9` under mixed load (nothing failed,
//! nothing lost or doubled, `Last-Event-ID` resumes), plus retention's gap frame.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::{
    lists::{a_resumed_subscriber_is_told_the_gap, history_becomes, publish_n},
    pubsub::{in_order, publish, read, subscribe},
    support::{Engine, Front, Local, UpSystem, get_json, http},
    writes::{Answered, MixedLoad},
};

pub(super) async fn subscribers_on_both_backends_get_every_event_once_in_order(engine: Engine) {
    let Some(system) = UpSystem::up(engine, "pub/sub across backends", &[]).await else {
        return;
    };
    system.ready().await;
    // A gateway pinned to each backend, so each subscriber is fed by another one.
    let mut streams = Vec::new();
    let mut pinned = Vec::new();
    for backend in &system.launcher.backends {
        let gateway = Local::gateway(&[*backend], &[]).await;
        crate::support::wait_healthy(gateway.addr, None, 1).await;
        let (frames, served) =
            subscribe(format!("http://{}/subscribe/fanout", gateway.addr), None).await;
        streams.push((frames, served));
        pinned.push(gateway);
    }
    let served: HashSet<_> = streams.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(served.len(), 2, "one subscriber per backend: {served:?}");
    // And one through the balanced gateway.
    streams.push(subscribe(system.url("/subscribe/fanout"), None).await);

    assert_eq!(publish(&system.url(""), "fanout", 300, 6, 16).await, 300);
    for (mut frames, backend) in streams {
        in_order(&read(&mut frames, 300).await, 1);
        println!("subscriber on {backend}: 300 events in order");
    }
}

pub(super) async fn lists_are_in_creation_order_whichever_backend_created(engine: Engine) {
    let Some(system) = UpSystem::up(engine, "list order across backends", &[]).await else {
        return;
    };
    system.ready().await;
    let mut created = Vec::new();
    let mut backends = HashSet::new();
    for i in 0..30 {
        let response = http()
            .post(system.url("/events"))
            .json(&json!({"userId": "lister", "title": format!("{i}")}))
            .send()
            .await
            .unwrap();
        backends.insert(crate::support::served_by(&response));
        let event: Value = response.json().await.unwrap();
        created.push(event["id"].clone());
    }
    assert_eq!(backends.len(), 2, "both backends created some");
    let listed: Value = get_json(system.url("/events?userId=lister")).await;
    let listed: Vec<Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(listed, created, "oldest first, as created");
}

/// Mixed creates and publishes while the backend feeding a subscriber is killed with `kill -9`
/// (the launcher restarts it): none fails, each acknowledged write is stored once (a plain
/// client counts), the subscriber gets every publish once in order, and another resumes with
/// `Last-Event-ID` from before the kill.
pub(super) async fn a_backend_kill_9_under_load_fails_nothing_and_loses_nothing(engine: Engine) {
    let Some(system) = UpSystem::up(engine, "a backend's kill -9", &[]).await else {
        return;
    };
    system.ready().await;
    let topic = "kill.writes";
    let (mut frames, feeding) = subscribe(system.url(&format!("/subscribe/{topic}")), None).await;
    let Answered {
        created,
        published,
        failed,
        slowest_failure: _,
    } = MixedLoad::answered_through_a_kill(&system.url(""), topic, (100, 300), || {
        system.kill_backend(&feeding)
    })
    .await;
    // None may fail. (On MongoDB a backend killed mid-transaction leaves it open on the server,
    // holding the users of its batch: the others end its sessions within seconds, see
    // `store::mongo::sessions`.)
    assert!(
        failed.is_empty(),
        "{} writes failed: {failed:?}",
        failed.len()
    );
    let stored = system.stored_ids("kill-writes").await;
    let unique: HashSet<_> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "an event stored twice");
    assert_eq!(
        unique,
        created.iter().collect::<HashSet<_>>(),
        "stored and acknowledged differ"
    );
    let n = published.len();
    assert_eq!(published, (1..=n as u64).collect::<Vec<_>>());
    assert_eq!(read(&mut frames, n).await, published, "delivered once each");
    // A client that lost its stream before the kill resumes after the last event it saw, and
    // reads on through the kill: 100 writes, half of them publishes, were answered before it.
    let from = 10;
    let (mut resumed, _) = subscribe(system.url(&format!("/subscribe/{topic}")), Some(from)).await;
    in_order(&read(&mut resumed, n - from as usize).await, from + 1);
    println!(
        "{engine:?}, kill -9 of a backend under writes: {} acknowledged, 0 failed, each stored \
         once; {n} publishes delivered once, in order",
        created.len()
    );
}

/// A user's change feed through `eventsys up` on the engine: every change of a mixed load
/// once, in position order, across a `kill -9` of the backend feeding the watchers.
pub(super) async fn a_change_watcher_sees_every_change_once_across_a_kill_9(engine: Engine) {
    let Some(system) = UpSystem::up(engine, "a change feed across a kill -9", &[]).await else {
        return;
    };
    system.ready().await;
    crate::changes::watch_across_a_kill(&system.url(""), "watched", |feeding| {
        system.kill_backend(feeding)
    })
    .await;
}

pub(super) async fn retention_keeps_the_newest_and_tells_readers_of_the_gap(engine: Engine) {
    let env = [("RETENTION_MAX_EVENTS", "10")];
    let Some(system) = UpSystem::up(engine, "retention", &env).await else {
        return;
    };
    system.ready().await;
    let base = system.url("");
    publish_n(&base, "kept", 25).await;
    let expected: Vec<u64> = (16..=25).collect();
    assert_eq!(
        history_becomes(&base, "kept", &expected).await.as_deref(),
        Some("16")
    );
    a_resumed_subscriber_is_told_the_gap(&base).await;
}
