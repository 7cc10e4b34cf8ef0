//! Many topics on one stream end to end (`GET /subscribe?topic=…`): patterns and lists, a
//! topic first published after the stream opened, exact resume from the opaque cursor across a
//! backend's `kill -9` and a reconnect, filters, rights and limits.

use std::{collections::BTreeMap, time::Duration};

use eventsys::topics::{Cursor, Patterns};
use futures::StreamExt;
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{
    cdp::Browser,
    pubsub::{Frames, open, try_open},
    support::{EXCLUSIVE, Launch, Single, System, eventually, get_json, http, wait_healthy},
};

/// One event as a multi-topic stream delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub(crate) topic: String,
    pub(crate) seq: u64,
    /// The frame's `id`: the cursor after it.
    pub(crate) id: String,
    pub(crate) title: String,
}

/// Reads `n` events (gap frames are an error here).
pub(crate) async fn read(frames: &mut Frames, n: usize) -> Vec<Delivered> {
    let mut seen = Vec::with_capacity(n);
    while seen.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(30), frames.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} events", seen.len()))
            .expect("stream open")
            .expect("valid SSE");
        assert_eq!(frame.event, "message", "{frame:?}");
        let body: Value = serde_json::from_str(&frame.data).unwrap();
        seen.push(Delivered {
            topic: body["topic"].as_str().unwrap().to_owned(),
            seq: body["seq"].as_u64().unwrap(),
            id: frame.id.clone(),
            title: body["title"].as_str().unwrap().to_owned(),
        });
    }
    seen
}

/// Each topic's seqs, in the order delivered.
fn by_topic(seen: &[Delivered]) -> BTreeMap<String, Vec<u64>> {
    let mut topics: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for d in seen {
        topics.entry(d.topic.clone()).or_default().push(d.seq);
    }
    topics
}

/// Publishes `n` events round-robin on `topics`; how many were acknowledged per topic. A
/// publish caught by a backend's death may fail (never silently).
async fn publish(base: String, topics: Vec<&'static str>, n: usize, writer: usize) -> usize {
    let client = http();
    let mut acked = 0;
    for i in 0..n {
        let topic = topics[i % topics.len()];
        let sent = client
            .post(format!("{base}/publish"))
            .json(&json!({"topic": topic, "title": format!("w{writer} {i}")}))
            .send()
            .await;
        if sent.is_ok_and(|r| r.status() == StatusCode::OK) {
            acked += 1;
        }
    }
    acked
}

