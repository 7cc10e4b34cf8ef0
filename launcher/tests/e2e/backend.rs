//! One backend process: what a grpcurl user sees, health and reflection, shutdown, bad config.

use std::time::Duration;

use eventsys::v1;
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::process::Command;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::support::{EVENTSYS, Launch, grpcurl, grpcurl_call};

#[tokio::test]
async fn grpcurl_lists_services_and_round_trips_an_event() {
    if !testdb::needs(
        "grpcurl_lists_services_and_round_trips_an_event",
        &[testdb::Tool::Grpcurl],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backend = Launch::backend(&dir.path().join("events.db")).start().await;
    let addr = backend.addr.to_string();

    let list = grpcurl(&["-plaintext", &addr, "list"]).await;
    let services = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    for service in ["events.v1.EventService", "grpc.health.v1.Health"] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} in {services}"
        );
    }
    // The .proto comments reach grpcurl users through reflection.
    let described = grpcurl(&["-plaintext", &addr, "describe", "events.v1.EventService"]).await;
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(
        text.contains("rpc Subscribe") && text.contains("no gap and no duplicate"),
        "{text}"
    );

    let call = |method, request| grpcurl_call(backend.addr, method, request);
    let created = call(
        "CreateEvent",
        json!({"userId": "u1", "title": "plan", "description": "d", "data": {"n": 1, "tags": ["a"]}}),
    )
    .await
    .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    assert_eq!(created["userId"], "u1");
    assert_eq!(created["data"], json!({"n": 1, "tags": ["a"]}));
    assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));
    assert!(created.get("seq").is_none() && created.get("time").is_none());

    let got = call("GetEvent", json!({"id": id, "userId": "u1"}))
        .await
        .unwrap();
    assert_eq!(got, created);
    let theirs = call("GetEvent", json!({"id": id, "userId": "u2"}))
        .await
        .unwrap_err();
    assert!(
        theirs.contains("NotFound") && theirs.contains("event not found"),
        "{theirs}"
    );

    let updated = call(
        "UpdateEvent",
        json!({"id": id, "userId": "u1", "title": "done", "description": "dd", "completed": true}),
    )
    .await
    .unwrap();
    assert_eq!(
        (updated["title"].clone(), updated["completed"].clone()),
        (json!("done"), json!(true))
    );
    let got = call("GetEvent", json!({"id": id})).await.unwrap();
    assert_eq!(got, updated);
    assert_eq!(got["data"], created["data"], "update leaves data alone");
    // 64-bit integers are strings in protobuf's JSON.
    assert_eq!(
        (&created["revision"], &updated["revision"]),
        (&json!("1"), &json!("2"))
    );
    let stale = call(
        "UpdateEvent",
        json!({"id": id, "title": "stale", "ifRevision": 1}),
    )
    .await
    .unwrap_err();
    assert!(
        stale.contains("FailedPrecondition") && stale.contains("the event is at revision 2"),
        "{stale}"
    );
    let stale = call("DeleteEvent", json!({"id": id, "ifRevision": 1}))
        .await
        .unwrap_err();
    assert!(stale.contains("FailedPrecondition"), "{stale}");

    assert_eq!(
        call("DeleteEvent", json!({"id": id, "userId": "u1"}))
            .await
            .unwrap(),
        json!({})
    );
    let gone = call("GetEvent", json!({"id": id})).await.unwrap_err();
    assert!(gone.contains("NotFound"), "{gone}");

    let bad_id = call("GetEvent", json!({"id": "42"})).await.unwrap_err();
    assert!(
        bad_id.contains("InvalidArgument") && bad_id.contains("id must be a UUID"),
        "{bad_id}"
    );
    let no_topic = call("Publish", json!({"title": "x"})).await.unwrap_err();
    assert!(no_topic.contains("Topic cannot be empty"), "{no_topic}");
    let published = call("Publish", json!({"topic": "t", "title": "x"}))
        .await
        .unwrap();
    assert_eq!(published["seq"], "1", "grpcurl prints uint64 as a string");
}

#[tokio::test]
async fn reflection_v1_and_health_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Launch::backend(&dir.path().join("events.db")).start().await;

    let mut reflection = ServerReflectionClient::new(backend.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"events.v1.EventService".to_string()),
        "{names:?}"
    );

    let mut health = HealthClient::new(backend.channel().await);
    for service in ["", "events.v1.EventService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
}

