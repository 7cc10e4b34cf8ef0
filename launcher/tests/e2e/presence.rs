//! Presence at the backends (`ReportPresence`, `Presence`): a gateway's report is counted and
//! named, a subject's first connection and last one gone are `join` and `leave` events on
//! `$presence.<topic>` (its history, its stream), and a gateway that stops reporting is
//! expired after the TTL with its subjects' leaves, once.

use std::time::Duration;

use eventsys::v1;
use futures::StreamExt;

use crate::support::{Launch, eventually, http};

fn member(topic: &str, user: &str, connections: u64) -> v1::PresenceMember {
    v1::PresenceMember {
        topic: topic.into(),
        user_id: user.into(),
        connections,
        since: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_members_are_counted_and_expire_with_their_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let backend = Launch::backend(&db)
        .flags(&["--presence-ttl", "1s"])
        .start()
        .await;
    let other = Launch::backend(&db)
        .flags(&["--presence-ttl", "1s"])
        .start()
        .await;
    let mut client = backend.client().await;
    let mut watching = other
        .client()
        .await
        .subscribe(v1::SubscribeRequest {
            topic: "$presence.orders".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let reported = client
        .report_presence(v1::ReportPresenceRequest {
            gateway: "g1".into(),
            full: true,
            members: vec![member("orders", "ann", 1), member("orders", "", 2)],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!reported.resync);
    let now = client
        .presence(v1::PresenceRequest {
            topic: "orders".into(),
            count_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((now.count, now.gateways), (3, 1));
    let named: Vec<&str> = now.subjects.iter().map(|s| s.user_id.as_str()).collect();
    assert_eq!(named, ["ann"]);
    let join = watching.message().await.unwrap().expect("a join");
    assert_eq!(
        (join.title.as_str(), join.user_id.as_str(), join.seq),
        ("join", "ann", 1)
    );

    // Nobody can publish to a presence topic.
    let refused = client
        .publish(v1::PublishRequest {
            topic: "$presence.orders".into(),
            title: "join".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // g1 stops reporting: after the TTL its members are gone, Ann's leave recorded once.
    let leave = tokio::time::timeout(Duration::from_secs(10), watching.message())
        .await
        .expect("a leave within the TTL and an interval")
        .unwrap()
        .expect("a leave");
    assert_eq!(
        (leave.title.as_str(), leave.user_id.as_str(), leave.seq),
        ("leave", "ann", 2)
    );
    let now = client
        .presence(v1::PresenceRequest {
            topic: "orders".into(),
            count_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((now.count, now.gateways), (0, 0));
    // Both backends ran the expiry; the history has one leave.
    let history = client
        .list_topic_events(v1::ListTopicEventsRequest {
            topic: "$presence.orders".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let titles: Vec<&str> = history.events.iter().map(|e| e.title.as_str()).collect();
    assert_eq!(titles, ["join", "leave"]);
    // The expired gateway is asked for everything when it comes back.
    let back = client
        .report_presence(v1::ReportPresenceRequest {
            gateway: "g1".into(),
            full: false,
            members: vec![member("orders", "ann", 1)],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(back.resync);
    let _ = http();
}

/// `GET /topics/{topic}/presence` counts every gateway's streams, from either gateway; a
/// gateway killed with `kill -9` stops counting within the TTL and an interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_through_two_gateways_are_counted_from_either() {
    let _exclusive = crate::support::EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let ttl = ["--presence-ttl", "2s"];
    let one = Launch::backend(&db).flags(&ttl).start().await;
    let two = Launch::backend(&db).flags(&ttl).start().await;
    let fast = ["--presence-interval", "200ms", "--presence-debounce", "1s"];
    let a = Launch::gateway(&[one.addr, two.addr])
        .flags(&fast)
        .start()
        .await;
    let b = Launch::gateway(&[one.addr, two.addr])
        .flags(&fast)
        .start()
        .await;
    crate::support::wait_healthy(a.addr, None, 2).await;
    crate::support::wait_healthy(b.addr, None, 2).await;
    let mut streams = Vec::new();
    for (gateway, n) in [(&a, 3), (&b, 2)] {
        for _ in 0..n {
            let url = format!("{}/subscribe/room", gateway.url());
            streams.push(crate::pubsub::open(&url, None).await.0);
        }
    }
    let count = |gateway: String, query: &'static str| async move {
        let response = http()
            .get(format!("{gateway}/topics/room/presence{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        response.json::<serde_json::Value>().await.unwrap()
    };
    let until = |gateway: String, want: u64| {
        let look = move || count(gateway.clone(), "?count=1");
        eventually(Duration::from_secs(15), look, move |now| {
            now["count"] == want
        })
    };
    let seen = until(a.url(), 5).await;
    assert_eq!(seen["gateways"], 2, "{seen}");
    assert!(seen.get("subjects").is_none(), "{seen}");
    let full = count(b.url(), "").await;
    assert_eq!(
        (full["count"].as_u64(), full["gateways"].as_u64()),
        (Some(5), Some(2))
    );
    // Anonymous streams are counted, never named.
    assert_eq!(full["subjects"], serde_json::json!([]));

    // One of A's streams closes: gone after the debounce.
    drop(streams.remove(0));
    until(b.url(), 4).await;
    // B dies without a word: its two leave the count within the TTL and an interval.
    b.signal(nix::sys::signal::Signal::SIGKILL);
    let after = until(a.url(), 2).await;
    assert_eq!(after["gateways"], 1, "{after}");
}

/// Token mode, two gateways (each signing its own reports with the deployment's HMAC secret):
/// subjects are named from either gateway; a reconnect inside the debounce is no leave; a
/// subject still on another gateway is no leave; a gateway killed takes its subjects' leaves
/// with it within the TTL; every join and leave is recorded once, in order, and streams from
/// `$presence.<topic>`; the presence of a topic one may not read is 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subjects_join_and_leave_once_through_two_gateways() {
    let _exclusive = crate::support::EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(
        &secret,
        "a presence test secret that is long enough for HS256",
    )
    .unwrap();
    let secret_flag = secret.display().to_string();
    let auth = ["--auth", "jwt", "--jwt-secret-file", &secret_flag];
    let mint = |args: &[&str]| crate::token::mint(&secret, args);
    let alice = mint(&["--sub", "alice", "--subscribe", "orders.*"]);
    let bob = mint(&["--sub", "bob", "--subscribe", "orders.eu"]);
    let admin = mint(&["--sub", "ops", "--admin", "--subscribe", "*"]);
    let db = dir.path().join("events.db");
    let mut backend_flags = auth.to_vec();
    backend_flags.extend(["--presence-ttl", "2s"]);
    let one = Launch::backend(&db).flags(&backend_flags).start().await;
    let two = Launch::backend(&db).flags(&backend_flags).start().await;
    let mut gateway_flags = auth.to_vec();
    gateway_flags.extend(["--presence-interval", "200ms", "--presence-debounce", "1s"]);
    let a = Launch::gateway(&[one.addr, two.addr])
        .flags(&gateway_flags)
        .start()
        .await;
    let b = Launch::gateway(&[one.addr, two.addr])
        .flags(&gateway_flags)
        .start()
        .await;
    crate::support::wait_healthy(a.addr, Some(&admin), 2).await;
    crate::support::wait_healthy(b.addr, Some(&admin), 2).await;
    // The joins and leaves as they are recorded, from a backend.
    let mut watching = one
        .client()
        .await
        .subscribe(crate::support::authorized(
            &admin,
            v1::SubscribeRequest {
                topic: "$presence.orders.eu".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        let event = tokio::time::timeout(Duration::from_secs(15), watching.message())
            .await
            .expect("a presence event")
            .unwrap()
            .expect("the stream open");
        (event.title, event.user_id, event.seq)
    };
    let open = |gateway: String, token: &str| {
        let url = format!("{gateway}/subscribe/orders.eu?access_token={token}");
        async move { crate::pubsub::open(&url, None).await.0 }
    };
    // Through a gateway: the topic with its presence inline, and the presence topic itself.
    let inline_url = format!(
        "{}/subscribe/orders.eu?presence=1&access_token={admin}",
        a.url()
    );
    let (mut inline, _) = crate::pubsub::open(&inline_url, None).await;
    let presence_url = format!(
        "{}/subscribe/$presence.orders.eu?access_token={admin}",
        b.url()
    );
    let (mut presence_sse, _) = crate::pubsub::open(&presence_url, None).await;
    let mut alice_a = vec![open(a.url(), &alice).await, open(a.url(), &alice).await];
    let alice_b = open(b.url(), &alice).await;
    let bob_b = open(b.url(), &bob).await;
    // The inline watcher is a stream of the topic too: "ops" is present.
    let mut joined = [next().await, next().await, next().await];
    joined.sort();
    let joined: Vec<(&str, &str)> = joined
        .iter()
        .map(|(title, user, _)| (title.as_str(), user.as_str()))
        .collect();
    assert_eq!(
        joined,
        [("join", "alice"), ("join", "bob"), ("join", "ops")]
    );
    let presence = |gateway: String, token: &str, topic: &'static str| {
        let request = http()
            .get(format!("{gateway}/topics/{topic}/presence"))
            .bearer_auth(token);
        async move { request.send().await.unwrap() }
    };
    let counted = |gateway: String| {
        let request = presence(gateway, &alice, "orders.eu");
        async move { request.await.json::<serde_json::Value>().await.unwrap() }
    };
    let seen = eventually(
        Duration::from_secs(10),
        || counted(b.url()),
        |seen| seen["count"] == 5,
    )
    .await;
    assert_eq!(seen["gateways"], 2, "{seen}");
    let subjects: Vec<(String, u64)> = seen["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["userId"].as_str().unwrap().to_owned(),
                s["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        subjects,
        [
            ("alice".to_owned(), 3),
            ("bob".to_owned(), 1),
            ("ops".to_owned(), 1)
        ]
    );
    // Bob may not read orders.us: its presence neither.
    let refused = presence(a.url(), &bob, "orders.us").await;
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);

    // Alice drops both streams through A and reconnects one at once: no leave. Bob leaves.
    alice_a.clear();
    alice_a.push(open(a.url(), &alice).await);
    drop(bob_b);
    let left = next().await;
    assert_eq!((left.0.as_str(), left.1.as_str()), ("leave", "bob"));
    // The same through the gateways, as `join` and `leave` frames.
    for frames in [&mut inline, &mut presence_sse] {
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let frame = tokio::time::timeout(Duration::from_secs(10), frames.next())
                .await
                .expect("a frame")
                .expect("the stream open")
                .expect("valid SSE");
            let data: serde_json::Value = serde_json::from_str(&frame.data).unwrap();
            seen.push((
                frame.event.clone(),
                data["userId"].as_str().unwrap().to_owned(),
            ));
        }
        seen[..3].sort();
        let seen: Vec<(&str, &str)> = seen.iter().map(|(e, u)| (e.as_str(), u.as_str())).collect();
        assert_eq!(
            seen,
            [
                ("join", "alice"),
                ("join", "bob"),
                ("join", "ops"),
                ("leave", "bob")
            ]
        );
    }
    // Gateway B dies: Alice is still on A, so no leave; then A dies: Alice leaves once.
    b.signal(nix::sys::signal::Signal::SIGKILL);
    drop(alice_b);
    // B is expired once A's count is all there is (Alice's one stream, the inline watcher).
    eventually(
        Duration::from_secs(15),
        || counted(a.url()),
        |seen| seen["count"] == 2 && seen["gateways"] == 1,
    )
    .await;
    a.signal(nix::sys::signal::Signal::SIGKILL);
    let mut left = [next().await, next().await];
    left.sort();
    let left: Vec<(&str, &str)> = left
        .iter()
        .map(|(title, user, _)| (title.as_str(), user.as_str()))
        .collect();
    assert_eq!(left, [("leave", "alice"), ("leave", "ops")]);
    // Exactly these, once each, in order.
    let history = one
        .client()
        .await
        .list_topic_events(crate::support::authorized(
            &admin,
            v1::ListTopicEventsRequest {
                topic: "$presence.orders.eu".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let recorded: Vec<(String, String)> = history
        .events
        .iter()
        .map(|e| (e.title.clone(), e.user_id.clone()))
        .collect();
    // Three joins, Bob's leave, then Alice's and the watcher's when A went: once each.
    assert_eq!(recorded.len(), 6, "{recorded:?}");
    let mut joins = recorded[..3].to_vec();
    joins.sort();
    let mut last = recorded[4..].to_vec();
    last.sort();
    let pair = |t: &str, u: &str| (t.to_owned(), u.to_owned());
    assert_eq!(
        joins,
        [
            pair("join", "alice"),
            pair("join", "bob"),
            pair("join", "ops")
        ]
    );
    assert_eq!(recorded[3], pair("leave", "bob"));
    assert_eq!(last, [pair("leave", "alice"), pair("leave", "ops")]);
}

/// The presence topic is a topic: its SSE stream through a gateway moves to another backend
/// when the one feeding it is killed, and `Last-Event-ID` resumes it exactly; the gRPC
/// `Presence` call answers through the gateway's port too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_presence_stream_resumes_across_a_backend_kill() {
    let _exclusive = crate::support::EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let one = Launch::backend(&db).start().await;
    let two = Launch::backend(&db).start().await;
    let gateway = Launch::gateway(&[one.addr, two.addr]).start().await;
    crate::support::wait_healthy(gateway.addr, None, 2).await;
    let report = |members: Vec<v1::PresenceMember>| v1::ReportPresenceRequest {
        gateway: "elsewhere".into(),
        full: false,
        members,
    };
    let mut client = one.client().await;
    client
        .report_presence(report(vec![member("room", "ann", 1)]))
        .await
        .unwrap();
    let url = format!("{}/subscribe/$presence.room", gateway.url());
    let (mut frames, serving) = crate::pubsub::open(&url, None).await;
    let join = frames.next().await.unwrap().unwrap();
    assert_eq!(join.event, "join");
    let victim = if serving == one.addr.to_string() {
        &one
    } else {
        &two
    };
    let survivor = if serving == one.addr.to_string() {
        &two
    } else {
        &one
    };
    victim.signal(nix::sys::signal::Signal::SIGKILL);
    survivor
        .client()
        .await
        .report_presence(report(vec![
            member("room", "ann", 0),
            member("room", "bo", 1),
        ]))
        .await
        .unwrap();
    // Through the hub on the surviving backend: Ann's leave, Bo's join, nothing twice.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let frame = tokio::time::timeout(Duration::from_secs(30), frames.next())
            .await
            .expect("a frame after the kill")
            .unwrap()
            .unwrap();
        let data: serde_json::Value = serde_json::from_str(&frame.data).unwrap();
        seen.push((
            frame.event,
            data["userId"].as_str().unwrap().to_owned(),
            frame.id,
        ));
    }
    assert_eq!(
        seen.iter()
            .map(|(e, u, _)| (e.as_str(), u.as_str()))
            .collect::<Vec<_>>(),
        [("leave", "ann"), ("join", "bo")]
    );
    // A client that had only the join resumes with exactly the rest.
    let (mut resumed, _) = crate::pubsub::open(&url, Some(&join.id)).await;
    for (event, user, id) in &seen {
        let frame = resumed.next().await.unwrap().unwrap();
        assert_eq!((&frame.event, &frame.id), (event, id), "{user}");
    }
    // gRPC through the gateway's port.
    let mut front = v1::event_service_client::EventServiceClient::connect(gateway.url())
        .await
        .unwrap();
    let now = front
        .presence(v1::PresenceRequest {
            topic: "room".into(),
            count_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((now.count, now.subjects.len()), (1, 1));
    assert_eq!(now.subjects[0].user_id, "bo");
    // A gRPC Subscribe of the topic through the gateway counts as a stream of it (anonymous).
    let _streaming = front
        .subscribe(v1::SubscribeRequest {
            topic: "room".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let look = || {
        let mut front = front.clone();
        async move {
            let request = v1::PresenceRequest {
                topic: "room".into(),
                count_only: true,
            };
            front.presence(request).await.unwrap().into_inner()
        }
    };
    let now = eventually(Duration::from_secs(15), look, |now| now.count == 2).await;
    assert_eq!(now.gateways, 2, "the gateway and the reports' own");
}
