//! Token mode end to end: three backends and a gateway started with `--auth jwt` and a secret
//! file, tokens minted by `eventsys token`, real HTTP, SSE and grpcurl clients. Every process's
//! log is checked for the tokens afterwards.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{EVENTSYS, Process, System, grpcurl, http};

const SECRET: &str = "a test secret that is long enough for HS256";

struct Tokens {
    alice: String,
    bob: String,
    admin: String,
}

/// `eventsys token` with the test secret.
pub(crate) fn mint(secret_file: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(EVENTSYS)
        .arg("token")
        .arg("--jwt-secret-file")
        .arg(secret_file)
        .args(args)
        .env_remove("JWT_SECRET")
        .output()
        .expect("eventsys token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Token mode's system, as processes: what each logs is part of what is checked.
async fn system() -> (System<Process>, Tokens) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let tokens = Tokens {
        alice: mint(
            &secret,
            &[
                "--sub",
                "alice",
                "--publish",
                "orders.*",
                "--subscribe",
                "orders.*",
            ],
        ),
        bob: mint(&secret, &["--sub", "bob", "--subscribe", "orders.eu"]),
        admin: mint(&secret, &["--sub", "ops", "--admin", "--subscribe", "*"]),
    };
    let secret = secret.display().to_string();
    let flags = [
        "--auth",
        "jwt",
        "--jwt-secret-file",
        &secret,
        "--public-topics",
        "news.*",
        // Every request logged, so that the check that no token is logged has lines to read.
        "--access-log",
        // grpcurl finds the API by reflection (off by default in token mode).
        "--reflection",
        "on",
    ];
    let system = System::launch_with(3, &flags, Some(tokens.admin.clone()), dir).await;
    (system, tokens)
}

/// Asserts a 401 with the Bearer challenge and the contract's error body.
async fn assert_401(response: reqwest::Response, invalid: bool) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with(r#"Bearer realm="events""#),
        "{challenge}"
    );
    assert_eq!(
        challenge.contains(r#"error="invalid_token""#),
        invalid,
        "{challenge}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "UNAUTHENTICATED", "{body}");
}

async fn assert_403(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "PERMISSION_DENIED", "{body}");
}

/// No process of the system logged any of the tokens.
fn assert_no_token_logged(system: &System<Process>, tokens: &Tokens) {
    let logs = std::iter::once(&system.gateway)
        .chain(&system.backends)
        .map(|p| p.logs())
        .collect::<String>();
    assert!(!logs.is_empty());
    for token in [&tokens.alice, &tokens.bob, &tokens.admin] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token reached a log line");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_user_sees_and_changes_only_their_own_events() {
    let (system, tokens) = system().await;
    let client = http();
    let url = |p: &str| system.url(p);

    let created: Value = client
        .post(url("/events"))
        .bearer_auth(&tokens.alice)
        .body(json!({"title": "mine"}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        created["userId"], "alice",
        "an absent userId means the caller"
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let event = url(&format!("/events/{id}"));

    // Bob: not found, for reads, updates and deletes alike.
    let bob = |r: reqwest::RequestBuilder| r.bearer_auth(&tokens.bob).send();
    assert_eq!(bob(client.get(&event)).await.unwrap().status(), 404);
    let update = json!({"title": "theirs", "description": "", "completed": true}).to_string();
    assert_eq!(
        bob(client.put(&event).body(update.clone()))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(bob(client.delete(&event)).await.unwrap().status(), 404);
    let listed: Value = bob(client.get(url("/events")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([]));
    // Naming another user is refused, in the query and in a body.
    assert_403(bob(client.get(url("/events?userId=alice"))).await.unwrap()).await;
    assert_403(
        bob(client.get(format!("{event}?userId=alice")))
            .await
            .unwrap(),
    )
    .await;
    let as_alice = json!({"userId": "alice", "title": "forged"}).to_string();
    assert_403(
        bob(client.post(url("/events")).body(as_alice))
            .await
            .unwrap(),
    )
    .await;

    // Alice: her list, her event, her update and delete.
    let alice = |r: reqwest::RequestBuilder| r.bearer_auth(&tokens.alice).send();
    let listed: Value = alice(client.get(url("/events")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([created]));
    assert_eq!(
        alice(client.put(&event).body(update))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(alice(client.delete(&event)).await.unwrap().status(), 204);

    // No token, a bad one, garbage: 401.
    assert_401(client.get(url("/events")).send().await.unwrap(), false).await;
    let forged = format!("{}x", tokens.alice);
    assert_401(
        client
            .get(url("/events"))
            .bearer_auth(&forged)
            .send()
            .await
            .unwrap(),
        true,
    )
    .await;
    assert_401(
        client
            .get(url("/events"))
            .bearer_auth("garbage")
            .send()
            .await
            .unwrap(),
        true,
    )
    .await;
    assert_no_token_logged(&system, &tokens);
}

/// A change feed is its token subject's: another user's changes never reach it, naming
/// another user is 403, and a browser's `?access_token=` opens it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_user_watches_only_their_own_changes() {
    let (system, tokens) = system().await;
    let client = http();
    let url = |p: &str| system.url(p);
    let watch = |query: &str, token: &str| {
        let request = reqwest::Client::new()
            .get(url(&format!("/changes{query}")))
            .bearer_auth(token);
        async move { request.send().await.unwrap() }
    };
    let alice_watching = watch("", &tokens.alice).await;
    assert_eq!(alice_watching.status(), StatusCode::OK);
    let mut alice_frames = alice_watching.bytes_stream().eventsource();
    let by_query = reqwest::Client::new()
        .get(url(&format!("/changes?access_token={}", tokens.alice)))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), StatusCode::OK);
    assert_403(watch("?userId=bob", &tokens.alice).await).await;
    assert_403(
        client
            .get(url("/changes/history?userId=bob"))
            .bearer_auth(&tokens.alice)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_401(
        client
            .get(url("/changes?userId=alice"))
            .send()
            .await
            .unwrap(),
        false,
    )
    .await;

    // Bob writes first, then Alice: her watcher sees her change, and only hers.
    for (token, title) in [(&tokens.bob, "bob's"), (&tokens.alice, "alice's")] {
        let created = client
            .post(url("/events"))
            .bearer_auth(token)
            .json(&json!({"title": title}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let frame = tokio::time::timeout(Duration::from_secs(10), alice_frames.next())
        .await
        .expect("alice's change arrives")
        .unwrap()
        .unwrap();
    assert_eq!(frame.event, "created");
    let data: Value = serde_json::from_str(&frame.data).unwrap();
    assert_eq!(
        (&data["userId"], &data["title"]),
        (&json!("alice"), &json!("alice's"))
    );
    // Her history has her one change; Bob's has his.
    for (token, user) in [(&tokens.alice, "alice"), (&tokens.bob, "bob")] {
        let listed: Value = client
            .get(url("/changes/history"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let owners: Vec<&Value> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["event"]["userId"])
            .collect();
        assert_eq!(owners, [&json!(user)], "{listed}");
    }
    assert_no_token_logged(&system, &tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topics_follow_the_token_claims_and_public_topics_are_open() {
    let (system, tokens) = system().await;
    let client = http();
    let url = |p: &str| system.url(p);
    let publish = |token: &str, topic: &str| {
        client
            .post(url("/publish"))
            .bearer_auth(token)
            .body(json!({"topic": topic, "title": "t"}).to_string())
            .send()
    };
    assert_eq!(
        publish(&tokens.alice, "orders.eu").await.unwrap().status(),
        200
    );
    // Outside the claims: 403, and nothing stored.
    assert_403(publish(&tokens.bob, "orders.eu").await.unwrap()).await;
    assert_403(publish(&tokens.alice, "orders").await.unwrap()).await;
    let history = |token: &str, topic: &str| {
        client
            .get(url(&format!("/topic-events/{topic}")))
            .bearer_auth(token)
            .send()
    };
    let stored: Value = history(&tokens.admin, "orders.eu")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stored.as_array().unwrap().len(),
        1,
        "the refused publishes stored nothing"
    );
    let stored: Value = history(&tokens.admin, "orders")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored, json!([]));
    // Reading outside the claims: 403; a public topic without any token.
    assert_403(history(&tokens.bob, "orders.us").await.unwrap()).await;
    let sse = client
        .get(url("/subscribe/orders.us"))
        .bearer_auth(&tokens.bob)
        .send();
    assert_403(sse.await.unwrap()).await;
    let public = client
        .get(url("/topic-events/news.today"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200);
    assert_401(
        client
            .get(url("/topic-events/orders.eu"))
            .send()
            .await
            .unwrap(),
        false,
    )
    .await;

    // SSE, as EventSource sends it: the token in the query, or in the cookie.
    let first_frame = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut frames = response.bytes_stream().eventsource();
        let frame = tokio::time::timeout(Duration::from_secs(10), frames.next())
            .await
            .expect("a replayed event")
            .unwrap()
            .unwrap();
        serde_json::from_str::<Value>(&frame.data).unwrap()
    };
    let by_query = url(&format!("/subscribe/orders.eu?access_token={}", tokens.bob));
    assert_eq!(
        first_frame(client.get(by_query)).await["topic"],
        "orders.eu"
    );
    let by_cookie = client
        .get(url("/subscribe/orders.eu"))
        .header("cookie", format!("events_token={}", tokens.bob));
    assert_eq!(first_frame(by_cookie).await["topic"], "orders.eu");
    // Only there: on a plain GET the cookie is no token (another site's page would send it).
    let not_a_stream = client
        .get(url("/topic-events/orders.eu"))
        .header("cookie", format!("events_token={}", tokens.bob))
        .send()
        .await
        .unwrap();
    assert_401(not_a_stream, false).await;
    // A query token on a write is not a token.
    let write = url(&format!("/publish?access_token={}", tokens.alice));
    let response = client
        .post(write)
        .body(json!({"topic": "orders.eu"}).to_string())
        .send()
        .await
        .unwrap();
    assert_401(response, false).await;

    // Operations: admin only.
    assert_401(client.get(url("/metrics")).send().await.unwrap(), false).await;
    assert_403(
        client
            .get(url("/metrics"))
            .bearer_auth(&tokens.alice)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let load = client
        .get(url("/load"))
        .bearer_auth(&tokens.admin)
        .send()
        .await
        .unwrap();
    let load: Value = load.json().await.unwrap();
    let backends = load["backends"].as_array().unwrap();
    assert!(backends.iter().all(|b| b["healthy"] == true), "{load}");
    assert_no_token_logged(&system, &tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backends_apply_the_same_rules_to_grpc_callers() {
    if !testdb::needs(
        "backends_apply_the_same_rules_to_grpc_callers",
        &[testdb::Tool::Grpcurl],
    ) {
        return;
    }
    let (system, tokens) = system().await;
    let addr = system.backends[0].addr.to_string();
    let call = |token: Option<&str>, method: &str, body: Value| {
        let header = token.map(|t| format!("authorization: Bearer {t}"));
        let addr = addr.clone();
        let method = format!("events.v1.EventService/{method}");
        async move {
            let mut args = vec!["-plaintext".to_owned(), "-d".to_owned(), body.to_string()];
            if let Some(header) = header {
                args.extend(["-H".to_owned(), header]);
            }
            args.extend([addr, method]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = grpcurl(&args).await;
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        }
    };
    let (ok, out) = call(None, "ListEvents", json!({})).await;
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    let (ok, out) = call(
        Some(&tokens.alice),
        "CreateEvent",
        json!({"title": "via grpc"}),
    )
    .await;
    assert!(ok, "{out}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["userId"], "alice");
    let get = json!({"id": created["id"]});
    let (ok, out) = call(Some(&tokens.bob), "GetEvent", get.clone()).await;
    assert!(!ok && out.contains("NotFound"), "{out}");
    let (ok, out) = call(Some(&tokens.alice), "GetEvent", get).await;
    assert!(ok, "{out}");
    let (ok, out) = call(Some(&tokens.bob), "ListEvents", json!({"userId": "alice"})).await;
    assert!(!ok && out.contains("PermissionDenied"), "{out}");
    let (ok, out) = call(Some(&tokens.bob), "Publish", json!({"topic": "orders.eu"})).await;
    assert!(!ok && out.contains("PermissionDenied"), "{out}");
    // Everyone's events: an admin-only rpc.
    let (ok, out) = call(Some(&tokens.bob), "ListAllEvents", json!({})).await;
    assert!(!ok && out.contains("PermissionDenied"), "{out}");
    let (ok, out) = call(Some(&tokens.admin), "ListAllEvents", json!({})).await;
    assert!(ok, "{out}");
    let all: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(all["events"][0]["userId"], "alice", "{all}");
    let (ok, out) = call(Some("garbage"), "ListEvents", json!({})).await;
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    // A multi-topic Subscribe: every pattern within the rights, a wider one named.
    let wide = json!({"patterns": ["orders.eu", "orders.*"]});
    let (ok, out) = call(Some(&tokens.bob), "Subscribe", wide).await;
    assert!(
        !ok && out.contains("PermissionDenied") && out.contains("orders.*"),
        "{out}"
    );
    // Health stays open, for probes.
    let health = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]).await;
    assert!(health.status.success());
    assert_no_token_logged(&system, &tokens);
}

/// A multi-topic stream in token mode: every pattern must lie within the caller's subscribe
/// rights or the public topics; a wider one is 403, named, and no stream opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_pattern_of_a_stream_lies_within_the_rights() {
    let (system, tokens) = system().await;
    let open = |query: &str, token: Option<&str>| {
        let mut request = reqwest::Client::new().get(system.url(&format!("/subscribe?{query}")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap() }
    };
    let alice = Some(tokens.alice.as_str());
    let bob = Some(tokens.bob.as_str());
    // Within the rights (and the public `news.*`): the stream opens.
    for (query, token) in [
        ("topic=orders.eu.*&topic=orders.us", alice),
        ("topic=orders.*", alice),
        ("topic=orders.eu", bob),
        ("topic=orders.eu&topic=news.sport.*", bob),
        ("topic=news.*", None),
    ] {
        let response = open(query, token).await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
    }
    // Wider: 403 naming the pattern.
    for (query, token, named) in [
        ("topic=*", alice, "\"*\""),
        ("topic=orders.*&topic=alerts", alice, "\"alerts\""),
        ("topic=orders.*", bob, "\"orders.*\""),
        ("topic=orders.eu&topic=orders.eu.*", bob, "\"orders.eu.*\""),
        ("topic=news.*&topic=*", None, ""),
    ] {
        let response = open(query, token).await;
        if token.is_none() {
            // No token, a pattern beyond the public topics: 401.
            assert_401(response, false).await;
            continue;
        }
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "PERMISSION_DENIED", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(named), "{query}: {message}");
    }
    // An admin's `*` covers everything.
    let admin = open("topic=*", Some(&tokens.admin)).await;
    assert_eq!(admin.status(), StatusCode::OK);
    assert_no_token_logged(&system, &tokens);
}

#[test]
fn anonymous_mode_refuses_a_non_loopback_address() {
    for (subcommand, name) in [("backend", "eventsvc"), ("gateway", "gateway")] {
        let out = std::process::Command::new(EVENTSYS)
            .args([subcommand, "--host", "0.0.0.0", "--port", "0"])
            .env_remove("EVENTS_AUTH")
            .env_remove("EVENTS_ALLOW_ANONYMOUS")
            .env_remove("LISTEN_FDS")
            .env("STORE_URI", "sqlite:///nonexistent-dir/never-opened.db")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.trim().lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("{name}: refusing anonymous mode on 0.0.0.0:")),
            "{stderr}"
        );
    }
}

/// `--public-ops` opens the operational figures to anyone, not the names of private topics:
/// `/load` lists a topic only to whoever may read it (an admin, every one), as `/ui/stats`.
#[tokio::test]
async fn public_operations_name_only_the_topics_the_caller_may_read() {
    use crate::{
        pubsub::open,
        support::{Local, TokenMode, readyz_becomes},
    };
    let dir = tempfile::tempdir().unwrap();
    let token_mode = TokenMode::new(dir.path());
    let mut flags = token_mode.flags().to_vec();
    flags.extend(["--public-ops", "--public-topics", "news.*"]);
    let backend = Local::backend(&dir.path().join("events.db"), &flags).await;
    let gateway = Local::gateway(&[backend.addr], &flags).await;
    readyz_becomes(&gateway.url(), StatusCode::OK, Duration::from_secs(10)).await;
    let admin = mint(&token_mode.secret, &["--sub", "ops", "--admin"]);
    let alice = mint(
        &token_mode.secret,
        &["--sub", "alice", "--subscribe", "orders.*"],
    );
    let bob = mint(
        &token_mode.secret,
        &["--sub", "bob", "--subscribe", "other"],
    );
    let base = gateway.url();
    let _news = open(&format!("{base}/subscribe/news.today"), None).await;
    let _orders = open(
        &format!("{base}/subscribe/orders.eu?access_token={alice}"),
        None,
    )
    .await;

    let topics = |token: Option<String>| {
        let mut request = http().get(format!("{base}/load"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let load: Value = request.send().await.unwrap().json().await.unwrap();
            assert!(load["in_flight"].is_u64(), "{load}");
            let mut names: Vec<String> = load["topics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["topic"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(topics(None).await, ["news.today"], "anonymous");
    assert_eq!(topics(Some(bob)).await, ["news.today"], "bob");
    assert_eq!(
        topics(Some(alice)).await,
        ["news.today", "orders.eu"],
        "alice"
    );
    assert_eq!(
        topics(Some(admin)).await,
        ["news.today", "orders.eu"],
        "admin"
    );
}

/// In token mode each call carries a bearer token to a backend: the gateway warns at start when
/// that goes in plaintext to a backend off this machine, and not for loopback or TLS.
#[tokio::test]
async fn plaintext_tokens_to_backends_off_this_machine_are_warned_of() {
    use crate::support::{Launch, Server, TokenMode};
    const WARNING: &str = "token mode with plaintext backends off this machine";
    let dir = tempfile::tempdir().unwrap();
    let token_mode = TokenMode::new(dir.path());
    let gateway = |backends: &'static str| {
        let mut flags = token_mode.flags().to_vec();
        flags.extend(["--backends", backends]);
        Launch::server(Server::Gateway).flags(&flags).start()
    };
    // 192.0.2.0/24 is documentation space: nothing answers there.
    let remote = gateway("127.0.0.1:1,192.0.2.1:5000").await;
    remote.wait_for_log(WARNING).await;
    assert!(
        remote.logs().contains("192.0.2.1:5000"),
        "{}",
        remote.logs()
    );
    let local = gateway("127.0.0.1:1,localhost:2").await;
    local.wait_for_log("balancing over").await;
    assert!(!local.logs().contains(WARNING), "{}", local.logs());
}

/// A caller-chosen id on CreateEvent is scoped to its owner, on a backend and through the
/// gateway's front door alike: holding another user's id (the one chosen, or the one stored)
/// gets a create exactly what a free id gets, an event of one's own, so it tells nothing of
/// that event (whose reads are NOT_FOUND); the owner's repeat finds the owner's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chosen_id_tells_nothing_of_another_users_event() {
    let (system, tokens) = system().await;
    use crate::support::authorized;
    let with = |token: &str, title: &str, id: &str| {
        let create = eventsys::v1::CreateEventRequest {
            id: id.into(),
            title: title.into(),
            ..Default::default()
        };
        authorized(token, create)
    };
    let read = |token: &str, id: &str| {
        let get = eventsys::v1::GetEventRequest {
            id: id.into(),
            ..Default::default()
        };
        authorized(token, get)
    };
    for (place, mut client) in [
        ("a backend", system.backends[0].client().await),
        ("the front door", system.gateway.client().await),
    ] {
        let chosen = uuid::Uuid::now_v7().to_string();
        let alices = client
            .create_event(with(&tokens.alice, "alice's", &chosen))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(alices.user_id, "alice");
        let again = client
            .create_event(with(&tokens.alice, "alice's", &chosen))
            .await;
        assert_eq!(
            again.unwrap().into_inner().id,
            alices.id,
            "{place}: the repeat"
        );
        let changed = client
            .create_event(with(&tokens.alice, "other", &chosen))
            .await;
        assert_eq!(
            changed.unwrap_err().code(),
            tonic::Code::AlreadyExists,
            "{place}"
        );

        let free = uuid::Uuid::now_v7().to_string();
        for id in [&chosen, &alices.id, &free] {
            let bobs = client
                .create_event(with(&tokens.bob, "bob's", id))
                .await
                .unwrap_or_else(|status| panic!("{place}: bob with {id}: {status:?}"))
                .into_inner();
            assert_eq!(bobs.user_id, "bob", "{place}");
            assert_ne!(bobs.id, alices.id, "{place}");
            let his = client.get_event(read(&tokens.bob, &bobs.id)).await;
            assert_eq!(his.unwrap().into_inner().title, "bob's", "{place}");
        }
        let theirs = client.get_event(read(&tokens.bob, &alices.id)).await;
        assert_eq!(theirs.unwrap_err().code(), tonic::Code::NotFound, "{place}");
        let hers = client.get_event(read(&tokens.alice, &alices.id)).await;
        assert_eq!(hers.unwrap().into_inner().title, "alice's", "{place}");
    }
}

/// The front door passes most calls on without reading them, so the backends' own checks are
/// what stands: a gateway in token mode refuses a backend in anonymous mode (allowed on
/// loopback), which would answer ListAllEvents or a Publish as anyone to a caller with no
/// token. Backends say their mode on each health answer; a token-mode backend is let in.
#[tokio::test]
async fn a_token_mode_gateway_refuses_backends_in_anonymous_mode() {
    use eventsys::v1;

    use crate::support::{Launch, TokenMode};
    let dir = tempfile::tempdir().unwrap();
    let token_mode = TokenMode::new(dir.path());
    let db = dir.path().join("events.db");
    let anonymous = Launch::backend(&db).start().await;
    let gateway = Launch::gateway(&[anonymous.addr])
        .flags(&token_mode.flags())
        .start()
        .await;
    gateway
        .wait_for_log("backend in anonymous mode behind a gateway in token mode")
        .await;
    let mut front = gateway.client().await;
    // Even a call the front door's own rules let through (an admin's) finds no backend.
    let admin = mint(&token_mode.secret, &["--sub", "ops", "--admin"]);
    let all = v1::ListAllEventsRequest::default();
    let all = front
        .list_all_events(crate::support::authorized(&admin, all))
        .await;
    assert_eq!(
        all.unwrap_err().code(),
        tonic::Code::Unavailable,
        "listed through it"
    );
    let publish = v1::PublishRequest {
        topic: "orders".into(),
        user_id: "alice".into(),
        title: "as alice".into(),
        ..Default::default()
    };
    let published = front.publish(publish).await;
    assert!(published.is_err(), "published through it: {published:?}");

    let backend = Launch::backend(&db)
        .flags(&token_mode.flags())
        .start()
        .await;
    let gateway = Launch::gateway(&[backend.addr])
        .flags(&token_mode.flags())
        .start()
        .await;
    crate::support::wait_healthy(gateway.addr, Some(&admin), 1).await;
    let mut front = gateway.client().await;
    let refused = front
        .list_all_events(v1::ListAllEventsRequest::default())
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
}

/// Behind a backend that says token mode but checks nothing (a fake), the front door's own
/// rules hold: in token mode it reads each call it passes on and applies REST's rule first
/// (no token: 401 UNAUTHENTICATED; another user's events or every user's: 403).
#[tokio::test]
async fn the_front_door_applies_the_rules_itself_in_token_mode() {
    use eventsys::v1;

    use crate::support::{Launch, Relay, TokenMode};
    let dir = tempfile::tempdir().unwrap();
    let token_mode = TokenMode::new(dir.path());
    let anonymous = Launch::backend(&dir.path().join("events.db")).start().await;
    let lying = Relay::claiming_token_mode(anonymous.addr).await;
    let gateway = Launch::gateway(&[lying.addr])
        .flags(&token_mode.flags())
        .start()
        .await;
    let admin = mint(&token_mode.secret, &["--sub", "ops", "--admin"]);
    let bob = mint(&token_mode.secret, &["--sub", "bob", "--subscribe", "news"]);
    crate::support::wait_healthy(gateway.addr, Some(&admin), 1).await;
    let mut direct = anonymous.client().await;
    let alices = direct
        .create_event(v1::CreateEventRequest {
            user_id: "alice".into(),
            title: "alice's".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let mut front = gateway.client().await;
    fn code<T>(result: Result<T, tonic::Status>) -> tonic::Code {
        result.map(|_| ()).unwrap_err().code()
    }
    let all = front
        .list_all_events(v1::ListAllEventsRequest::default())
        .await;
    assert_eq!(code(all), tonic::Code::Unauthenticated, "no token");
    let all = front
        .list_all_events(crate::support::authorized(
            &bob,
            v1::ListAllEventsRequest::default(),
        ))
        .await;
    assert_eq!(
        code(all),
        tonic::Code::PermissionDenied,
        "bob lists everyone"
    );
    let get = v1::GetEventRequest {
        id: alices.id.clone(),
        user_id: "alice".into(),
    };
    assert_eq!(
        code(front.get_event(get.clone()).await),
        tonic::Code::Unauthenticated
    );
    let theirs = front.get_event(crate::support::authorized(&bob, get)).await;
    assert_eq!(
        code(theirs),
        tonic::Code::PermissionDenied,
        "bob reads alice's"
    );
    let history = v1::ListTopicEventsRequest {
        topic: "orders".into(),
        ..Default::default()
    };
    let history = front
        .list_topic_events(crate::support::authorized(&bob, history))
        .await;
    assert_eq!(
        code(history),
        tonic::Code::PermissionDenied,
        "bob reads orders"
    );
    // What bob may do passes.
    let mine = front
        .list_events(crate::support::authorized(
            &bob,
            v1::ListEventsRequest::default(),
        ))
        .await;
    assert!(mine.is_ok(), "{mine:?}");
}
