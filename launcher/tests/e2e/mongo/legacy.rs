//! The old Go service's documents: what it wrote is served (listed, read, updated, deleted;
//! its published events numbered into their topics' history), and what this service writes a
//! plain MongoDB client reads with the old field names.

use mongodb::bson::{self, Document, doc, oid::ObjectId};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    lists::seqs,
    pubsub::{in_order, publish, read, subscribe},
    support::{Front, UpSystem, get_json, http},
};

/// Go's zero `time.Time`, as the old service stored `time` for events it did not publish.
const GO_ZERO_TIME_MS: i64 = -62_135_596_800_000;

/// A document as the Go service wrote it: its field names, no `seq`, no `data`.
fn go_document(id: Uuid, user: &str, topic: &str, title: &str, time_ms: i64) -> Document {
    doc! {
        "_id": ObjectId::new(),
        "id": id.to_string(),
        "userId": user,
        "title": title,
        "description": "from Go",
        "completed": false,
        "createdAt": bson::DateTime::from_millis(1_700_000_000_000),
        "topic": topic,
        "time": bson::DateTime::from_millis(time_ms),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_old_services_documents_are_served_and_ours_read_back_in_its_shape() {
    let database = format!("e2e_{}", Uuid::new_v4().simple());
    let Some(uri) = testdb::mongo_uri("the old service's documents", &database) else {
        return;
    };
    // Written by the Go service before the switch: one created event, two published ones
    // (stored out of order).
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let events = client.default_database().unwrap().collection("events");
    let created = Uuid::new_v4();
    let (older, newer) = (Uuid::new_v4(), Uuid::new_v4());
    events
        .insert_many([
            go_document(created, "gopher", "", "created in Go", GO_ZERO_TIME_MS),
            go_document(newer, "pub", "legacy", "second", 1_700_000_002_000),
            go_document(older, "pub", "legacy", "first", 1_700_000_001_000),
        ])
        .await
        .unwrap();
    let system = UpSystem::up_on(uri, &[], &[]).await;
    system.ready().await;

    // Listed, read, updated and deleted through the gateway.
    let listed: Value = get_json(system.url("/events?userId=gopher")).await;
    assert_eq!(listed[0]["id"], created.to_string(), "{listed}");
    assert!(listed[0].get("time").is_none() && listed[0].get("seq").is_none());
    let url = system.url(&format!("/events/{created}"));
    let found: Value = get_json(&url).await;
    assert_eq!(
        (&found["title"], &found["createdAt"]),
        (&json!("created in Go"), &json!("2023-11-14T22:13:20.000Z"))
    );
    let updated = http()
        .put(&url)
        .json(&json!({"userId": "gopher", "title": "changed here", "completed": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), StatusCode::OK);
    let updated: Value = get_json(&url).await;
    assert_eq!(
        (
            &updated["title"],
            &updated["completed"],
            &updated["createdAt"]
        ),
        (&json!("changed here"), &json!(true), &found["createdAt"])
    );

    // The published ones are the topic's history, in their old order, and new ones follow.
    let history: Value = get_json(system.url("/topic-events/legacy")).await;
    assert_eq!(seqs(&history), vec![1, 2]);
    assert_eq!(history[0]["id"], older.to_string());
    assert_eq!(publish(&system.url(""), "legacy", 1, 1, 0).await, 1);
    let (mut frames, _) = subscribe(system.url("/subscribe/legacy"), Some(1)).await;
    in_order(&read(&mut frames, 2).await, 2);

    // What this service writes, a plain client reads with the old field names.
    let ours: Value = http()
        .post(system.url("/events"))
        .json(&json!({"userId": "new", "title": "from Rust", "topic": "t"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored = events
        .find_one(doc! {"id": ours["id"].as_str().unwrap()})
        .await
        .unwrap()
        .expect("stored under the old field names");
    assert_eq!(stored.get_str("userId").unwrap(), "new");
    assert_eq!(stored.get_str("title").unwrap(), "from Rust");
    assert_eq!(stored.get_str("description").unwrap(), "");
    assert!(!stored.get_bool("completed").unwrap());
    assert_eq!(stored.get_str("topic").unwrap(), "t");
    assert!(stored.get_datetime("createdAt").is_ok());

    let deleted = http().delete(&url).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = http().get(&url).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert!(
        events
            .find_one(doc! {"id": created.to_string()})
            .await
            .unwrap()
            .is_none()
    );
}
