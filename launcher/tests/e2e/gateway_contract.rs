//! The REST contract of `docs/api.md` through the real gateway, every endpoint and every failure
//! row, field by field, one case per endpoint, written once and run on each store: three
//! backends on SQLite in this process (`sqlite::`), and `eventsys up` with two backends on a
//! MongoDB server (`mongo::`, SecantusDB started by the tests) or a PostgreSQL cluster
//! (`postgres::`, started by the tests).

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Front, served_by};

/// Asserts the contract's error shape: same text under `error` and `message`, and the code.
async fn assert_error(response: reqwest::Response, status: u16, code: &str, text: &str) {
    assert_eq!(
        response.status().as_u16(),
        status,
        "{:?}",
        response.url().path()
    );
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["error"], body["message"], "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(text),
        "{message:?} should contain {text:?}"
    );
    assert!(
        !message.contains("/tmp") && !message.contains("sqlite"),
        "{message}"
    );
}

fn assert_timestamp(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("timestamp string, got {value}"));
    let parsed = chrono::DateTime::parse_from_rfc3339(text).unwrap();
    assert_eq!(parsed.offset().local_minus_utc(), 0, "UTC: {text}");
    assert!(
        text.ends_with('Z') && text.contains('.'),
        "fractional, Z: {text}"
    );
}

