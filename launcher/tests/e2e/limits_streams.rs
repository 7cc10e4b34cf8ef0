//! What clients can hold through the gateway's streams and request rate, against the real
//! processes: SSE clients that never read hold a bounded number of bytes and still get every
//! event once they read; open streams and requests per client are capped with 429 and
//! `Retry-After`; one subscriber's stream ending does not take its backend out of rotation.

use std::{net::IpAddr, time::Duration};

use eventsys::v1;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    pubsub::{in_order, publish, read, subscribe},
    support::{EXCLUSIVE, Launch, Scrape, Single, http, metric, wait_healthy},
};

/// What the gateway may hold per non-reading client in this test.
const BUDGET: u64 = 32 * 1024;
/// Padding of each event: a large one.
const EVENT: usize = 32 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_do_not_read_hold_bytes_not_events_and_lose_nothing() {
    // Memory is the point: the gateway is a process of its own, measured alone.
    let _exclusive = EXCLUSIVE.lock().await;
    let budget = BUDGET.to_string();
    let single = Single::launch(&[], &["--sse-buffer-bytes", &budget]).await;
    let (gateway, base) = (&single.gateway, single.gateway.url());
    // Warm the gateway's allocator with the same traffic, read, before measuring.
    let (mut warm, _) = subscribe(format!("{base}/subscribe/warm"), None).await;
    assert_eq!(publish(&base, "warm", 200, 8, EVENT).await, 200);
    in_order(&read(&mut warm, 200).await, 1);
    drop(warm);

    let idle = gateway.rss();
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(
            subscribe(format!("{base}/subscribe/firehose"), None)
                .await
                .0,
        );
    }
    assert_eq!(publish(&base, "firehose", 2000, 8, EVENT).await, 2000);
    let grown = gateway.rss().saturating_sub(idle);
    // Ten budgets, and some MiB for everything else a busy process allocates and what its
    // allocator keeps of what was freed (jemalloc returns freed pages after its decay time,
    // 10 s): measured 3 to 9 MiB, 1.2 with the decay set to 0. Queuing whole events (64 of
    // these per client) would take over 20 MiB.
    let bound = 10 * BUDGET + 12 * 1024 * 1024;
    assert!(
        grown <= bound,
        "gateway grew by {grown} bytes with 10 stalled clients (bound {bound})"
    );
    eprintln!("gateway RSS grew by {grown} bytes (bound {bound})");
    let reads = clients.iter_mut().map(|frames| read(frames, 2000));
    for seqs in futures::future::join_all(reads).await {
        in_order(&seqs, 1);
    }
    let paused = "gateway_sse_resumes_total{reason=\"slow_client\"}";
    assert!(
        metric(gateway.addr, paused).await >= 10,
        "every client was paused"
    );
}

/// A client on `local`, a loopback address of its own: a client of its own to the gateway.
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(local.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// An SSE request from `local`.
async fn open_from(base: &str, local: &str) -> reqwest::Response {
    client_from(local)
        .get(format!("{base}/subscribe/capped"))
        .send()
        .await
        .unwrap()
}

async fn assert_too_many(response: reqwest::Response, text: &str) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED", "{body}");
    assert!(body["message"].as_str().unwrap().contains(text), "{body}");
}

