//! Several backend processes over one SQLite file: shared reads and writes, seq order under
//! concurrent publishers in two processes, subscriptions across processes, and `kill -9`.

use std::{collections::HashSet, time::Duration};

use eventsys::v1::{self, event_service_client::EventServiceClient};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::support::Launch;

fn publish(topic: &str, title: String) -> v1::PublishRequest {
    v1::PublishRequest {
        topic: topic.into(),
        title,
        ..Default::default()
    }
}

/// Every event of a topic, through ListTopicEvents' paging.
async fn topic_history(client: &mut EventServiceClient<Channel>, topic: &str) -> Vec<v1::Event> {
    let mut all = Vec::new();
    loop {
        let page = client
            .list_topic_events(v1::ListTopicEventsRequest {
                topic: topic.into(),
                after_seq: all.last().map_or(0, |e: &v1::Event| e.seq),
                limit: 64,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.events);
        if !page.more {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_backends_on_one_file_share_events_and_seq_order() {
    let _exclusive = crate::support::EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let (a, b) = tokio::join!(Launch::backend(&db).start(), Launch::backend(&db).start());
    let (mut via_a, mut via_b) = (a.client().await, b.client().await);

    let created = via_a
        .create_event(v1::CreateEventRequest {
            user_id: "u1".into(),
            title: "made on A".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let read = via_b
        .get_event(v1::GetEventRequest {
            id: created.id.clone(),
            user_id: "u1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        read, created,
        "an event created through A is read through B"
    );
    via_b
        .update_event(v1::UpdateEventRequest {
            id: created.id.clone(),
            user_id: "u1".into(),
            title: "changed on B".into(),
            description: String::new(),
            completed: true,
            if_revision: 0,
            if_exists: false,
        })
        .await
        .unwrap();
    let listed = via_a
        .list_events(v1::ListEventsRequest {
            user_id: "u1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.events.len(), 1);
    assert_eq!(listed.events[0].title, "changed on B");

    // Publishers in both processes at once: seqs are unique, gap-free and increase per writer.
    const WRITERS: usize = 6;
    const EACH: usize = 40;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = if w % 2 == 0 {
            via_a.clone()
        } else {
            via_b.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..EACH {
                let event = client
                    .publish(publish("shared", format!("w{w}-{i}")))
                    .await
                    .unwrap()
                    .into_inner();
                seqs.push(event.seq);
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        seqs.extend(mine);
    }
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=(WRITERS * EACH) as u64).collect();
    assert_eq!(seqs, expected);
    let history_a: Vec<u64> = topic_history(&mut via_a, "shared")
        .await
        .iter()
        .map(|e| e.seq)
        .collect();
    let history_b: Vec<u64> = topic_history(&mut via_b, "shared")
        .await
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(history_a, expected);
    assert_eq!(history_b, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_on_one_backend_sees_publishes_through_another_in_order() {
    let _exclusive = crate::support::EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let (a, b) = tokio::join!(Launch::backend(&db).start(), Launch::backend(&db).start());
    let (mut via_a, mut via_b) = (a.client().await, b.client().await);

    for i in 1..=3 {
        via_a
            .publish(publish("news", format!("old {i}")))
            .await
            .unwrap();
    }
    let mut stream = via_b
        .subscribe(v1::SubscribeRequest {
            topic: "news".into(),
            after_seq: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let publisher = tokio::spawn(async move {
        for i in 4..=50 {
            via_a
                .publish(publish("news", format!("live {i}")))
                .await
                .unwrap();
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 49 {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events keep arriving")
            .unwrap()
            .expect("stream stays open");
        assert_eq!(next.topic, "news");
        seen.push(next.seq);
    }
    publisher.await.unwrap();
    assert_eq!(
        seen,
        (2..=50).collect::<Vec<u64>>(),
        "replay after seq 1, then live, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_writes_loses_no_acknowledged_write() {
    let _exclusive = crate::support::EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let mut victim = Launch::backend(&db).start().await;
    let client = victim.client().await;

    // Writers report each acknowledged write; they stop at their first failure, which comes
    // when the process dies.
    let (acks, mut acked) = mpsc::unbounded_channel::<(String, u64)>();
    for w in 0..4 {
        let mut client = client.clone();
        let acks = acks.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let written = if i % 2 == 0 {
                    client.publish(publish("crash", format!("w{w}-{i}"))).await
                } else {
                    let create = v1::CreateEventRequest {
                        user_id: format!("w{w}"),
                        title: format!("w{w}-{i}"),
                        ..Default::default()
                    };
                    client.create_event(create).await
                };
                match written {
                    Ok(event) => {
                        let event = event.into_inner();
                        if acks.send((event.id, event.seq)).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }
    drop(acks);

    let mut acknowledged = Vec::new();
    while acknowledged.len() < 300 {
        acknowledged.push(acked.recv().await.expect("writers are running"));
    }
    victim.signal(nix::sys::signal::Signal::SIGKILL);
    let exit = victim.exit_within(Duration::from_secs(10)).await;
    assert!(!exit.success());
    // Acknowledgements already on their way when the process died still count.
    while let Some(ack) = acked.recv().await {
        acknowledged.push(ack);
    }

    let survivor = Launch::backend(&db).start().await;
    let mut client = survivor.client().await;
    for (id, _) in &acknowledged {
        let found = client
            .get_event(v1::GetEventRequest {
                id: id.clone(),
                user_id: String::new(),
            })
            .await;
        assert!(found.is_ok(), "acknowledged event {id} lost: {found:?}");
    }
    let history = topic_history(&mut client, "crash").await;
    let seqs: Vec<u64> = history.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no hole in the stream"
    );
    let stored: HashSet<&str> = history.iter().map(|e| e.id.as_str()).collect();
    for (id, seq) in acknowledged.iter().filter(|(_, seq)| *seq > 0) {
        assert!(
            stored.contains(id.as_str()),
            "published event {id} (seq {seq}) lost"
        );
    }
    // New writes continue the stream where it stopped.
    let next = client
        .publish(publish("crash", "after".into()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.seq, seqs.len() as u64 + 1);
}
