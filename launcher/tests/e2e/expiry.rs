//! Streams end when their token expires (token mode): an SSE stream with a last `event: error`
//! (code UNAUTHENTICATED) that EventSource hands the page, which reconnects with a fresh token;
//! a gRPC `Subscribe`, through the front door or on a backend, with UNAUTHENTICATED; the
//! dashboard's `/ui/stats` as SSE. A topic hub shared with an expired reader resubscribes
//! after a failover with a token still valid, never the expired one.
//!
//! Tokens are accepted until `exp` plus a 30 s clock-skew leeway, so a token whose `exp` was
//! 27 s ago expires 3 s after it is made.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use eventsys::{
    auth::{Claims, EventsClaim},
    v1,
};
use futures::StreamExt;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::{
    pubsub::{Frames, open, try_open},
    support::{Local, TokenMode, authorized, http, readyz_becomes},
};

/// A token of `sub` for the test's secret, reading and publishing every topic, accepted for
/// `lasts` more.
fn token(mode: &TokenMode, sub: &str, lasts: Duration) -> String {
    let secret = std::fs::read(&mode.secret).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        sub: sub.into(),
        // The leeway: accepted until exp + 30 s.
        exp: now + lasts.as_secs() - 30,
        nbf: None,
        iss: None,
        aud: None,
        events: EventsClaim {
            publish: vec!["*".into()],
            subscribe: vec!["*".into()],
            admin: false,
        },
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(&secret),
    )
    .unwrap()
}

