//! The whole system on MongoDB as a user runs it: `eventsys up` with `MONGO_URI`, two backends
//! and the gateway as real processes, over SecantusDB (a MongoDB wire-protocol server the tests
//! start; `EVENTSVC_TEST_MONGO_URI` points them at a real replica set instead). The REST contract
//! runs here through `gateway_contract`'s `mongo::` cases; this file has what MongoDB changes:
//! streams across backends, a backend's and the database's `kill -9`, retention, keys, token
//! mode and the old Go service's documents.

use std::{collections::HashSet, time::Duration};

use mongodb::bson::{self, Document, doc, oid::ObjectId};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use testdb::MongoServer;
use uuid::Uuid;

use crate::{
    idempotency::{answer, post},
    lists::{history_becomes, publish_n, seqs},
    pubsub::{in_order, publish, read, subscribe},
    support::{Front, Launcher, Local, TokenMode, http, readyz_becomes, until_answered},
    token::mint,
    writes::{Answered, MixedLoad},
};

/// `eventsys up` with two backends on one MongoDB database, the gateway holding both.
pub(crate) struct MongoSystem {
    pub(crate) launcher: Launcher,
    /// The database's URI, for a plain MongoDB client.
    uri: String,
    _dir: tempfile::TempDir,
}

impl MongoSystem {
    /// On a fresh database of the shared server; `None` after saying SKIPPED (naming `what`)
    /// when there is no MongoDB here. `env` reaches every child (`RETENTION_MAX_EVENTS`, …).
    pub(crate) async fn up(what: &str, env: &[(&str, &str)]) -> Option<MongoSystem> {
        let database = format!("e2e_{}", Uuid::new_v4().simple());
        let uri = testdb::mongo_uri(what, &database)?;
        Some(MongoSystem::up_on(uri, &[], env).await)
    }

    /// On the database `uri` names, with `flags` for `eventsys up`.
    pub(crate) async fn up_on(uri: String, flags: &[&str], env: &[(&str, &str)]) -> MongoSystem {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut all = vec![("MONGO_URI", uri.as_str())];
        all.extend_from_slice(env);
        let launcher = Launcher::start_backends(dir.path(), 2, flags, &all).await;
        MongoSystem {
            launcher,
            uri,
            _dir: dir,
        }
    }

    /// Waits until the gateway holds both backends (`/readyz` counts them).
    async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let response = http().get(self.url("/readyz")).send().await.unwrap();
            let body: Value = response.json().await.unwrap_or_default();
            if body["backends"]["healthy"] == 2 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not both backends: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `events` collection, through a plain MongoDB client.
    async fn events(&self) -> mongodb::Collection<Document> {
        let client = mongodb::Client::with_uri_str(&self.uri).await.unwrap();
        client
            .default_database()
            .expect("the URI names the database")
            .collection("events")
    }

    fn kill_backend(&self, addr: &str) {
        let pid = self.launcher.backend_pid(addr);
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    }
}

impl Front for MongoSystem {
    fn url(&self, path: &str) -> String {
        self.launcher.url(path)
    }

    fn backends(&self) -> usize {
        self.launcher.backends.len()
    }
}

