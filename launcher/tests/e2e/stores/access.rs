//! Idempotency keys and token mode on a database server, across both backends.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    idempotency::{answer, post},
    lists::seqs,
    support::{Engine, Front, TokenMode, UpSystem, get_json, http, readyz_becomes},
    token::mint,
};

pub(super) async fn idempotency_keys_answer_once_across_backends(engine: Engine) {
    let Some(system) = UpSystem::up(engine, "idempotency keys", &[]).await else {
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
    let history: Value = get_json(system.url("/topic-events/pay")).await;
    assert_eq!(seqs(&history), vec![1]);
}

pub(super) async fn token_mode_scopes_events_to_the_tokens_subject(engine: Engine) {
    let Some(uri) = engine.database("token mode") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenMode::new(dir.path());
    let system = UpSystem::up_on(uri, &tokens.flags(), &[]).await;
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
