//! Users' change feeds end to end (`GET /changes`, `/changes/history`): a watcher sees every
//! create, update and delete of a mixed load exactly once, in commit order, across a backend's
//! `kill -9` and its own reconnect; what it sees is what the store recorded, and every
//! acknowledged write is in it.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use eventsource_stream::Event as Frame;
use futures::StreamExt;
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{
    cdp::Browser,
    pubsub::{Frames, subscribe},
    support::{EXCLUSIVE, Launch, Single, System, http, wait_healthy},
};

/// One change as a watcher saw it: position, kind, event id, revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) position: u64,
    pub(crate) kind: String,
    pub(crate) id: String,
    pub(crate) revision: u64,
}

/// Reads `n` changes of `user` from a `/changes` stream (keep-alives skipped), each checked:
/// its `id:` is its position, its data the user's event.
pub(crate) async fn read_changes(frames: &mut Frames, user: &str, n: usize) -> Vec<Seen> {
    let mut seen = Vec::with_capacity(n);
    while seen.len() < n {
        let frame: Frame = tokio::time::timeout(Duration::from_secs(30), frames.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} changes", seen.len()))
            .expect("stream open")
            .expect("valid SSE");
        let data: Value = serde_json::from_str(&frame.data).unwrap();
        assert_eq!(data["userId"], user, "{data}");
        assert!(
            ["created", "updated", "deleted"].contains(&frame.event.as_str()),
            "{frame:?}"
        );
        if frame.event == "deleted" {
            let fields: HashSet<&str> = data
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            assert_eq!(
                fields,
                HashSet::from(["id", "userId", "revision"]),
                "{data}"
            );
        } else {
            assert!(data["createdAt"].is_string(), "the whole event: {data}");
        }
        seen.push(Seen {
            position: frame.id.parse().expect("a position"),
            kind: frame.event.clone(),
            id: data["id"].as_str().unwrap().to_owned(),
            revision: data["revision"].as_u64().unwrap(),
        });
    }
    seen
}

/// `user`'s feed as the store recorded it.
pub(crate) async fn history(base: &str, user: &str) -> Vec<Seen> {
    let listed: Value = http()
        .get(format!("{base}/changes/history?userId={user}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Seen {
            position: c["position"].as_u64().unwrap(),
            kind: c["kind"].as_str().unwrap().to_owned(),
            id: c["event"]["id"].as_str().unwrap().to_owned(),
            revision: c["event"]["revision"].as_u64().unwrap(),
        })
        .collect()
}

/// What a writer had acknowledged: created ids, (id, revision) updated, deleted ids.
#[derive(Default)]
struct Acked {
    created: Vec<String>,
    updated: Vec<(String, u64)>,
    deleted: Vec<String>,
}

/// `rounds` of create, conditional update and (every other round) conditional delete of one
/// event of `user`, through the gateway at `base`; what was acknowledged. Writes caught by a
/// backend's death may fail (503): the rest of the round is skipped.
async fn mixed_load(base: String, user: String, rounds: usize, writer: usize) -> Acked {
    let client = http();
    let mut acked = Acked::default();
    for round in 0..rounds {
        let created = client
            .post(format!("{base}/events"))
            .json(&json!({"userId": user, "title": format!("w{writer} r{round}")}))
            .send()
            .await;
        let Ok(created) = created else { continue };
        if created.status() != StatusCode::CREATED {
            continue;
        }
        let id = created.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        acked.created.push(id.clone());
        let updated = client
            .put(format!("{base}/events/{id}?userId={user}"))
            .header("if-match", "\"1\"")
            .json(&json!({"title": "changed", "completed": true}))
            .send()
            .await;
        if !updated.is_ok_and(|r| r.status() == StatusCode::OK) {
            continue;
        }
        acked.updated.push((id.clone(), 2));
        if round % 2 == 0 {
            let deleted = client
                .delete(format!("{base}/events/{id}?userId={user}"))
                .header("if-match", "\"2\"")
                .send()
                .await;
            if deleted.is_ok_and(|r| r.status() == StatusCode::NO_CONTENT) {
                acked.deleted.push(id);
            }
        }
    }
    acked
}