/// Every id stored for user `kill-writes`, read back with a plain client.
async fn stored_ids(system: &MongoSystem) -> Vec<String> {
    use futures::TryStreamExt;
    let found: Vec<Document> = system
        .events()
        .await
        .find(doc! {"userId": "kill-writes"})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    found
        .iter()
        .map(|d| d.get_str("id").unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_on_both_backends_get_every_event_once_in_order() {
    let Some(system) = MongoSystem::up("pub/sub across backends on MongoDB", &[]).await else {
        return;
    };
    system.ready().await;
    // A gateway pinned to each backend, so each subscriber is fed by another one.
    let mut streams = Vec::new();
    let mut pinned = Vec::new();
    for backend in &system.launcher.backends {
        let gateway = Local::gateway(&[*backend], &[]).await;
        crate::support::wait_healthy(gateway.addr, None, 1).await;
        let (frames, served) =
            subscribe(format!("http://{}/subscribe/fanout", gateway.addr), None).await;
        streams.push((frames, served));
        pinned.push(gateway);
    }
    let served: HashSet<_> = streams.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(served.len(), 2, "one subscriber per backend: {served:?}");
    // And one through the balanced gateway.
    streams.push(subscribe(system.url("/subscribe/fanout"), None).await);

    assert_eq!(publish(&system.url(""), "fanout", 300, 6, 16).await, 300);
    for (mut frames, backend) in streams {
        in_order(&read(&mut frames, 300).await, 1);
        println!("subscriber on {backend}: 300 events in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lists_are_in_creation_order_whichever_backend_created() {
    let Some(system) = MongoSystem::up("list order across backends on MongoDB", &[]).await else {
        return;
    };
    system.ready().await;
    let mut created = Vec::new();
    let mut backends = HashSet::new();
    for i in 0..30 {
        let response = http()
            .post(system.url("/events"))
            .json(&json!({"userId": "lister", "title": format!("{i}")}))
            .send()
            .await
            .unwrap();
        backends.insert(crate::support::served_by(&response));
        let event: Value = response.json().await.unwrap();
        created.push(event["id"].clone());
    }
    assert_eq!(backends.len(), 2, "both backends created some");
    let listed: Value = http()
        .get(system.url("/events?userId=lister"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(listed, created, "oldest first, as created");
}

/// Mixed creates and publishes while the backend feeding a subscriber is killed with `kill -9`
/// (the launcher restarts it): none fails, each acknowledged write is stored once (a plain
/// client counts), the subscriber gets every publish once in order, and another resumes with
/// `Last-Event-ID` from before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_kill_9_under_load_fails_nothing_and_loses_nothing() {
    let Some(system) = MongoSystem::up("a backend's kill -9 on MongoDB", &[]).await else {
        return;
    };
    system.ready().await;
    let topic = "kill.writes";
    let (mut frames, feeding) = subscribe(system.url(&format!("/subscribe/{topic}")), None).await;
    let load = MixedLoad::start(&system.url(""), topic);
    until_answered("writes before the kill", 100, || load.answered()).await;
    system.kill_backend(&feeding);
    let at_kill = load.answered();
    until_answered("writes after the kill", at_kill + 300, || load.answered()).await;
    let Answered {
        created,
        published,
        failed,
    } = load.stop().await;
    assert!(
        failed.is_empty(),
        "{} of {} writes failed: {:?}",
        failed.len(),
        created.len() + failed.len(),
        &failed[..failed.len().min(5)]
    );
    let stored = stored_ids(&system).await;
    let unique: HashSet<_> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "an event stored twice");
    assert_eq!(
        unique,
        created.iter().collect::<HashSet<_>>(),
        "stored and acknowledged differ"
    );
    let n = published.len();
    assert_eq!(published, (1..=n as u64).collect::<Vec<_>>());
    assert_eq!(read(&mut frames, n).await, published, "delivered once each");
    // A client that lost its stream before the kill resumes after the last event it saw.
    let from = n as u64 / 3;
    let (mut resumed, _) = subscribe(system.url(&format!("/subscribe/{topic}")), Some(from)).await;
    in_order(&read(&mut resumed, n - from as usize).await, from + 1);
    println!(
        "MongoDB, kill -9 of a backend under writes: {} acknowledged, 0 failed, each stored \
         once; {n} publishes delivered once, in order",
        created.len()
    );
}

/// The database itself killed with `kill -9` under writes, then started again on its data:
/// meanwhile every answer is a quick 503 with the contract's body and `/readyz` says why; then
/// writes succeed again without restarting anything, and the subscriber resumes from its last
/// `seq` with nothing missed or repeated, nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_killed_under_load_gives_503s_and_everything_recovers() {
    let Some(mut server) = MongoServer::start("the database's kill -9 under load") else {
        return;
    };
    let system = MongoSystem::up_on(server.uri("outage"), &[], &[]).await;
    system.ready().await;
    let topic = "outage";
    let (mut frames, _) = subscribe(system.url(&format!("/subscribe/{topic}")), None).await;
    let load = MixedLoad::start(&system.url(""), topic);
    until_answered("writes before the outage", 100, || load.answered()).await;

    server.kill();
    let (_, not_ready) = readyz_becomes(
        &system.url(""),
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(10),
    )
    .await;
    let why = not_ready["message"].as_str().unwrap();
    assert!(why.contains("2 NOT_SERVING"), "{not_ready}");
    assert!(why.contains("store does not answer"), "{not_ready}");
    // A write now: a 503 with the contract's body, well inside the 10 s request deadline.
    let started = std::time::Instant::now();
    let refused = http()
        .post(system.url("/publish"))
        .json(&json!({"topic": topic, "title": "while down"}))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "UNAVAILABLE", "{body}");
    assert_eq!(body["error"], body["message"], "{body}");
    assert!(took < Duration::from_secs(5), "503 after {took:?}");
    println!("MongoDB down: /readyz 503 ({why}); a write 503 after {took:?}");

    server.restart();
    readyz_becomes(&system.url(""), StatusCode::OK, Duration::from_secs(30)).await;
    let at_return = load.answered();
    until_answered(
        "writes after the database returned",
        at_return + 100,
        || load.answered(),
    )
    .await;
    let Answered {
        created,
        published,
        failed,
    } = load.stop().await;
    // What failed failed as the contract says: 503 (a write cut off mid-commit may also have
    // been stored, and is then delivered; it was never acknowledged).
    for failure in &failed {
        assert!(failure.contains(" 503 "), "{failure}");
    }
    let stored: HashSet<_> = stored_ids(&system).await.into_iter().collect();
    for id in &created {
        assert!(stored.contains(id), "acknowledged {id} lost");
    }
    // The subscriber: 1..=newest, each once, in order, every acknowledged publish among them.
    let newest = history_newest(&system, topic).await;
    let delivered = read(&mut frames, newest as usize).await;
    in_order(&delivered, 1);
    for seq in &published {
        assert!(
            delivered.contains(seq),
            "acknowledged seq {seq} not delivered"
        );
    }
    println!(
        "MongoDB kill -9 under load: {} acknowledged before and after, {} refused with 503 \
         while down, none lost; the subscriber got 1..={newest} once each",
        created.len(),
        failed.len()
    );
}

/// The newest `seq` of `topic`'s history.
async fn history_newest(system: &MongoSystem, topic: &str) -> u64 {
    let mut after = 0;
    loop {
        let page: Value = http()
            .get(system.url(&format!(
                "/topic-events/{topic}?afterSeq={after}&limit=1000"
            )))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match seqs(&page).last() {
            Some(last) => after = *last,
            None => return after,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_keeps_the_newest_and_tells_readers_of_the_gap() {
    let env = [("RETENTION_MAX_EVENTS", "10")];
    let Some(system) = MongoSystem::up("retention on MongoDB", &env).await else {
        return;
    };
    system.ready().await;
    let base = system.url("");
    publish_n(&base, "kept", 25).await;
    let expected: Vec<u64> = (16..=25).collect();
    assert_eq!(
        history_becomes(&base, "kept", &expected).await.as_deref(),
        Some("16")
    );
    let (mut frames, _) = subscribe(system.url("/subscribe/kept"), Some(3)).await;
    let gap = read_frame(&mut frames).await;
    assert_eq!(gap.event, "gap");
    let gap: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(gap, json!({"requestedAfter": 3, "oldestAvailable": 16}));
    in_order(&read(&mut frames, 10).await, 16);
    publish_n(&base, "kept", 1).await;
    assert_eq!(read(&mut frames, 1).await, vec![26]);
}

async fn read_frame(frames: &mut crate::pubsub::Frames) -> eventsource_stream::Event {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(10), frames.next())
        .await
        .expect("a frame")
        .expect("stream open")
        .expect("valid SSE")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_answer_once_across_backends() {
    let Some(system) = MongoSystem::up("idempotency keys on MongoDB", &[]).await else {
        return;
    };
    system.ready().await;
    let base = system.url("");
    let body = json!({"userId": "ann", "title": "pay", "data": {"amount": 5}});
    let (status, again, first) = answer(post(&base, "/events", Some("k-1"), &body).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, false));
    // Repeats (balanced over both backends): the first answer, marked.
    for _ in 0..4 {
        let (status, again, repeat) =
            answer(post(&base, "/events", Some("k-1"), &body).await).await;
        assert_eq!(
            (status, again, &repeat),
            (StatusCode::CREATED, true, &first)
        );
    }
    let other = json!({"userId": "ann", "title": "pay twice"});
    let (status, _, refused) = answer(post(&base, "/events", Some("k-1"), &other).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused["code"], "FAILED_PRECONDITION");
    // Another user's key of the same name and body is theirs.
    let bobs = json!({"userId": "bob", "title": "pay", "data": {"amount": 5}});
    let (status, again, bob) = answer(post(&base, "/events", Some("k-1"), &bobs).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, false));
    assert_ne!(bob["id"], first["id"]);
    // A publish: one event, one seq, however often it is repeated.
    let paid = json!({"topic": "pay", "userId": "ann", "title": "pay"});
    let (status, _, published) = answer(post(&base, "/publish", Some("p-1"), &paid).await).await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..3 {
        let (_, again, repeat) = answer(post(&base, "/publish", Some("p-1"), &paid).await).await;
        assert!(again);
        assert_eq!(repeat, published);
    }
    let history: Value = http()
        .get(system.url("/topic-events/pay"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&history), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_mode_on_mongodb_scopes_events_to_the_tokens_subject() {
    let database = format!("e2e_{}", Uuid::new_v4().simple());
    let Some(uri) = testdb::mongo_uri("token mode on MongoDB", &database) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenMode::new(dir.path());
    let system = MongoSystem::up_on(uri, &tokens.flags(), &[]).await;
    let alice = mint(&tokens.secret, &["--sub", "alice"]);
    let bob = mint(&tokens.secret, &["--sub", "bob"]);
    readyz_becomes(&system.url(""), StatusCode::OK, Duration::from_secs(30)).await;
    let refused = http().get(system.url("/events")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let as_mallory = http()
        .post(system.url("/events"))
        .bearer_auth(&alice)
        .json(&json!({"userId": "mallory", "title": "not mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(as_mallory.status(), StatusCode::FORBIDDEN);
    let created = http()
        .post(system.url("/events"))
        .bearer_auth(&alice)
        .json(&json!({"title": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["userId"], "alice", "the token's subject");
    let id = created["id"].as_str().unwrap();
    let as_bob = http()
        .get(system.url(&format!("/events/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(as_bob.status(), StatusCode::NOT_FOUND);
    let as_alice = http()
        .get(system.url(&format!("/events/{id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(as_alice.status(), StatusCode::OK);
}

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
    let system = MongoSystem::up_on(uri, &[], &[]).await;
    system.ready().await;

    // Listed, read, updated and deleted through the gateway.
    let listed: Value = http()
        .get(system.url("/events?userId=gopher"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], created.to_string(), "{listed}");
    assert!(listed[0].get("time").is_none() && listed[0].get("seq").is_none());
    let url = system.url(&format!("/events/{created}"));
    let found: Value = http().get(&url).send().await.unwrap().json().await.unwrap();
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
    let updated: Value = http().get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (
            &updated["title"],
            &updated["completed"],
            &updated["createdAt"]
        ),
        (&json!("changed here"), &json!(true), &found["createdAt"])
    );

    // The published ones are the topic's history, in their old order, and new ones follow.
    let history: Value = http()
        .get(system.url("/topic-events/legacy"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