#[tokio::test]
async fn sigterm_reports_not_serving_ends_streams_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Launch::backend(&dir.path().join("events.db")).start().await;
    let mut client = backend.client().await;

    let mut health = HealthClient::new(backend.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "events.v1.EventService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let mut stream = client
        .subscribe(v1::SubscribeRequest {
            topic: "live".into(),
            after_seq: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let publish = v1::PublishRequest {
        topic: "live".into(),
        title: "one".into(),
        ..Default::default()
    };
    client.publish(publish).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().seq, 1);

    backend.signal(Signal::SIGTERM);
    let draining = watch.message().await.unwrap().unwrap();
    assert_eq!(draining.status, ServingStatus::NotServing as i32);
    drop(watch);

    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the open stream ends promptly on shutdown");
    let status = ended.expect_err("the stream ends with a status saying why");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"));

    let exit = backend.exit_within(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}; logs:\n{}", backend.logs());
    assert!(backend.logs().contains("SIGTERM received"));
}

/// Runs the binary with a bad configuration: it must exit non-zero at once, its last stderr
/// line the reason.
async fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(EVENTSYS);
    command.arg("backend");
    command
        .args(args)
        .env_remove("STORE_URI")
        .env_remove("MONGO_URI")
        .env_remove("DATABASE_URL")
        .env_remove("DATA_DIR")
        .env_remove("PORT")
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("a bad configuration fails fast")
        .unwrap();
    assert!(!out.status.success(), "{args:?} must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.lines().last().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn bad_configuration_exits_non_zero_with_a_one_line_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("e.db").display());

    let line = refused(&["--port", "0", "--store", "mysql://db/x"], &[]).await;
    assert!(
        line.starts_with("eventsvc: invalid store:") && line.contains("\"mysql\""),
        "{line}"
    );
    // A database nobody serves: a one-line reason, and no credentials in it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("postgres://app:hunter2@{}/x", closed.local_addr().unwrap());
    drop(closed);
    let line = refused(&["--port", "0", "--store", &nobody], &[]).await;
    assert!(
        line.starts_with("eventsvc: cannot open PostgreSQL store:") && !line.contains("hunter2"),
        "{line}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let line = refused(&["--port", &port, "--store", &db], &[]).await;
    assert!(
        line.starts_with(&format!("eventsvc: cannot listen on 127.0.0.1:{port}")),
        "{line}"
    );

    let line = refused(
        &["--port", "0", "--store", &db],
        &[("RUST_LOG", "info,[bad")],
    )
    .await;
    assert!(line.starts_with("eventsvc: invalid RUST_LOG"), "{line}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let inside_file = format!("sqlite://{}/events.db", file.display());
    let line = refused(&["--port", "0", "--store", &inside_file], &[]).await;
    assert!(
        line.starts_with("eventsvc: cannot open SQLite store"),
        "{line}"
    );

    let line = refused(&["--port", "0"], &[("STORE_URI", "nonsense")]).await;
    assert!(line.contains("has no scheme"), "{line}");
}

/// Whether grpcurl can list the services at `addr` by reflection.
async fn reflection_lists(addr: std::net::SocketAddr) -> bool {
    let listed = grpcurl(&["-plaintext", &addr.to_string(), "list"]).await;
    if !listed.status.success() {
        let said = String::from_utf8_lossy(&listed.stderr);
        assert!(
            said.contains("does not support the reflection API"),
            "{said}"
        );
    }
    listed.status.success()
}

/// Reflection describes the API to anyone who asks: on in anonymous mode, off in token mode
/// (backends and the gateway's front door) unless `--reflection on`; `--reflection off` in
/// either. The API itself is unaffected.
#[tokio::test]
async fn reflection_is_off_in_token_mode_unless_asked() {
    if !testdb::needs(
        "reflection_is_off_in_token_mode_unless_asked",
        &[testdb::Tool::Grpcurl],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let token_mode = crate::support::TokenMode::new(dir.path());
    let off = Launch::backend(&db)
        .flags(&["--reflection", "off"])
        .start()
        .await;
    assert!(!reflection_lists(off.addr).await, "--reflection off");
    let mut client = off.client().await;
    assert!(
        client
            .list_events(v1::ListEventsRequest::default())
            .await
            .is_ok()
    );

    let token = Launch::backend(&db)
        .flags(&token_mode.flags())
        .start()
        .await;
    assert!(!reflection_lists(token.addr).await, "token mode's default");
    let gateway = Launch::gateway(&[token.addr])
        .flags(&token_mode.flags())
        .start()
        .await;
    assert!(
        !reflection_lists(gateway.addr).await,
        "the front door in token mode"
    );

    let mut asked = token_mode.flags().to_vec();
    asked.extend(["--reflection", "on"]);
    let token_on = Launch::backend(&db).flags(&asked).start().await;
    assert!(
        reflection_lists(token_on.addr).await,
        "token mode with --reflection on"
    );
    let gateway_on = Launch::gateway(&[token_on.addr])
        .flags(&asked)
        .start()
        .await;
    assert!(
        reflection_lists(gateway_on.addr).await,
        "the front door, asked"
    );
}