/// The next `message` frames' titles, then the stream's last frame and its end: what an SSE
/// reader got until its stream ended.
async fn until_the_end(frames: &mut Frames) -> (Vec<String>, Option<(String, Value)>) {
    let mut titles = Vec::new();
    let mut last = None;
    let read = async {
        while let Some(frame) = frames.next().await {
            let frame = frame.expect("valid SSE");
            let data: Value = serde_json::from_str(&frame.data).unwrap_or(Value::Null);
            if frame.event == "message" {
                titles.push(data["title"].as_str().unwrap_or_default().to_owned());
            } else {
                last = Some((frame.event, data));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the stream ends once its token expires");
    (titles, last)
}

async fn publish(base: &str, token: &str, topic: &str, title: &str) {
    let published = http()
        .post(format!("{base}/publish"))
        .bearer_auth(token)
        .json(&json!({"topic": topic, "title": title}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
}

/// Reads a gRPC `Subscribe` at `addr` with `token` until it ends; its events' titles, and the
/// status it ended with.
async fn subscribe_until_the_end(
    addr: SocketAddr,
    token: &str,
    topic: &str,
) -> (Vec<String>, tonic::Status) {
    let channel = crate::support::grpc_channel(addr).await;
    let mut client = v1::event_service_client::EventServiceClient::new(channel);
    let request = v1::SubscribeRequest {
        topic: topic.into(),
        ..Default::default()
    };
    let mut stream = client
        .subscribe(authorized(token, request))
        .await
        .unwrap()
        .into_inner();
    let mut titles = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.message().await {
                Ok(Some(event)) => titles.push(event.title),
                Ok(None) => panic!("ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ends once its token expires");
    (titles, ended)
}

/// Token mode in this process: `backends` backends on one SQLite file in `dir`, and a
/// gateway over them, ready.
async fn system(dir: &std::path::Path, backends: usize) -> (TokenMode, Vec<Local>, Local) {
    let mode = TokenMode::new(dir);
    let db = dir.join("events.db");
    let mut started = Vec::new();
    for _ in 0..backends {
        started.push(Local::backend(&db, &mode.flags()).await);
    }
    let addrs: Vec<SocketAddr> = started.iter().map(|b| b.addr).collect();
    let gateway = Local::gateway(&addrs, &mode.flags()).await;
    let ready = reqwest::StatusCode::OK;
    readyz_becomes(&gateway.url(), ready, Duration::from_secs(10)).await;
    (mode, started, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_end_when_their_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (mode, backends, gateway) = system(dir.path(), 1).await;
    let backend = &backends[0];
    let base = gateway.url();
    let publisher = token(&mode, "publisher", Duration::from_secs(600));
    let short = token(&mode, "bob", Duration::from_secs(4));

    // SSE, the dashboard's stream, and gRPC through the front door and on the backend, all
    // opened with the same short token.
    let (mut sse, _) = open(
        &format!("{base}/subscribe/orders?access_token={short}"),
        None,
    )
    .await;
    let (mut stats, _) = open(&format!("{base}/ui/stats?access_token={short}"), None).await;
    let grpc = |addr: SocketAddr| {
        let short = short.clone();
        tokio::spawn(async move { subscribe_until_the_end(addr, &short, "orders").await })
    };
    let (front, direct) = (grpc(gateway.addr), grpc(backend.addr));
    publish(&base, &publisher, "orders", "before").await;

    let (titles, last) = until_the_end(&mut sse).await;
    assert_eq!(titles, ["before"], "the SSE stream");
    let (event, data) = last.expect("a last frame");
    assert_eq!(event, "error");
    assert_eq!(data["code"], "UNAUTHENTICATED", "{data}");
    assert_eq!(data["error"], "token expired", "{data}");
    let (_, last) = until_the_end(&mut stats).await;
    let (event, data) = last.expect("the dashboard's last frame");
    assert_eq!(
        (event.as_str(), &data["code"]),
        ("error", &json!("UNAUTHENTICATED"))
    );
    for (door, task) in [("the front door", front), ("the backend", direct)] {
        let (titles, status) = task.await.unwrap();
        assert_eq!(titles, ["before"], "{door}");
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{door}: {status:?}"
        );
        assert!(
            status.message().contains("token expired"),
            "{door}: {status:?}"
        );
    }
    // The same token again: refused; the page comes back with a fresh one.
    let again = try_open(
        &format!("{base}/subscribe/orders?access_token={short}"),
        None,
    )
    .await;
    assert_eq!(again.status(), 401);
}

/// Two readers of one topic share its hub: the first with a long token, the second (the
/// newest) with a short one. Once the short one has expired and its reader is gone, the
/// backend feeding the hub goes away: the hub resubscribes with the long token, and the first
/// reader reads on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_resubscribes_with_a_token_still_valid() {
    let dir = tempfile::tempdir().unwrap();
    let (mode, mut backends, gateway) = system(dir.path(), 2).await;
    let base = gateway.url();
    let publisher = token(&mode, "publisher", Duration::from_secs(600));
    let long = token(&mode, "alice", Duration::from_secs(600));
    let short = token(&mode, "bob", Duration::from_secs(4));

    let url = |token: &str| format!("{base}/subscribe/news?access_token={token}");
    let (mut staying, feeding) = open(&url(&long), None).await;
    let (mut leaving, _) = open(&url(&short), None).await;
    publish(&base, &publisher, "news", "one").await;
    let (titles, last) = until_the_end(&mut leaving).await;
    assert_eq!(titles, ["one"]);
    assert_eq!(last.expect("a last frame").0, "error");

    // The backend feeding the hub shuts down; the other takes the stream over.
    let gone = backends
        .iter()
        .position(|b| b.addr.to_string() == feeding)
        .expect("the hub's backend");
    drop(backends.remove(gone));
    publish(&base, &publisher, "news", "two").await;
    let mut titles = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while titles.len() < 2 {
            let frame = staying
                .next()
                .await
                .expect("the stream goes on")
                .expect("SSE");
            if frame.event == "message" {
                let data: Value = serde_json::from_str(&frame.data).unwrap();
                titles.push(data["title"].as_str().unwrap().to_owned());
            }
        }
    })
    .await
    .expect("the long reader reads on after the failover");
    assert_eq!(titles, ["one", "two"]);
}

/// The dashboard in a browser, given a token that expires: its stream's last frame makes the
/// page ask for a fresh token, rather than reconnect with the old one.
#[tokio::test]
async fn the_dashboard_asks_for_a_fresh_token_when_its_own_expires() {
    if !testdb::needs(
        "the_dashboard_asks_for_a_fresh_token_when_its_own_expires",
        &[testdb::Tool::Chromium],
    ) {
        return;
    }
    let _exclusive = crate::support::EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (mode, _backends, gateway) = system(dir.path(), 1).await;
    let short = token(&mode, "bob", Duration::from_secs(4));
    let browser = crate::cdp::Browser::launch(dir.path()).await;
    let mut page = browser.page().await;
    page.navigate(&format!("{}/ui", gateway.url())).await;
    let status = "document.getElementById('status').textContent";
    let within = Duration::from_secs(15);
    page.wait_for(status, |s| *s == "token needed", within)
        .await;
    page.eval(&format!(
        "document.getElementById('token').value = {short:?}; \
         document.getElementById('token-form').requestSubmit(); true"
    ))
    .await;
    page.wait_for(status, |s| *s == "live", within).await;
    page.wait_for(status, |s| *s == "token expired", within)
        .await;
    let form = page
        .eval("document.getElementById('token-form').hidden")
        .await;
    assert_eq!(form, json!(false), "the page asks for a token again");
}