/// Four writers' mixed load of `user`'s events through the gateway at `base`; a watcher, and a
/// second one that leaves and resumes; `kill` is handed the backend feeding their hub a while
/// in. Both see exactly what the store recorded, in position order, and every acknowledged
/// write is recorded, each event's changes in the order they were made.
pub(crate) async fn watch_across_a_kill(base: &str, user: &str, kill: impl FnOnce(&str)) {
    let url = format!("{base}/changes?userId={user}");
    let (mut watching, serving) = subscribe(url.clone(), None).await;
    let (mut leaving, _) = subscribe(url.clone(), None).await;

    let mut writers = JoinSet::new();
    for writer in 0..4 {
        writers.spawn(mixed_load(base.to_owned(), user.to_owned(), 40, writer));
    }
    let mut seen = read_changes(&mut watching, user, 60).await;
    let before = read_changes(&mut leaving, user, 30).await;
    drop(leaving);
    kill(&serving);
    let last = before.last().unwrap().position;
    let (mut resumed, _) = subscribe(url.clone(), Some(last)).await;
    let mut acked = Acked::default();
    for writer in writers.join_all().await {
        acked.created.extend(writer.created);
        acked.updated.extend(writer.updated);
        acked.deleted.extend(writer.deleted);
    }

    // The store's record is what every watcher sees: each change once, in position order.
    let recorded = history(base, user).await;
    let positions: Vec<u64> = recorded.iter().map(|c| c.position).collect();
    assert_eq!(positions, (1..=recorded.len() as u64).collect::<Vec<_>>());
    seen.extend(read_changes(&mut watching, user, recorded.len() - seen.len()).await);
    assert_eq!(seen, recorded, "the watcher across the kill");
    let mut rest = before;
    rest.extend(read_changes(&mut resumed, user, recorded.len() - rest.len()).await);
    assert_eq!(rest, recorded, "the watcher that resumed");

    // Every acknowledged write is recorded; each event's changes come in the order they
    // were made (created at 1, updated to 2, deleted).
    let mut by_event: HashMap<&str, Vec<(&str, u64)>> = HashMap::new();
    for change in &recorded {
        by_event
            .entry(&change.id)
            .or_default()
            .push((&change.kind, change.revision));
    }
    for id in &acked.created {
        assert_eq!(by_event[id.as_str()][0], ("created", 1), "{id}");
    }
    for (id, revision) in &acked.updated {
        assert_eq!(by_event[id.as_str()][1], ("updated", *revision), "{id}");
    }
    for id in &acked.deleted {
        assert_eq!(by_event[id.as_str()][2], ("deleted", 2), "{id}");
    }
    for (id, changes) in &by_event {
        let kinds: Vec<&str> = changes.iter().map(|(kind, _)| *kind).collect();
        let expected = ["created", "updated", "deleted"];
        assert_eq!(kinds[..], expected[..kinds.len()], "{id}");
    }
    // A kill may fail a few writes (never silently); most are answered.
    assert!(
        acked.created.len() >= 120 && !acked.deleted.is_empty(),
        "{} created, {} deleted",
        acked.created.len(),
        acked.deleted.len()
    );
    println!(
        "{} changes watched across a kill -9: {} created, {} updated, {} deleted acknowledged",
        recorded.len(),
        acked.created.len(),
        acked.updated.len(),
        acked.deleted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_sees_every_change_once_in_commit_order_across_a_kill_9_and_a_resume() {
    let _exclusive = EXCLUSIVE.lock().await;
    let system = System::launch(3).await;
    watch_across_a_kill(&system.url(""), "watcher", |serving| {
        let victim = system
            .backends
            .iter()
            .find(|b| b.addr.to_string() == serving)
            .expect("a backend feeds the hub");
        victim.signal(Signal::SIGKILL);
    })
    .await;
    assert!(
        system
            .gateway
            .logs()
            .contains("subscription lost: resubscribing"),
        "the feed moved to another backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_feed_needs_a_user_and_pages_like_history() {
    let system = System::start(2).await;
    let bare = http().get(system.url("/changes")).send().await.unwrap();
    assert_eq!(bare.status(), StatusCode::BAD_REQUEST);
    let body: Value = bare.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_ARGUMENT");
    assert!(
        body["message"].as_str().unwrap().contains("userId"),
        "{body}"
    );
    for n in 0..5 {
        http()
            .post(system.url("/events"))
            .json(&json!({"userId": "pager", "title": format!("{n}")}))
            .send()
            .await
            .unwrap();
    }
    let page = http()
        .get(system.url("/changes/history?userId=pager&limit=2&afterPosition=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let next = page.headers()["link"].to_str().unwrap().to_owned();
    assert!(
        next.contains("/changes/history?userId=pager&afterPosition=3&limit=2"),
        "{next}"
    );
    let listed: Value = page.json().await.unwrap();
    let positions: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [2, 3]);
    assert_eq!(listed[0]["kind"], "created");
    assert!(listed[0]["time"].as_str().unwrap().ends_with('Z'));
    // An owner-less event has no feed entry; the feed of a user without changes is empty.
    let empty: Value = http()
        .get(system.url("/changes/history?userId=nobody"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(empty, json!([]));
}

/// A browser's EventSource on `/changes`: it sees each change once, and when the gateway
/// restarts it reconnects by itself with `Last-Event-ID` and misses nothing (not even what was
/// changed while the gateway was down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_follows_its_changes_across_a_gateway_restart() {
    if !testdb::needs(
        "a_browser_follows_its_changes_across_a_gateway_restart",
        &[testdb::Tool::Chromium],
    ) {
        return;
    }
    let _exclusive = EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = Launch::backend(&dir.path().join("events.db")).start().await;
    let mut gateway = Launch::gateway(&[backend.addr]).start().await;
    wait_healthy(gateway.addr, None, 1).await;
    let base = gateway.url();
    let create = |title: &'static str| {
        let url = format!("{base}/events");
        async move {
            let created = http()
                .post(url)
                .json(&json!({"userId": "browser", "title": title}))
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), StatusCode::CREATED);
        }
    };

    let browser = Browser::launch(dir.path()).await;
    let mut page = browser.page().await;
    page.navigate(&format!("{base}/docs")).await;
    page.eval(
        "window.seen = []; window.opened = 0; \
         const source = new EventSource('/changes?userId=browser'); \
         source.onopen = () => { window.opened += 1; }; \
         for (const kind of ['created', 'updated', 'deleted']) \
           source.addEventListener(kind, e => window.seen.push( \
             [Number(e.lastEventId), kind, JSON.parse(e.data).title])); \
         true",
    )
    .await;
    page.wait_for("window.opened", |v| v == 1, Duration::from_secs(10))
        .await;
    for title in ["one", "two", "three"] {
        create(title).await;
    }
    page.wait_for("window.seen.length", |v| v == 3, Duration::from_secs(10))
        .await;

    // The gateway goes away; a change is made through the backend meanwhile; it comes back
    // on the same address.
    let addr = gateway.addr;
    gateway.signal(Signal::SIGTERM);
    gateway.exit_within(Duration::from_secs(15)).await;
    backend
        .client()
        .await
        .create_event(eventsys::v1::CreateEventRequest {
            user_id: "browser".into(),
            title: "while down".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let gateway = Launch::gateway(&[backend.addr]).on(addr).start().await;
    wait_healthy(gateway.addr, None, 1).await;
    page.wait_for("window.opened", |v| v == 2, Duration::from_secs(30))
        .await;
    create("after").await;
    let seen = page
        .wait_for("window.seen.length", |v| v == 5, Duration::from_secs(10))
        .await;
    assert_eq!(seen, 5);
    let seen = page.eval("window.seen").await;
    assert_eq!(
        seen,
        json!([
            [1, "created", "one"],
            [2, "created", "two"],
            [3, "created", "three"],
            [4, "created", "while down"],
            [5, "created", "after"],
        ])
    );
    page.report().assert_clean(&base);
}

/// Retention trims a user's feed as a topic: history reports the oldest kept, and a watcher
/// resuming from before it is told of the gap first, then gets what is kept, then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_trims_a_feed_and_a_resuming_watcher_is_told_the_gap() {
    let single = Single::start(&["--retention-max-events", "10"], &[]).await;
    let base = single.gateway.url();
    for n in 0..25 {
        let created = http()
            .post(format!("{base}/events"))
            .json(&json!({"userId": "trimmed", "title": format!("{n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    // Retention runs every second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let oldest = loop {
        let response = http()
            .get(format!(
                "{base}/changes/history?userId=trimmed&afterPosition=3"
            ))
            .send()
            .await
            .unwrap();
        let oldest = response
            .headers()
            .get("events-oldest-available")
            .map(|v| v.to_str().unwrap().to_owned());
        let listed: Value = response.json().await.unwrap();
        if listed.as_array().unwrap().len() == 10 {
            break oldest;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not trimmed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(oldest.as_deref(), Some("16"));

    let (mut frames, _) = subscribe(format!("{base}/changes?userId=trimmed"), Some(3)).await;
    let gap = tokio::time::timeout(Duration::from_secs(10), frames.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(gap.event, "gap");
    let data: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data, json!({"requestedAfter": 3, "oldestAvailable": 16}));
    let kept = read_changes(&mut frames, "trimmed", 10).await;
    let positions: Vec<u64> = kept.iter().map(|c| c.position).collect();
    assert_eq!(positions, (16..=25).collect::<Vec<_>>());
    http()
        .post(format!("{base}/events"))
        .json(&json!({"userId": "trimmed", "title": "live"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        read_changes(&mut frames, "trimmed", 1).await[0].position,
        26
    );
}
