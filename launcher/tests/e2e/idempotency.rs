//! The client's `Idempotency-Key` on creates and publishes, through the gateway (REST and gRPC):
//! a repeat gets the first answer back marked `Idempotent-Replayed: true`, the same key with
//! another body is 422, a repeat while the first is in flight is 409, keys belong to their
//! caller, and they outlive every process (they live in the store).

use std::sync::Arc;

use eventsvc::store::{
    self, Claim, Event, EventChange, EventPage, EventPatch, EventStore, Followed, KeyClaim,
    NewEvent, Precondition, Retention, SqliteStore,
};
use eventsys::v1;
use futures::stream::BoxStream;
use nix::sys::signal::Signal;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};
use uuid::Uuid;

use crate::{
    support::{EXCLUSIVE, Launch, Local, System, TokenMode, http, series_value, wait_healthy},
    token::mint,
};

pub(crate) async fn post(base: &str, path: &str, key: Option<&str>, body: &Value) -> Response {
    let mut request = http().post(format!("{base}{path}")).json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

fn replayed(response: &Response) -> bool {
    match response.headers().get("idempotent-replayed") {
        None => false,
        Some(value) => {
            assert_eq!(value, "true");
            true
        }
    }
}

/// Status, whether replayed, and the body.
pub(crate) async fn answer(response: Response) -> (StatusCode, bool, Value) {
    let status = response.status();
    let again = replayed(&response);
    (status, again, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_replays_its_first_answer_refuses_another_body_and_outlives_restarts() {
    if !testdb::needs(
        "a_key_replays_its_first_answer_refuses_another_body_and_outlives_restarts",
        &[testdb::Tool::Grpcurl],
    ) {
        return;
    }
    let _exclusive = EXCLUSIVE.lock().await;
    let mut system = System::launch(2).await;
    let base = system.gateway.url();
    let body = json!({"userId": "ann", "title": "pay", "data": {"amount": 5, "currency": "EUR"}});

    let (status, again, first) = answer(post(&base, "/events", Some("k-1"), &body).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, false));
    // The same request again: the same answer, marked, though the event changed meanwhile.
    let id = first["id"].as_str().unwrap();
    let updated = http()
        .put(format!("{base}/events/{id}"))
        .json(&json!({"userId": "ann", "title": "changed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), StatusCode::OK);
    // `data` with its keys in another order is the same body.
    let same = json!({"data": {"currency": "EUR", "amount": 5}, "title": "pay", "userId": "ann"});
    let (status, again, repeat) = answer(post(&base, "/events", Some("k-1"), &same).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, true));
    assert_eq!(repeat, first, "the first answer, as it was given");

    // Another body (or the other write) under the key: 422 with the contract's body.
    let other = json!({"userId": "ann", "title": "pay twice"});
    let (status, again, refused) = answer(post(&base, "/events", Some("k-1"), &other).await).await;
    assert_eq!((status, again), (StatusCode::UNPROCESSABLE_ENTITY, false));
    assert_eq!(refused["code"], "FAILED_PRECONDITION");
    assert_eq!(refused["error"], refused["message"]);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("different body")
    );
    let as_publish = json!({"topic": "pay", "userId": "ann", "title": "pay"});
    let response = post(&base, "/publish", Some("k-1"), &as_publish).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Another user's key of the same value is theirs: a new event.
    let bobs = json!({"userId": "bob", "title": "pay", "data": {"amount": 5, "currency": "EUR"}});
    let (status, again, bob) = answer(post(&base, "/events", Some("k-1"), &bobs).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, false));
    assert_ne!(bob["id"], first["id"]);

    // A publish: one event, one seq, however often it is repeated.
    let (status, again, published) =
        answer(post(&base, "/publish", Some("p-1"), &as_publish).await).await;
    assert_eq!((status, again), (StatusCode::OK, false));
    for _ in 0..3 {
        let (status, again, repeat) =
            answer(post(&base, "/publish", Some("p-1"), &as_publish).await).await;
        assert_eq!((status, again), (StatusCode::OK, true));
        assert_eq!(repeat, published);
    }
    let history: Vec<Value> = http()
        .get(format!("{base}/topic-events/pay"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "{history:?}");

    // Malformed keys are 400, nothing stored.
    for key in ["", "with space", &"x".repeat(256)] {
        let response = post(&base, "/events", Some(key), &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{key:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], "INVALID_ARGUMENT");
    }

    // Every process restarted over the same store: the key still answers.
    system.gateway.signal(Signal::SIGKILL);
    for backend in &system.backends {
        backend.signal(Signal::SIGKILL);
    }
    let backend = Launch::backend(&system.db).start().await;
    let gateway = Launch::gateway(&[backend.addr]).start().await;
    wait_healthy(gateway.addr, None, 1).await;
    let base = gateway.url();
    let (status, again, after) = answer(post(&base, "/events", Some("k-1"), &body).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, true));
    assert_eq!(after, first);
    system.backends.clear();

    // gRPC through the front door: the key in metadata, the mark in the reply's metadata.
    let mut client = gateway.client().await;
    let create = || {
        let mut request = Request::new(v1::CreateEventRequest {
            user_id: "ann".into(),
            title: "over gRPC".into(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("idempotency-key", "g-1".parse().unwrap());
        request
    };
    let first = client.create_event(create()).await.unwrap();
    assert!(first.metadata().get("idempotent-replayed").is_none());
    let repeat = client.create_event(create()).await.unwrap();
    assert_eq!(
        repeat.metadata().get("idempotent-replayed").unwrap(),
        "true"
    );
    assert_eq!(repeat.get_ref(), first.get_ref());
    let mut other = create();
    other.get_mut().title = "another".into();
    let refused = client.create_event(other).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("different body"));

    // grpcurl straight to a backend: the same metadata, the same marking.
    let addr = backend.addr.to_string();
    let publish = |verbose: bool| {
        let mut args = vec!["-plaintext", "-H", "idempotency-key: d-1"];
        if verbose {
            args.push("-v");
        }
        let body = r#"{"topic": "direct", "userId": "ann", "title": "t"}"#;
        args.extend(["-d", body, &addr, "events.v1.EventService/Publish"]);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = crate::support::grpcurl(&args).await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let first: Value = serde_json::from_str(&publish(false).await).unwrap();
    let again = publish(true).await;
    assert!(again.contains("idempotent-replayed: true"), "{again}");
    assert!(again.contains(first["id"].as_str().unwrap()), "{again}");
}

/// A store whose keyed publishes wait at a gate once their key is claimed: the first request
/// stays in flight for as long as the test keeps the gate shut.
struct Gated {
    store: Arc<dyn EventStore>,
    /// Set when a keyed publish reaches the gate.
    entered: watch::Sender<bool>,
    open: CancellationToken,
}

#[async_trait::async_trait]
impl EventStore for Gated {
    async fn publish(&self, event: NewEvent) -> store::Result<Event> {
        if event.key.is_some() {
            self.entered.send_replace(true);
            self.open.cancelled().await;
        }
        self.store.publish(event).await
    }

    async fn create(&self, event: NewEvent) -> store::Result<Event> {
        self.store.create(event).await
    }

    async fn get(&self, id: Uuid, owner: Option<String>) -> store::Result<Event> {
        self.store.get(id, owner).await
    }

    async fn list(
        &self,
        owner: Option<String>,
        limit: usize,
        cursor: Option<String>,
    ) -> store::Result<EventPage> {
        self.store.list(owner, limit, cursor).await
    }

    async fn update(
        &self,
        id: Uuid,
        owner: Option<String>,
        patch: EventPatch,
        when: Precondition,
    ) -> store::Result<Event> {
        self.store.update(id, owner, patch, when).await
    }

    async fn delete(
        &self,
        id: Uuid,
        owner: Option<String>,
        when: Precondition,
    ) -> store::Result<()> {
        self.store.delete(id, owner, when).await
    }

    async fn events_after(
        &self,
        topic: &str,
        after_seq: u64,
        limit: usize,
    ) -> store::Result<Vec<Event>> {
        self.store.events_after(topic, after_seq, limit).await
    }

    async fn changes_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> store::Result<Vec<EventChange>> {
        self.store.changes_after(user, after, limit).await
    }

    async fn changes_dropped_through(&self, user: &str) -> store::Result<u64> {
        self.store.changes_dropped_through(user).await
    }

    async fn follow(&self) -> store::Result<BoxStream<'static, store::Result<Followed>>> {
        self.store.follow().await
    }

    async fn compact(&self, retention: Retention, batch: usize) -> store::Result<usize> {
        self.store.compact(retention, batch).await
    }

    async fn dropped_through(&self, topic: &str) -> store::Result<u64> {
        self.store.dropped_through(topic).await
    }

    async fn topics(
        &self,
        patterns: &eventsys::topics::Patterns,
        limit: usize,
    ) -> store::Result<Vec<store::TopicHead>> {
        self.store.topics(patterns, limit).await
    }

    async fn report_presence(
        &self,
        report: store::presence::PresenceReport,
    ) -> store::Result<store::presence::Reported> {
        self.store.report_presence(report).await
    }

    async fn expire_presence(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        batch: usize,
    ) -> store::Result<Vec<store::Event>> {
        self.store.expire_presence(cutoff, batch).await
    }

    async fn presence(
        &self,
        topic: &str,
        alive_since: chrono::DateTime<chrono::Utc>,
        subjects: bool,
    ) -> store::Result<store::presence::Presence> {
        self.store.presence(topic, alive_since, subjects).await
    }

    async fn claim(&self, claim: &KeyClaim, id: Uuid) -> store::Result<Claim> {
        self.store.claim(claim, id).await
    }

    async fn purge_keys(&self, batch: usize) -> store::Result<usize> {
        self.store.purge_keys(batch).await
    }

    async fn ping(&self) -> store::Result<()> {
        self.store.ping().await
    }
}

/// A request whose key is held by another still in flight is 409 with `Retry-After`; once the
/// first is answered, a repeat replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeat_while_the_first_is_in_flight_is_409() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    let gated = Arc::new(Gated {
        store: Arc::new(sqlite),
        entered: watch::Sender::new(false),
        open: CancellationToken::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = Local::serve_backend(listener, eventsvc::Backend::new(gated.clone())).await;
    let gateway = Local::gateway(&[backend.addr], &[]).await;
    wait_healthy(gateway.addr, None, 1).await;
    let base = gateway.url();
    let body = json!({"topic": "once", "userId": "ann", "title": "t"});

    let first = tokio::spawn({
        let (base, body) = (base.clone(), body.clone());
        async move { post(&base, "/publish", Some("same"), &body).await }
    });
    gated
        .entered
        .subscribe()
        .wait_for(|entered| *entered)
        .await
        .unwrap();
    let refused = post(&base, "/publish", Some("same"), &body).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["code"], "ABORTED");
    assert!(error["error"].as_str().unwrap().contains("in progress"));
    gated.open.cancel();
    let answered = first.await.unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    let answered: Value = answered.json().await.unwrap();
    let (status, again, repeat) = answer(post(&base, "/publish", Some("same"), &body).await).await;
    assert_eq!((status, again), (StatusCode::OK, true));
    assert_eq!(repeat, answered);

    // The backend counts the replay, and the refusal under its code.
    let metrics = backend.metrics().await;
    assert_eq!(
        series_value(&metrics, "eventsvc_idempotent_replays_total"),
        1
    );
    let refused = r#"eventsvc_rpcs_total{code="Aborted",method="Publish"}"#;
    assert_eq!(series_value(&metrics, refused), 1, "{metrics}");
}

/// In token mode a key belongs to the token's subject: another caller's identical key and body
/// is another request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_token_mode_keys_belong_to_the_tokens_subject() {
    let dir = tempfile::tempdir().unwrap();
    let mode = TokenMode::new(dir.path());
    let alice = mint(&mode.secret, &["--sub", "alice", "--publish", "*"]);
    let bob = mint(&mode.secret, &["--sub", "bob", "--publish", "*"]);
    let admin = mint(&mode.secret, &["--sub", "ops", "--admin"]);
    let system = System::start_with(1, &mode.flags(), Some(admin), dir).await;
    let body = json!({"topic": "shared", "title": "t"});
    let send = |token: &str| {
        http()
            .post(system.url("/publish"))
            .bearer_auth(token)
            .header("idempotency-key", "k")
            .json(&body)
            .send()
    };
    let (_, again, alices) = answer(send(&alice).await.unwrap()).await;
    assert!(!again);
    let (status, again, bobs) = answer(send(&bob).await.unwrap()).await;
    assert_eq!((status, again), (StatusCode::OK, false));
    assert_ne!(alices["seq"], bobs["seq"]);
    let (_, again, alices_again) = answer(send(&alice).await.unwrap()).await;
    assert!(again);
    assert_eq!(alices_again, alices);
}