/// `POST /events` of `body`, which must succeed: the created event.
async fn create(client: &reqwest::Client, system: &dyn Front, body: Value) -> Value {
    let response = client
        .post(system.url("/events"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

/// Publishes three events on `orders`, checking each answer: their ids.
async fn publish_three(client: &reqwest::Client, system: &dyn Front) -> Vec<String> {
    let publish = |body: Value| {
        client
            .post(system.url("/publish"))
            .body(body.to_string())
            .send()
    };
    let mut published = Vec::new();
    for i in 1..=3u64 {
        let response = publish(json!({"topic": "orders", "userId": "shop", "title": format!("order {i}"), "data": {"i": i}}))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "Event broadcasted");
        assert_eq!(body["seq"], i);
        published.push(body["id"].as_str().unwrap().to_owned());
    }
    published
}

const ALICE: &str = r#"{"id": "client-chosen", "userId": "alice", "title": "Launch", "description": "v1", "completed": false, "topic": "releases", "data": {"env": "prod", "n": 3}, "extra": true}"#;

fn alice() -> Value {
    serde_json::from_str(ALICE).unwrap()
}

async fn post_events_stores_what_the_contract_says_and_ignores_the_rest(
    system: &dyn Front,
    client: reqwest::Client,
) {
    let url = |p: &str| system.url(p);
    // POST /events: no Content-Type (old clients send none), client id and unknown fields
    // ignored.
    let create = alice();
    let response = client
        .post(url("/events"))
        .body(create.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(served_by(&response).starts_with("127.0.0.1:"));
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_ne!(id, "client-chosen");
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    for (field, expected) in [
        ("userId", json!("alice")),
        ("title", json!("Launch")),
        ("description", json!("v1")),
        ("completed", json!(false)),
        ("topic", json!("releases")),
        ("data", json!({"env": "prod", "n": 3})),
    ] {
        assert_eq!(created[field], expected, "{field}");
    }
    assert_timestamp(&created["createdAt"]);
    assert!(
        created.get("time").is_none() && created.get("seq").is_none(),
        "{created}"
    );
    assert!(created.get("extra").is_none());

    let bob: Value = client
        .post(url("/events"))
        .json(&json!({"userId": "bob", "title": "Bob's"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        bob.get("topic").is_none() && bob.get("data").is_none(),
        "omitted when empty: {bob}"
    );
}

async fn post_events_rejects_bad_bodies_with_the_contract_error(
    system: &dyn Front,
    client: reqwest::Client,
) {
    let url = |p: &str| system.url(p);
    // POST /events failures.
    let post = |body: &'static str| client.post(url("/events")).body(body).send();
    assert_error(
        post("{not json").await.unwrap(),
        400,
        "INVALID_ARGUMENT",
        "invalid JSON",
    )
    .await;
    assert_error(
        post(r#"{"completed": "yes"}"#).await.unwrap(),
        400,
        "INVALID_ARGUMENT",
        "boolean",
    )
    .await;
    // What is wrong and where, without the client's value: not 800 bytes for 300 sent.
    let long = format!(r#"{{"completed": "{}"}}"#, "v".repeat(300));
    let response = client.post(url("/events")).body(long).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let said = response.text().await.unwrap();
    assert!(!said.contains("vvv") && said.len() < 400, "{said}");
    assert!(
        said.contains("expected a boolean at line 1 column 316"),
        "{said}"
    );
    assert_error(
        post(r#"{"data": [1, 2]}"#).await.unwrap(),
        400,
        "INVALID_ARGUMENT",
        "invalid JSON",
    )
    .await;
    assert_error(
        post("").await.unwrap(),
        400,
        "INVALID_ARGUMENT",
        "invalid JSON",
    )
    .await;
    let huge = json!({"title": "x".repeat(1024 * 1024 + 1)}).to_string();
    let response = client.post(url("/events")).body(huge).send().await.unwrap();
    assert_error(response, 413, "RESOURCE_EXHAUSTED", "too large").await;
    let long_title = json!({"title": "x".repeat(70 * 1024)}).to_string();
    let response = client
        .post(url("/events"))
        .body(long_title)
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "INVALID_ARGUMENT", "title must be at most").await;
    // Integers beyond ±2^53 cannot cross the Struct's doubles unchanged: refused, not altered.
    let response = post(r#"{"data": {"n": 9007199254740993}}"#).await.unwrap();
    assert_error(response, 400, "INVALID_ARGUMENT", "within ±2^53").await;
    let exact = create(
        &client,
        system,
        json!({"data": {"n": 9_007_199_254_740_992u64, "m": -42}}),
    )
    .await;
    assert_eq!(
        exact["data"],
        json!({"n": 9_007_199_254_740_992u64, "m": -42}),
        "an exact integer comes back unchanged"
    );
}

async fn get_events_lists_one_user_or_everyone_as_an_array(
    system: &dyn Front,
    client: reqwest::Client,
) {
    let url = |p: &str| system.url(p);
    let created = create(&client, system, alice()).await;
    let bob = create(&client, system, json!({"userId": "bob", "title": "Bob's"})).await;
    // GET /events, scoped and not; [] rather than null.
    let list = |q: &'static str| client.get(url(&format!("/events{q}"))).send();
    let alice: Value = list("?userId=alice").await.unwrap().json().await.unwrap();
    assert_eq!(alice, json!([created]));
    let nobody = list("?userId=nobody").await.unwrap();
    assert_eq!(nobody.status(), StatusCode::OK);
    assert_eq!(nobody.text().await.unwrap(), "[]");
    let all: Value = list("").await.unwrap().json().await.unwrap();
    assert_eq!(all, json!([created, bob]));
}

async fn get_event_reads_it_for_its_owner_only(system: &dyn Front, client: reqwest::Client) {
    let url = |p: &str| system.url(p);
    let created = create(&client, system, alice()).await;
    let id = created["id"].as_str().unwrap().to_owned();
    // GET /events/{id}.
    let get = |path: String| client.get(url(&path)).send();
    let read: Value = get(format!("/events/{id}?userId=alice"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read, created);
    let read: Value = get(format!("/events/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read, created);
    for path in [
        format!("/events/{id}?userId=bob"),
        format!("/events/{}", uuid::Uuid::new_v4()),
        "/events/not-a-uuid".to_owned(),
    ] {
        assert_error(
            get(path).await.unwrap(),
            404,
            "NOT_FOUND",
            "event not found",
        )
        .await;
    }
}

async fn put_event_changes_exactly_title_description_and_completed(
    system: &dyn Front,
    client: reqwest::Client,
) {
    let url = |p: &str| system.url(p);
    let created = create(&client, system, alice()).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let get = |path: String| client.get(url(&path)).send();
    // PUT /events/{id}: exactly title, description and completed change.
    let put = |path: String, body: Value| client.put(url(&path)).body(body.to_string()).send();
    let update = json!({"title": "Launched", "description": "v1.0", "completed": true,
                        "topic": "ignored", "userId": "mallory", "data": {"ignored": 1}});
    let response = put(format!("/events/{id}?userId=alice"), update.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "\"2\"");
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"message": "event updated successfully", "revision": 2})
    );
    let after: Value = get(format!("/events/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut expected = created.clone();
    expected["title"] = json!("Launched");
    expected["description"] = json!("v1.0");
    expected["completed"] = json!(true);
    expected["revision"] = json!(2);
    assert_eq!(after, expected);
    assert_error(
        put(format!("/events/{id}?userId=bob"), update.clone())
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
        "event not found",
    )
    .await;
    assert_error(
        put(format!("/events/{}", uuid::Uuid::new_v4()), update)
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
        "event not found",
    )
    .await;
    let response = client
        .put(url(&format!("/events/{id}")))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "INVALID_ARGUMENT", "invalid JSON").await;
    let response = put(format!("/events/{id}"), json!({"completed": 1}))
        .await
        .unwrap();
    assert_error(response, 400, "INVALID_ARGUMENT", "invalid JSON").await;
}

/// `If-Match` on `PUT` and `DELETE /events/{id}`: the `ETag` of a read names the revision; a
/// stale one is 412 with the current revision, and of concurrent updates naming one revision
/// (through different backends) exactly one applies.
async fn if_match_makes_updates_and_deletes_conditional(
    system: &dyn Front,
    client: reqwest::Client,
) {
    let url = |p: &str| system.url(p);
    let created = create(&client, system, alice()).await;
    assert_eq!(created["revision"], 1);
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/events/{id}");
    let read = client.get(url(&path)).send().await.unwrap();
    assert_eq!(read.headers()["etag"], "\"1\"");
    let put = |if_match: &str, title: &str| {
        client
            .put(url(&path))
            .header("if-match", if_match)
            .body(json!({"title": title}).to_string())
            .send()
    };

    // Six writers read revision 1 and race: one wins, five are told revision 2.
    let racers = futures::future::join_all((0..6).map(|i| {
        let title = format!("racer {i}");
        async move { put("\"1\"", &title).await.unwrap() }
    }))
    .await;
    let mut won = Vec::new();
    for response in racers {
        match response.status().as_u16() {
            200 => {
                assert_eq!(response.headers()["etag"], "\"2\"");
                won.push(response.json::<Value>().await.unwrap());
            }
            412 => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["code"], "FAILED_PRECONDITION", "{body}");
                assert_eq!(body["revision"], 2, "{body}");
                assert_eq!(body["error"], body["message"]);
            }
            other => panic!("a racer got {other}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one update of revision 1 applies");
    let now: Value = client
        .get(url(&path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(now["revision"], 2);
    assert!(now["title"].as_str().unwrap().starts_with("racer "));

    // `*` holds while it exists; a tag naming no revision never holds; two revisions are 400.
    assert_eq!(put("*", "star").await.unwrap().status(), StatusCode::OK);
    for never in ["3", "W/\"3\"", "\"x\""] {
        let refused = put(never, "never").await.unwrap();
        assert_eq!(refused.status(), StatusCode::PRECONDITION_FAILED, "{never}");
        assert_eq!(refused.json::<Value>().await.unwrap()["revision"], 3);
    }
    assert_error(
        put("\"3\", \"4\"", "two").await.unwrap(),
        400,
        "INVALID_ARGUMENT",
        "If-Match",
    )
    .await;
    let delete = |if_match: &str| {
        client
            .delete(url(&path))
            .header("if-match", if_match)
            .send()
    };
    let stale = delete("\"2\"").await.unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.json::<Value>().await.unwrap()["revision"], 3);
    // Another user's event does not exist for them: 412 without a revision, as for none.
    let theirs = client
        .delete(url(&format!("{path}?userId=bob")))
        .header("if-match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::PRECONDITION_FAILED);
    assert!(
        theirs
            .json::<Value>()
            .await
            .unwrap()
            .get("revision")
            .is_none()
    );
    assert_eq!(
        delete("\"3\"").await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let gone = put("*", "gone").await.unwrap();
    assert_eq!(gone.status(), StatusCode::PRECONDITION_FAILED);
    assert!(
        gone.json::<Value>()
            .await
            .unwrap()
            .get("revision")
            .is_none()
    );
    // Without `If-Match`, as before: 404.
    assert_error(
        client.put(url(&path)).body("{}").send().await.unwrap(),
        404,
        "NOT_FOUND",
        "event not found",
    )
    .await;
}

async fn delete_event_removes_it_for_its_owner_only(system: &dyn Front, client: reqwest::Client) {
    let url = |p: &str| system.url(p);
    let created = create(&client, system, alice()).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let get = |path: String| client.get(url(&path)).send();
    // DELETE /events/{id}.
    let delete = |path: String| client.delete(url(&path)).send();
    assert_error(
        delete(format!("/events/{id}?userId=bob")).await.unwrap(),
        404,
        "NOT_FOUND",
        "event not found",
    )
    .await;
    let response = delete(format!("/events/{id}?userId=alice")).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.bytes().await.unwrap().is_empty());
    assert_error(
        delete(format!("/events/{id}")).await.unwrap(),
        404,
        "NOT_FOUND",
        "event not found",
    )
    .await;
    assert_error(
        get(format!("/events/{id}")).await.unwrap(),
        404,
        "NOT_FOUND",
        "event not found",
    )
    .await;
}

async fn publish_numbers_events_per_topic_and_rejects_bad_topics(
    system: &dyn Front,
    client: reqwest::Client,
) {
    let url = |p: &str| system.url(p);
    // POST /publish.
    let publish = |body: Value| client.post(url("/publish")).body(body.to_string()).send();
    let response = publish(json!({"title": "no topic"})).await.unwrap();
    assert_error(response, 400, "INVALID_ARGUMENT", "Topic cannot be empty").await;
    let body: Value = publish(json!({"topic": ""}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["error"], "Topic cannot be empty",
        "the old clients read this key"
    );
    assert_error(
        publish(json!({"topic": "has space"})).await.unwrap(),
        400,
        "INVALID_ARGUMENT",
        "topic may only contain",
    )
    .await;
    let response = client
        .post(url("/publish"))
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "INVALID_ARGUMENT", "invalid JSON").await;
    publish_three(&client, system).await;
}

async fn topic_events_lists_a_topic_oldest_first(system: &dyn Front, client: reqwest::Client) {
    let url = |p: &str| system.url(p);
    let published = publish_three(&client, system).await;
    // GET /topic-events/{topic}: oldest first, with time and seq.
    let history: Value = client
        .get(url("/topic-events/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 3);
    for (i, event) in history.iter().enumerate() {
        assert_eq!(event["id"], published[i].as_str());
        assert_eq!(event["seq"], i as u64 + 1);
        assert_eq!(event["topic"], "orders");
        assert_eq!(event["data"], json!({"i": i + 1}));
        assert_timestamp(&event["time"]);
        assert_timestamp(&event["createdAt"]);
    }
    let empty = client.get(url("/topic-events/quiet")).send().await.unwrap();
    assert_eq!(empty.text().await.unwrap(), "[]");
    let bad = client
        .get(url("/topic-events/bad%20topic"))
        .send()
        .await
        .unwrap();
    assert_error(bad, 400, "INVALID_ARGUMENT", "topic may only contain").await;
}

async fn subscribe_streams_the_topic_as_server_sent_events(
    system: &dyn Front,
    client: reqwest::Client,
) {
    let url = |p: &str| system.url(p);
    publish_three(&client, system).await;
    let history: Value = client
        .get(url("/topic-events/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let history = history.as_array().unwrap();
    // GET /subscribe/{topic}: SSE frames `event: message`, `id: <seq>`, `data: <event>`.
    let response = client.get(url("/subscribe/orders")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = response.bytes_stream().eventsource();
    for (i, event) in history.iter().enumerate() {
        let frame = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("replayed event")
            .unwrap()
            .unwrap();
        assert_eq!(frame.event, "message");
        assert_eq!(frame.id, (i + 1).to_string());
        assert_eq!(&serde_json::from_str::<Value>(&frame.data).unwrap(), event);
    }
    drop(stream);
    let bad = client
        .get(url("/subscribe/no%20spaces"))
        .send()
        .await
        .unwrap();
    assert_error(bad, 400, "INVALID_ARGUMENT", "topic may only contain").await;
    let bad = client
        .get(url("/subscribe/orders"))
        .header("Last-Event-ID", "seven")
        .send()
        .await
        .unwrap();
    assert_error(bad, 400, "INVALID_ARGUMENT", "Last-Event-ID").await;
}

async fn load_benchmark_and_memstats_keep_their_old_shapes(
    system: &dyn Front,
    client: reqwest::Client,
) {
    let url = |p: &str| system.url(p);
    for i in 0..21 {
        create(
            &client,
            system,
            json!({"userId": "u", "title": format!("e{i}")}),
        )
        .await;
    }
    // /load, /benchmark, /memstats keep their old shapes.
    let load: Value = client
        .get(url("/load"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(load["in_flight"].is_u64(), "{load}");
    assert_eq!(
        load["backends"].as_array().unwrap().len(),
        system.backends()
    );
    let bench: Value = client
        .get(url("/benchmark"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(bench["uptime"].as_str().unwrap().ends_with('s'), "{bench}");
    assert!(bench["request_count"].as_u64().unwrap() > 20, "{bench}");
    assert!(bench["avg_req_per_s"].as_f64().unwrap() > 0.0, "{bench}");
    let mem: Value = client
        .get(url("/memstats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(mem["alloc"].as_u64().unwrap() > 4 * 1024 * 1024, "{mem}");
}

async fn metrics_are_prometheus_text(system: &dyn Front, client: reqwest::Client) {
    let url = |p: &str| system.url(p);
    create(&client, system, alice()).await;
    // /metrics in Prometheus text.
    let metrics = client
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "gateway_http_requests_total{method=\"POST\",route=\"/events\",status=\"201\"}",
        "gateway_http_request_duration_seconds_bucket",
        "gateway_backend_healthy{",
        "gateway_backend_in_flight{",
        "gateway_backend_peak_ewma_cost{",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
}

async fn pages_of_this_machine_may_call_with_the_old_services_methods(
    system: &dyn Front,
    client: reqwest::Client,
) {
    let url = |p: &str| system.url(p);
    // Cross-origin, anonymous mode's default: a page of this machine, with the old service's
    // methods; a page of another site is told nothing (its browser then withholds the answer
    // and sends no write).
    let preflight = |origin: &'static str| {
        client
            .request(Method::OPTIONS, url("/events"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "PUT")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
    };
    let local = preflight("http://localhost:5173").await.unwrap();
    assert!(local.status().is_success());
    assert_eq!(
        local.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let methods = local.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
        assert!(methods.contains(method), "{methods}");
    }
    let foreign = preflight("https://app.example").await.unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "{:?}",
        foreign.headers()
    );
    for (origin, allowed) in [
        ("http://127.0.0.1:8080", true),
        ("https://app.example", false),
    ] {
        let simple = client
            .get(url("/events"))
            .header("Origin", origin)
            .send()
            .await
            .unwrap();
        let granted = simple.headers().get("access-control-allow-origin");
        assert_eq!(granted.is_some(), allowed, "{origin}");
        // Caches keep answers to different pages apart.
        assert!(
            simple.headers()["vary"]
                .to_str()
                .unwrap()
                .contains("origin")
        );
    }
    // Not a browser: no CORS headers, but the answer still varies by `Origin` for caches.
    let plain = client.get(url("/events")).send().await.unwrap();
    assert!(plain.status().is_success());
    assert!(plain.headers().get("access-control-allow-origin").is_none());
    assert!(plain.headers()["vary"].to_str().unwrap().contains("origin"));
}

async fn unknown_routes_and_methods_answer_in_the_error_shape(
    system: &dyn Front,
    client: reqwest::Client,
) {
    let url = |p: &str| system.url(p);
    // Unknown routes and methods answer in the same JSON shape.
    let response = client.get(url("/nope")).send().await.unwrap();
    assert_error(response, 404, "NOT_FOUND", "no such endpoint").await;
    let response = client.patch(url("/publish")).send().await.unwrap();
    assert_error(response, 405, "UNIMPLEMENTED", "method not allowed").await;
}

/// One `#[tokio::test]` per case and store: `sqlite::CASE` on three backends in this process,
/// `mongo::CASE` and `postgres::CASE` on `eventsys up` over that server (SKIPPED where there is
/// none). Each case gets
/// a system (and a database) of its own: the contract is what the servers answer, so nothing
/// here needs the machine to itself.
macro_rules! contract {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let system = crate::support::System::start(3).await;
                    super::$case(&system, crate::support::http()).await;
                }
            )+
        }
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let what = concat!("the REST contract on MongoDB: ", stringify!($case));
                    let engine = crate::support::Engine::Mongo;
                    if let Some(system) = crate::support::UpSystem::up(engine, what, &[]).await {
                        super::$case(&system, crate::support::http()).await;
                    }
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let what = concat!("the REST contract on PostgreSQL: ", stringify!($case));
                    let engine = crate::support::Engine::Postgres;
                    if let Some(system) = crate::support::UpSystem::up(engine, what, &[]).await {
                        super::$case(&system, crate::support::http()).await;
                    }
                }
            )+
        }
    };
}

contract!(
    post_events_stores_what_the_contract_says_and_ignores_the_rest,
    post_events_rejects_bad_bodies_with_the_contract_error,
    get_events_lists_one_user_or_everyone_as_an_array,
    get_event_reads_it_for_its_owner_only,
    put_event_changes_exactly_title_description_and_completed,
    if_match_makes_updates_and_deletes_conditional,
    delete_event_removes_it_for_its_owner_only,
    publish_numbers_events_per_topic_and_rejects_bad_topics,
    topic_events_lists_a_topic_oldest_first,
    subscribe_streams_the_topic_as_server_sent_events,
    load_benchmark_and_memstats_keep_their_old_shapes,
    metrics_are_prometheus_text,
    pages_of_this_machine_may_call_with_the_old_services_methods,
    unknown_routes_and_methods_answer_in_the_error_shape,
);