#[tokio::test]
async fn open_streams_are_capped_per_client_and_in_total() {
    let flags = ["--max-sse-per-client", "2", "--max-sse-streams", "3"];
    let single = Single::start(&[], &flags).await;
    let base = single.gateway.url();

    let first = open_from(&base, "127.0.0.1").await;
    let _second = open_from(&base, "127.0.0.1").await;
    assert_eq!(first.status(), 200);
    assert_too_many(open_from(&base, "127.0.0.1").await, "for this client").await;
    let other = open_from(&base, "127.0.0.2").await;
    assert_eq!(other.status(), 200, "another client has its own allowance");
    assert_too_many(open_from(&base, "127.0.0.3").await, "too many open streams").await;
    let gateway = single.gateway.addr;
    assert_eq!(metric(gateway, "gateway_sse_streams").await, 3);
    let refused = |kind: &str| format!("gateway_limit_refusals_total{{kind=\"{kind}\"}}");
    assert_eq!(metric(gateway, &refused("client_streams")).await, 1);
    assert_eq!(metric(gateway, &refused("total_streams")).await, 1);

    // A client that leaves frees its place: the gateway counts one stream fewer, and another
    // client gets in.
    drop(first);
    Scrape::gateway(gateway)
        .until_value("gateway_sse_streams", Duration::from_secs(10), |open| {
            open == 2
        })
        .await;
    let response = open_from(&base, "127.0.0.3").await;
    assert_eq!(response.status(), 200, "the place was freed");
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_and_others_do_not() {
    let single = Single::start(&[], &["--rate-limit", "5"]).await;
    let url = format!("{}/events?userId=rate", single.gateway.url());
    let client = http();
    let mut refused = None;
    for _ in 0..20 {
        let response = client.get(&url).send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let refused = refused.expect("20 requests at once exceed 5 per second");
    assert_too_many(refused, "too many requests").await;
    let other = client_from("127.0.0.2");
    assert_eq!(other.get(&url).send().await.unwrap().status(), 200);
    // Counted by kind (read from a third address: the first is over its rate).
    let metrics = client_from("127.0.0.3")
        .get(format!("{}/metrics", single.gateway.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "gateway_limit_refusals_total{kind=\"rate\"} 1"),
        "{metrics}"
    );
}

/// Invalid tokens count against their address's rate: a client trying made-up tokens gets
/// 401s, then 429s like any other client over its rate.
#[tokio::test]
async fn refused_tokens_count_against_the_clients_rate() {
    let dir = tempfile::tempdir().unwrap();
    let token_mode = crate::support::TokenMode::new(dir.path());
    let backend =
        crate::support::Local::backend(&dir.path().join("events.db"), &token_mode.flags()).await;
    let mut flags = token_mode.flags().to_vec();
    flags.extend(["--rate-limit", "5"]);
    let gateway = crate::support::Local::gateway(&[backend.addr], &flags).await;
    let url = format!("{}/events", gateway.url());
    let client = http();
    let mut refused = None;
    for attempt in 0..20 {
        let response = client
            .get(&url)
            .bearer_auth(format!("made.up.{attempt}"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let refused = refused.expect("20 bad tokens at once exceed 5 per second");
    assert_too_many(refused, "too many requests").await;
    // Another address is not held back by it.
    let other = client_from("127.0.0.2")
        .get(&url)
        .bearer_auth("made.up")
        .send();
    assert_eq!(other.await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_ended_for_one_subscriber_leaves_its_backend_in_rotation() {
    let _exclusive = EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    // A backend that closes any subscriber more than 5 events behind, and a sibling on the
    // same store whose publishes it sees in batches (from its change feed, not its own
    // writes), which overflow its subscriber's one-event queue.
    // Processes: what the backend and the gateway log is part of what is checked.
    let backend = Launch::backend(&db)
        .flags(&["--subscriber-buffer", "1", "--max-subscriber-lag", "5"])
        .start()
        .await;
    let sibling = Launch::backend(&db).start().await;
    let gateway = Launch::gateway(&[backend.addr]).start().await;
    wait_healthy(gateway.addr, None, 1).await;
    let (mut frames, _) = subscribe(format!("{}/subscribe/bursty", gateway.url()), None).await;
    let client = sibling.client().await;
    let mut publishes = tokio::task::JoinSet::new();
    for i in 0..400 {
        let mut client = client.clone();
        publishes.spawn(async move {
            let request = v1::PublishRequest {
                topic: "bursty".into(),
                title: format!("{i}"),
                data: Some(eventsys::json::to_struct(
                    json!({"pad": "x".repeat(1024)}).as_object().unwrap(),
                )),
                ..Default::default()
            };
            client.publish(request).await.unwrap();
        });
    }
    publishes.join_all().await;
    in_order(&read(&mut frames, 400).await, 1);
    backend
        .wait_for_log("subscriber too far behind: closing it")
        .await;

    // The gateway resubscribed, and the backend is still in rotation, taking calls.
    let lost = "gateway_sse_resumes_total{reason=\"backend_lost\"}";
    assert!(metric(gateway.addr, lost).await >= 1);
    let healthy = format!("gateway_backend_healthy{{backend=\"{}\"}}", backend.addr);
    assert_eq!(metric(gateway.addr, &healthy).await, 1);
    let response = http()
        .get(format!("{}/events?userId=nobody", gateway.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        !gateway.logs().contains("backend unreachable"),
        "{}",
        gateway.logs()
    );
}
