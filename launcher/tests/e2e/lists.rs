//! Lists and history at scale and under retention, through the real gateway over real
//! backends: maximal events are streamed in constant gateway memory and paged exactly once
//! with `limit` and the `Link` cursor; retention by count and by age drops the oldest and says
//! so (`Events-Oldest-Available`, SSE `event: gap`); a full store refuses writes with 503 while
//! reads go on, and takes writes again once there is room.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    pubsub::{in_order, read, subscribe},
    support::{EXCLUSIVE, Single, http},
};

/// A maximal event: 64 KiB title and description, 256 KiB of data (~370 KiB as JSON).
fn maximal(topic: &str, i: usize) -> Value {
    json!({
        "userId": "big",
        "topic": topic,
        "title": format!("{i:05}").repeat(64 * 1024 / 5),
        "description": "d".repeat(64 * 1024 - 10),
        "data": {"pad": "x".repeat(256 * 1024 - 100)},
    })
}

pub(crate) fn seqs(events: &Value) -> Vec<u64> {
    events
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

/// The `rel="next"` target of a response's `Link`, if any.
fn next_link(response: &reqwest::Response) -> Option<String> {
    let link = response.headers().get("link")?.to_str().ok()?;
    let target = link.strip_prefix('<')?.split_once(">; rel=\"next\"")?.0;
    Some(target.to_owned())
}

/// Follows `Link` from `first` to the end; returns every page's seqs, in order.
pub(crate) async fn walk(base: &str, first: &str) -> (Vec<u64>, usize) {
    let (mut all, mut pages, mut next) = (Vec::new(), 0, Some(first.to_owned()));
    while let Some(path) = next {
        let response = http().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        next = next_link(&response);
        all.extend(seqs(&response.json().await.unwrap()));
        pages += 1;
        assert!(pages < 1000, "paging never ends");
    }
    (all, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maximal_events_are_streamed_in_constant_memory_and_paged_exactly_once() {
    // Memory is the point: the gateway is a process of its own, measured alone.
    let _exclusive = EXCLUSIVE.lock().await;
    let single = Single::launch(&[], &[]).await;
    let (gateway, base) = (&single.gateway, single.gateway.url());
    let client = http();
    for i in 0..48 {
        let response = client
            .post(format!("{base}/publish"))
            .json(&maximal("big", i))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "event {i}");
    }
    let before = gateway.rss();

    // The whole history (~18 MB of JSON) and the whole list, streamed.
    let response = client
        .get(format!("{base}/topic-events/big"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("link").is_none());
    let mut body = response.bytes_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk.expect("the stream completes"));
    }
    let history: Value = serde_json::from_slice(&bytes).expect("one well-formed array");
    in_order(&seqs(&history), 1);
    assert_eq!(seqs(&history).len(), 48);
    let list: Value = client
        .get(format!("{base}/events?userId=big"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 48);
    let grown = gateway.rss().saturating_sub(before);
    // Two backend pages (2 MiB each) and their JSON at most; assembling either list whole
    // would take over 30 MiB.
    assert!(
        grown < 12 * 1024 * 1024,
        "gateway grew by {grown} bytes for an 18 MB list"
    );

    // Paged: every event exactly once, whether pages are cut by count or by size.
    let (walked, pages) = walk(&base, "/topic-events/big?limit=5").await;
    in_order(&walked, 1);
    assert_eq!((walked.len(), pages), (48, 10));
    let (walked, pages) = walk(&base, "/topic-events/big?limit=1000").await;
    in_order(&walked, 1);
    assert!(pages > 1, "2 MiB pages: 48 maximal events do not fit one");
    let (walked, _) = walk(&base, "/events?userId=big&limit=7").await;
    in_order(&walked, 1);
    let response = client
        .get(format!("{base}/topic-events/big?limit=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

pub(crate) async fn publish_n(base: &str, topic: &str, n: usize) {
    for i in 0..n {
        let response = http()
            .post(format!("{base}/publish"))
            .json(&json!({"topic": topic, "title": format!("{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// Waits until the topic's history is `expected` (retention runs every second); returns that
/// read's `Events-Oldest-Available`.
pub(crate) async fn history_becomes(base: &str, topic: &str, expected: &[u64]) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = http()
            .get(format!("{base}/topic-events/{topic}"))
            .send()
            .await
            .unwrap();
        let oldest = response
            .headers()
            .get("events-oldest-available")
            .map(|v| v.to_str().unwrap().to_owned());
        let got = seqs(&response.json().await.unwrap());
        if got == expected {
            return oldest;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history stayed {got:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_by_count_keeps_the_newest_and_tells_readers_of_the_gap() {
    let single = Single::start(&["--retention-max-events", "10"], &[]).await;
    let base = single.gateway.url();
    publish_n(&base, "kept", 25).await;
    let expected: Vec<u64> = (16..=25).collect();
    let oldest = history_becomes(&base, "kept", &expected).await;
    assert_eq!(oldest.as_deref(), Some("16"));
    let metrics = single.backend.metrics().await;
    assert!(
        metrics.contains("\neventsvc_retention_dropped_events_total 15\n"),
        "{metrics}"
    );
    // Reading from within what is kept is no gap.
    let response = http()
        .get(format!("{base}/topic-events/kept?afterSeq=20"))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("events-oldest-available").is_none());
    assert_eq!(
        seqs(&response.json().await.unwrap()),
        vec![21, 22, 23, 24, 25]
    );

    a_resumed_subscriber_is_told_the_gap(&base).await;
}

/// With 25 published on `kept` and 16..=25 kept: a subscriber resuming after 3 gets the gap
/// frame, then the 10 kept events, then live ones.
pub(crate) async fn a_resumed_subscriber_is_told_the_gap(base: &str) {
    let (mut frames, _) = subscribe(format!("{base}/subscribe/kept"), Some(3)).await;
    let gap = tokio::time::timeout(Duration::from_secs(10), frames.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(gap.event, "gap");
    let gap: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(gap, json!({"requestedAfter": 3, "oldestAvailable": 16}));
    in_order(&read(&mut frames, 10).await, 16);
    // And live events follow.
    publish_n(base, "kept", 1).await;
    assert_eq!(read(&mut frames, 1).await, vec![26]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_by_age_drops_what_is_older() {
    let single = Single::start(&["--retention-max-age", "2s"], &[]).await;
    let base = single.gateway.url();
    publish_n(&base, "aging", 5).await;
    assert_eq!(
        history_becomes(&base, "aging", &[]).await.as_deref(),
        Some("6"),
        "an emptied topic says where it resumes"
    );
    publish_n(&base, "aging", 1).await;
    let response = http()
        .get(format!("{base}/topic-events/aging"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["events-oldest-available"], "6");
    assert_eq!(seqs(&response.json().await.unwrap()), vec![6]);
}

#[tokio::test]
async fn a_full_store_refuses_writes_with_503_and_recovers_when_room_is_made() {
    // A 2 MiB database: full after a few dozen 64 KiB events.
    let max = (2 * 1024 * 1024).to_string();
    let single = Single::start(&["--store-max-bytes", &max], &[]).await;
    let base = single.gateway.url();
    let client = http();
    let event = json!({"userId": "full", "title": "t", "description": "d".repeat(64 * 1024 - 1)});
    let mut stored = Vec::new();
    let refusal = loop {
        let response = client
            .post(format!("{base}/events"))
            .json(&event)
            .send()
            .await
            .unwrap();
        if response.status() != StatusCode::CREATED {
            break response;
        }
        let body: Value = response.json().await.unwrap();
        stored.push(body["id"].as_str().unwrap().to_owned());
        assert!(
            stored.len() < 100,
            "a 2 MiB store took {} 64 KiB events",
            stored.len()
        );
    };
    assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = refusal.json().await.unwrap();
    assert_eq!(body["message"], "store is full", "{body}");
    assert!(
        stored.len() > 5,
        "the store filled after {} events",
        stored.len()
    );

    // Reads go on, and every acknowledged write is there.
    let list: Value = client
        .get(format!("{base}/events?userId=full"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), stored.len());

    // Room made: writes succeed again.
    for id in stored.iter().take(5) {
        let response = client
            .delete(format!("{base}/events/{id}?userId=full"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    let response = client
        .post(format!("{base}/events"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}
