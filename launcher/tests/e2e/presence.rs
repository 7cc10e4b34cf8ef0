//! Presence at the backends (`ReportPresence`, `Presence`): a gateway's report is counted and
//! named, a subject's first connection and last one gone are `join` and `leave` events on
//! `$presence.<topic>` (its history, its stream), and a gateway that stops reporting is
//! expired after the TTL with its subjects' leaves, once.

use std::time::Duration;

use eventsys::v1;

use crate::support::{Launch, http};

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
