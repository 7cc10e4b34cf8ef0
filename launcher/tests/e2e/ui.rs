//! The dashboard's stream in token mode: a frame shows only what the token may see (backends
//! and traffic for an admin; the topics it may read), and no token is a 401. (The page itself
//! is driven in Chromium against `eventsys up`: `tests/up.rs`.)

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    pubsub::subscribe,
    support::{Launch, http, readyz_becomes},
    token::mint,
};

/// The first `stats` frame of `/ui/stats` with `token`.
async fn first_frame(base: &str, token: &str) -> Value {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client
        .get(format!("{base}/ui/stats?access_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut frames = response.bytes_stream().eventsource();
    let frame = tokio::time::timeout(Duration::from_secs(10), frames.next())
        .await
        .expect("a frame within a second or so")
        .unwrap()
        .unwrap();
    assert_eq!(frame.event, "stats");
    serde_json::from_str(&frame.data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_stream_shows_only_what_the_token_may_see() {
    let dir = tempfile::tempdir().unwrap();
    let token_mode = crate::support::TokenMode::new(dir.path());
    let (secret, auth) = (&token_mode.secret, token_mode.flags());
    let backend = Launch::backend(&dir.path().join("events.db"))
        .flags(&auth)
        .start()
        .await;
    let gateway = Launch::gateway(&[backend.addr]).flags(&auth).start().await;
    let base = gateway.url();
    readyz_becomes(&base, StatusCode::OK, Duration::from_secs(10)).await;
    let admin = mint(secret, &["--sub", "root", "--subscribe", "*", "--admin"]);
    let reader = mint(secret, &["--sub", "ann", "--subscribe", "orders.*"]);

    // Two topics with a subscriber each, so each has a hub to list.
    let _orders = subscribe(
        format!("{base}/subscribe/orders.eu?access_token={admin}"),
        None,
    )
    .await;
    let _billing = subscribe(
        format!("{base}/subscribe/billing?access_token={admin}"),
        None,
    )
    .await;

    let everything = first_frame(&base, &admin).await;
    assert_eq!(
        everything["backends"].as_array().unwrap().len(),
        1,
        "{everything}"
    );
    assert!(everything["traffic"].is_object(), "{everything}");
    let topics = |frame: &Value| -> Vec<String> {
        let mut topics: Vec<String> = frame["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["topic"].as_str().unwrap().to_owned())
            .collect();
        topics.sort();
        topics
    };
    assert_eq!(topics(&everything), ["billing", "orders.eu"]);

    let theirs = first_frame(&base, &reader).await;
    assert!(theirs.get("backends").is_none(), "{theirs}");
    assert!(theirs.get("traffic").is_none(), "{theirs}");
    assert_eq!(topics(&theirs), ["orders.eu"]);
    // The topic's presence over every gateway, its subjects named (once the gateway reported).
    let frame = crate::support::eventually(
        Duration::from_secs(15),
        || first_frame(&base, &reader),
        |frame| frame["topics"][0]["present"] == 1,
    )
    .await;
    assert_eq!(
        frame["topics"][0]["subjects"],
        serde_json::json!(["root"]),
        "{frame}"
    );

    let anonymous = http().get(format!("{base}/ui/stats")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    // The page and its files are open: it asks for the token itself.
    let config: Value = http()
        .get(format!("{base}/ui/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["token_mode"], true);
    let page = http().get(format!("{base}/ui")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
}