/// A topic's stored seqs, from its history.
async fn stored(base: &str, topic: &str) -> Vec<u64> {
    get_json(format!("{base}/topic-events/{topic}"))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_topics_and_a_wildcard_on_one_stream_across_a_kill_9_and_a_resume() {
    let _exclusive = EXCLUSIVE.lock().await;
    let system = System::launch(3).await;
    let base = system.url("");
    // Published before the stream opens: replayed first (a stream without an id starts every
    // topic at its beginning).
    assert_eq!(
        publish(base.clone(), vec!["orders.eu", "alerts"], 4, 9).await,
        4
    );
    let url = system.url("/subscribe?topic=orders.*&topic=alerts");
    let (mut watching, serving) = open(&url, None).await;
    let (mut leaving, _) = open(&url, None).await;

    let mut writers = JoinSet::new();
    let topics = vec!["orders.eu", "orders.us", "alerts", "misc", "ordersx"];
    for writer in 0..3 {
        writers.spawn(publish(base.clone(), topics.clone(), 50, writer));
    }
    let mut seen = read(&mut watching, 40).await;
    let before = read(&mut leaving, 25).await;
    drop(leaving);
    let victim = system
        .backends
        .iter()
        .find(|b| b.addr.to_string() == serving)
        .expect("a backend feeds the hub");
    victim.signal(Signal::SIGKILL);
    let cursor = before.last().unwrap().id.clone();
    let (mut resumed, _) = open(&url, Some(&cursor)).await;
    let acked: usize = writers.join_all().await.into_iter().sum();
    // A topic first published now, long after both streams opened.
    assert_eq!(publish(base.clone(), vec!["orders.new"], 3, 7).await, 3);

    let mut expected = BTreeMap::new();
    for topic in ["orders.eu", "orders.us", "alerts", "orders.new"] {
        expected.insert(topic.to_owned(), stored(&base, topic).await);
    }
    let total: usize = expected.values().map(Vec::len).sum();
    for (topic, seqs) in &expected {
        assert_eq!(
            *seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{topic} as stored"
        );
    }
    seen.extend(read(&mut watching, total - seen.len()).await);
    assert_eq!(by_topic(&seen), expected, "the watcher across the kill");
    let mut rest = before;
    rest.extend(read(&mut resumed, total - rest.len()).await);
    assert_eq!(by_topic(&rest), expected, "the watcher that resumed");
    // Nothing more comes (no repeat, nothing of other topics): the next is the next published.
    assert_eq!(publish(base.clone(), vec!["alerts"], 1, 8).await, 1);
    for frames in [&mut watching, &mut resumed] {
        let next = read(frames, 1).await;
        assert_eq!(next[0].title, "w8 0", "{next:?}");
    }
    // Each frame's cursor resumes exactly after it: from the tenth, the rest follow.
    let (mut again, _) = open(&url, Some(&seen[9].id)).await;
    let replayed = read(&mut again, total + 1 - 10).await;
    let mut whole = seen[..10].to_vec();
    whole.extend(replayed);
    let alerts = expected.get_mut("alerts").unwrap();
    alerts.push(alerts.len() as u64 + 1);
    assert_eq!(
        by_topic(&whole),
        expected,
        "resumed from the tenth frame's id"
    );
    assert!(acked >= 100, "{acked} of 150 publishes acknowledged");
    assert!(
        system
            .gateway
            .logs()
            .contains("subscription lost: resubscribing"),
        "the stream moved to another backend"
    );
    println!("{total} events of 4 topics on one stream across a kill -9 and a resume");
}

/// A browser's EventSource on two topics and a wildcard: each event once, a topic first
/// published later included; when the gateway restarts, it reconnects by itself with the
/// cursor as `Last-Event-ID` and misses nothing (not even what was published meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_follows_many_topics_across_a_gateway_restart() {
    if !testdb::needs(
        "a_browser_follows_many_topics_across_a_gateway_restart",
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
    let publish = |topic: &'static str, title: &'static str| {
        let url = format!("{base}/publish");
        async move {
            let published = http()
                .post(url)
                .json(&json!({"topic": topic, "title": title}))
                .send()
                .await
                .unwrap();
            assert_eq!(published.status(), StatusCode::OK);
        }
    };

    let browser = Browser::launch(dir.path()).await;
    let mut page = browser.page().await;
    page.navigate(&format!("{base}/docs")).await;
    page.eval(
        "window.seen = []; window.opened = 0; \
         const source = new EventSource('/subscribe?topic=orders.*&topic=alerts'); \
         source.onopen = () => { window.opened += 1; }; \
         source.onmessage = e => { const event = JSON.parse(e.data); \
           window.seen.push([event.topic, event.seq, event.title]); }; \
         true",
    )
    .await;
    page.wait_for("window.opened", |v| v == 1, Duration::from_secs(10))
        .await;
    publish("orders.eu", "one").await;
    publish("other", "not followed").await;
    publish("alerts", "two").await;
    publish("orders.eu", "three").await;
    page.wait_for("window.seen.length", |v| v == 3, Duration::from_secs(10))
        .await;

    // The gateway goes away; events are published through the backend meanwhile, one on a
    // topic nobody published on before; it comes back on the same address.
    let addr = gateway.addr;
    gateway.signal(Signal::SIGTERM);
    gateway.exit_within(Duration::from_secs(15)).await;
    let mut client = backend.client().await;
    for (topic, title) in [("alerts", "while down"), ("orders.late", "new topic")] {
        client
            .publish(eventsys::v1::PublishRequest {
                topic: topic.into(),
                title: title.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let gateway = Launch::gateway(&[backend.addr]).on(addr).start().await;
    wait_healthy(gateway.addr, None, 1).await;
    page.wait_for("window.opened", |v| v == 2, Duration::from_secs(30))
        .await;
    publish("orders.eu", "after").await;
    page.wait_for(
        "window.seen.length",
        |v| v.as_u64() >= Some(6),
        Duration::from_secs(10),
    )
    .await;
    let seen = page.eval("window.seen").await;
    assert_eq!(
        seen,
        json!([
            ["orders.eu", 1, "one"],
            ["alerts", 1, "two"],
            ["orders.eu", 2, "three"],
            ["alerts", 2, "while down"],
            ["orders.late", 1, "new topic"],
            ["orders.eu", 3, "after"],
        ])
    );
    page.report().assert_clean(&base);
}

/// The events the filter cases select from, in publish order: (topic, userId, title, data).
fn filtered_events() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        (
            "f.a",
            "ann",
            "small eu",
            json!({"amount": 5, "region": "eu"}),
        ),
        (
            "f.a",
            "ann",
            "big eu",
            json!({"amount": 500, "region": "eu", "vip": true}),
        ),
        (
            "f.b",
            "cy",
            "big us",
            json!({"amount": 900, "region": "us"}),
        ),
        ("f.b", "bob", "no data", Value::Null),
        (
            "f.a",
            "cy",
            "nested",
            json!({"customer": {"tier": "gold"}, "amount": 50}),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_select_exactly_what_they_say_on_streams_and_history() {
    let system = System::start(2).await;
    let base = system.url("");
    for (topic, user, title, data) in filtered_events() {
        let mut body = json!({"topic": topic, "userId": user, "title": title});
        if !data.is_null() {
            body["data"] = data;
        }
        let published = http()
            .post(system.url("/publish"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(published.status(), StatusCode::OK);
    }
    let cases: &[(&str, &[&str])] = &[
        ("data.amount > 100", &["big eu", "big us"]),
        (
            r#"data.region == "eu" and not exists data.vip"#,
            &["small eu"],
        ),
        (r#"userId == "bob""#, &["no data"]),
        (r#"topic == "f.b""#, &["big us", "no data"]),
        (r#"data.customer.tier in ["gold", "silver"]"#, &["nested"]),
        ("not exists data", &["no data"]),
        (r#"title >= "n""#, &["small eu", "no data", "nested"]),
        (
            r#"(data.amount < 10 or data.amount >= 900) and userId != "x""#,
            &["small eu", "big us"],
        ),
        ("data.amount == 7", &[]),
    ];
    let encode = |text: &str| {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    for (case, (filter, expected)) in cases.iter().enumerate() {
        // On a multi-topic stream. Only each topic's own order is promised (a catch-up may
        // come after a live event of another topic), so a closing event on each topic marks
        // the end of that topic's selection. Earlier cases' closing events are not compared.
        let end = format!("end {case}");
        let closing = format!("({filter}) or title == \"{end}\"");
        let url = format!("{base}/subscribe?topic=f.*&filter={}", encode(&closing));
        let (mut frames, _) = open(&url, None).await;
        for topic in ["f.a", "f.b"] {
            let published = http()
                .post(system.url("/publish"))
                .json(&json!({"topic": topic, "title": end}))
                .send()
                .await
                .unwrap();
            assert_eq!(published.status(), StatusCode::OK);
        }
        let mut titles: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut open_topics = 2;
        while open_topics > 0 {
            let next = read(&mut frames, 1).await.remove(0);
            if next.title == end {
                open_topics -= 1;
            } else if !next.title.starts_with("end ") {
                titles.entry(next.topic).or_default().push(next.title);
            }
        }
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (topic, _, title, _) in filtered_events() {
            if expected.contains(&title) {
                wanted.entry(topic.into()).or_default().push(title.into());
            }
        }
        assert_eq!(titles, wanted, "stream of {filter}");

        // A topic's history, and a single topic's stream (ids stay seqs).
        for topic in ["f.a", "f.b"] {
            let wanted: Vec<&str> = filtered_events()
                .into_iter()
                .filter(|(t, _, title, _)| *t == topic && expected.contains(title))
                .map(|(_, _, title, _)| title)
                .collect();
            let history: Value = http()
                .get(format!(
                    "{base}/topic-events/{topic}?filter={}",
                    encode(filter)
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let listed: Vec<&str> = history
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["title"].as_str().unwrap())
                .filter(|title| !title.starts_with("end "))
                .collect();
            assert_eq!(listed, wanted, "history of {topic} where {filter}");
        }
    }
    // A single topic's filtered stream: ids are the topic's seqs, and it resumes from one.
    let url = format!(
        "{base}/subscribe/f.a?filter={}",
        encode("data.amount >= 50")
    );
    let (mut frames, _) = open(&url, None).await;
    let first = read(&mut frames, 2).await;
    let ids: Vec<&str> = first.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["2", "3"]);
    let (mut resumed, _) = open(&url, Some("2")).await;
    assert_eq!(read(&mut resumed, 1).await[0].title, "nested");
    // The same through gRPC, one topic with a filter, from a backend.
    let mut client = system.backends[0].client().await;
    let mut events = client
        .subscribe(eventsys::v1::SubscribeRequest {
            topic: "f.a".into(),
            after_seq: 1,
            filter: "data.amount >= 50".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for want in [2, 3] {
        let event = events.message().await.unwrap().expect("an event");
        assert_eq!((event.topic.as_str(), event.seq), ("f.a", want));
    }

    // Filtered history pages by what it read: a page of one, then the next from its place.
    let page = http()
        .get(format!(
            "{base}/topic-events/f.a?limit=1&filter={}",
            encode("data.amount >= 50")
        ))
        .send()
        .await
        .unwrap();
    let link = page.headers()["link"].to_str().unwrap().to_owned();
    assert!(link.contains("afterSeq=2&limit=1&filter="), "{link}");
    let listed: Value = page.json().await.unwrap();
    assert_eq!(listed[0]["title"], "big eu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_filters_patterns_and_cursors_are_400_with_the_reason() {
    let system = System::start(1).await;
    let base = system.url("");
    let encode = |text: &str| {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let long = format!("title == \"{}\"", "x".repeat(1100));
    let deep = format!("{}title == \"x\"{}", "(".repeat(20), ")".repeat(20));
    let filters: &[(&str, &str)] = &[
        ("data.amount >", "at position 13"),
        (
            "size == 1",
            "expected title, userId, topic or data, found 's' at position 0",
        ),
        ("title == 'x'", "at position 9"),
        ("data.a in [1 2]", "expected `,` or `]`"),
        (&long, "longer than 1024 bytes"),
        (&deep, "nested deeper than 16"),
    ];
    for (filter, reason) in filters {
        for path in [
            format!("/subscribe?topic=orders&filter={}", encode(filter)),
            format!("/subscribe/orders?filter={}", encode(filter)),
            format!("/topic-events/orders?filter={}", encode(filter)),
        ] {
            let response = http().get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
            let body: Value = response.json().await.unwrap();
            let message = body["message"].as_str().unwrap();
            assert!(message.contains(reason), "{path}: {message}");
        }
    }
    let seventeen: String = (0..17).map(|i| format!("topic=t{i}&")).collect();
    let mut cursor = None;
    // A cursor of these patterns, to misuse below.
    let published = http()
        .post(system.url("/publish"))
        .json(&json!({"topic": "orders.eu", "title": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), StatusCode::OK);
    let (mut frames, _) = open(&format!("{base}/subscribe?topic=orders.*"), None).await;
    cursor.get_or_insert(read(&mut frames, 1).await.remove(0).id);
    let cursor = cursor.unwrap();
    let refused: &[(String, Option<&str>, &str)] = &[
        ("/subscribe".into(), None, "at least one topic pattern"),
        (
            format!("/subscribe?{seventeen}"),
            None,
            "at most 16 topic patterns",
        ),
        ("/subscribe?topic=orders*".into(), None, "is not a topic"),
        ("/subscribe?topic=a%20b".into(), None, "is not a topic"),
        (
            "/subscribe?topic=x&filter=a&filter=b".into(),
            None,
            "one filter",
        ),
        (
            "/subscribe?topic=orders.*&topic=alerts".into(),
            Some(&cursor),
            "another set",
        ),
        (
            "/subscribe?topic=orders.*".into(),
            Some("AAAA"),
            "not a cursor",
        ),
        (
            "/subscribe?topic=orders.*".into(),
            Some("41"),
            "not a cursor",
        ),
        (
            format!("/subscribe?topic=orders.*&lastEventId={cursor}x"),
            None,
            "not a cursor",
        ),
    ];
    for (path, id, reason) in refused {
        let response = try_open(&format!("{base}{path}"), *id).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = response.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(reason), "{path}: {message}");
    }
    // The same cursor is fine for its own patterns, spelled in any order.
    let (mut again, _) = open(
        &format!("{base}/subscribe?topic=orders.*&topic=orders.*"),
        Some(&cursor),
    )
    .await;
    http()
        .post(system.url("/publish"))
        .json(&json!({"topic": "orders.us", "title": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(read(&mut again, 1).await[0].title, "y");
}

/// A selection's stream under pressure: its backend's ring overflows (the backend catches its
/// subscriber up, or closes it and the hub resubscribes from every topic's place), and a client
/// that does not read falls off the gateway's ring and catches each topic up from the store.
/// Both get every event of every topic once, in order, and the last `id` each was sent resumes
/// exactly after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_readers_and_lagging_backends_lose_nothing_on_many_topics() {
    let _exclusive = EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let backend = Launch::backend(&db)
        .flags(&["--subscriber-buffer", "1", "--max-subscriber-lag", "5"])
        .start()
        .await;
    // Publishes come from a sibling, so the backend sees them in batches from the store.
    let sibling = Launch::backend(&db).start().await;
    let gateway = Launch::gateway(&[backend.addr])
        .flags(&["--sse-buffer-bytes", "32768"])
        .start()
        .await;
    wait_healthy(gateway.addr, None, 1).await;
    let url = format!("{}/subscribe?topic=burst.*", gateway.url());
    let (mut reading, _) = open(&url, None).await;
    let (mut stalled, _) = open(&url, None).await;
    let client = sibling.client().await;
    let topics = ["burst.a", "burst.b", "burst.c"];
    let mut publishes = JoinSet::new();
    for i in 0..300 {
        let mut client = client.clone();
        let topic = topics[i % 3];
        publishes.spawn(async move {
            let request = eventsys::v1::PublishRequest {
                topic: topic.into(),
                title: format!("{i}"),
                data: Some(eventsys::json::to_struct(
                    json!({"pad": "x".repeat(1024)}).as_object().unwrap(),
                )),
                ..Default::default()
            };
            client.publish(request).await.unwrap();
        });
    }
    let read_now = read(&mut reading, 300).await;
    publishes.join_all().await;
    let read_late = read(&mut stalled, 300).await;
    let expected: BTreeMap<String, Vec<u64>> = topics
        .iter()
        .map(|t| (t.to_string(), (1..=100).collect()))
        .collect();
    assert_eq!(by_topic(&read_now), expected, "the client that read");
    assert_eq!(by_topic(&read_late), expected, "the client that stalled");
    // The last id each was sent is exactly where it stands.
    let mut client = sibling.client().await;
    client
        .publish(eventsys::v1::PublishRequest {
            topic: "burst.b".into(),
            title: "next".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for seen in [&read_now, &read_late] {
        let (mut resumed, _) = open(&url, Some(&seen.last().unwrap().id)).await;
        let next = read(&mut resumed, 1).await.remove(0);
        assert_eq!((next.topic.as_str(), next.seq), ("burst.b", 101));
    }
    let logs = backend.logs();
    assert!(
        logs.contains("subscriber too far behind: closing it")
            || logs.contains("subscriber fell behind: catching up from the store"),
        "the backend's ring never overflowed"
    );
    let paused = "gateway_sse_resumes_total{reason=\"slow_client\"}";
    assert!(
        crate::support::metric(gateway.addr, paused).await >= 1,
        "the stalled client never fell off the ring"
    );
}

/// A stream's cursor names at most 1000 topics: patterns matching 1000 open, 1001 are 400, and
/// a stream that meets the 1001st while open ends, its client refused on reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_follows_at_most_1000_topics() {
    let system = System::start(1).await;
    let base = system.url("");
    let client = system.backends[0].client().await;
    let publish_many = |range: std::ops::Range<usize>| {
        let client = client.clone();
        async move {
            let mut publishes = JoinSet::new();
            for chunk in range.collect::<Vec<_>>().chunks(64) {
                let (mut client, chunk) = (client.clone(), chunk.to_vec());
                publishes.spawn(async move {
                    for i in chunk {
                        let request = eventsys::v1::PublishRequest {
                            topic: format!("many.{i:04}"),
                            title: format!("{i}"),
                            ..Default::default()
                        };
                        client.publish(request).await.unwrap();
                    }
                });
            }
            publishes.join_all().await;
        }
    };
    publish_many(0..1000).await;
    let url = format!("{base}/subscribe?topic=many.*");
    let (mut frames, _) = open(&url, None).await;
    let replayed = read(&mut frames, 1000).await;
    assert_eq!(by_topic(&replayed).len(), 1000);
    let full = replayed.last().unwrap().id.clone();
    // A cursor of 1000 short topics fits the bound: a header clients send back.
    assert!(
        full.len() <= eventsys::topics::MAX_CURSOR_BYTES,
        "{} bytes",
        full.len()
    );
    let (mut resumed, _) = open(&url, Some(&full)).await;

    publish_many(1000..1001).await;
    for frames in [&mut frames, &mut resumed] {
        let end = tokio::time::timeout(Duration::from_secs(30), frames.next())
            .await
            .expect("the stream ends");
        assert!(end.is_none(), "an event past the bound: {end:?}");
    }
    let refused = try_open(&url, Some(&full)).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body: Value = refused.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("more than 1000 topics"), "{message}");
}

/// Retention trims one topic of a stream: a client resuming from before what is kept is told of
/// that topic's gap (`event: gap` naming it) before its next event, the other topic goes on
/// from its place, and a second client joining the same stream (its hub already open) is told
/// the same from its own catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_gaps_are_told_per_topic() {
    let single = Single::start(&["--retention-max-events", "10"], &[]).await;
    let base = single.gateway.url();
    for (topic, n) in [("r.a", 25), ("r.b", 5)] {
        assert_eq!(publish(base.clone(), vec![topic], n, 0).await, n);
    }
    // Retention runs every second.
    let trimmed = || stored(&base, "r.a");
    eventually(Duration::from_secs(10), trimmed, |kept| {
        kept.first() == Some(&16)
    })
    .await;
    let patterns = Patterns::parse(["r.*"]).unwrap();
    let mut cursor = Cursor::default();
    cursor.advance("r.a", 3).unwrap();
    cursor.advance("r.b", 2).unwrap();
    let cursor = cursor.encode(&patterns).unwrap();
    let url = format!("{base}/subscribe?topic=r.*");
    let (mut first, _) = open(&url, Some(&cursor)).await;
    let (mut second, _) = open(&url, Some(&cursor)).await;
    for frames in [&mut first, &mut second] {
        let mut gaps = Vec::new();
        let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        while seen.values().map(Vec::len).sum::<usize>() < 13 {
            let frame = tokio::time::timeout(Duration::from_secs(10), frames.next())
                .await
                .expect("a frame")
                .expect("stream open")
                .expect("valid SSE");
            let data: Value = serde_json::from_str(&frame.data).unwrap();
            if frame.event == "gap" {
                assert!(!seen.contains_key("r.a"), "the gap before r.a's events");
                gaps.push(data);
                continue;
            }
            let topic = data["topic"].as_str().unwrap().to_owned();
            seen.entry(topic)
                .or_default()
                .push(data["seq"].as_u64().unwrap());
        }
        assert_eq!(
            gaps,
            [json!({"topic": "r.a", "requestedAfter": 3, "oldestAvailable": 16})]
        );
        assert_eq!(seen["r.a"], (16..=25).collect::<Vec<_>>());
        assert_eq!(seen["r.b"], [3, 4, 5]);
    }
}
