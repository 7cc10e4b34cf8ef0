//! One request followed through both processes: the W3C `traceparent` a client sends (or a new
//! trace) names it in the gateway's log lines and, carried as gRPC metadata, in the backend's;
//! `x-request-id` is echoed (generated when absent, replaced when unfit to log).

use serde_json::{Value, json};

use crate::support::{Launch, http, wait_healthy};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_traceparent_names_the_request_in_the_gateways_and_the_backends_logs() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Launch::backend(&dir.path().join("events.db"))
        .flags(&["--access-log"])
        .start()
        .await;
    let gateway = Launch::gateway(&[backend.addr])
        .flags(&["--access-log"])
        .start()
        .await;
    wait_healthy(gateway.addr, None, 1).await;
    let base = gateway.url();
    let created: Value = http()
        .post(format!("{base}/events"))
        .json(&json!({"userId": "tracer", "title": "followed"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();

    let response = http()
        .get(format!("{base}/events/{id}?userId=tracer"))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .header("x-request-id", "client-chosen-17")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "client-chosen-17");

    let needle = format!("trace_id={TRACE}");
    let line = |logs: &str, also: &str| {
        logs.lines()
            .find(|l| l.contains(&needle) && l.contains(also))
            .map(str::to_owned)
    };
    gateway.wait_for_log(&needle).await;
    let gateway_line = line(&gateway.logs(), "/events/")
        .unwrap_or_else(|| panic!("no gateway line with {needle}:\n{}", gateway.logs()));
    assert!(
        gateway_line.contains("request_id=client-chosen-17"),
        "{gateway_line}"
    );
    backend.wait_for_log(&needle).await;
    let backend_line = line(&backend.logs(), "GetEvent")
        .unwrap_or_else(|| panic!("no backend line with {needle}:\n{}", backend.logs()));
    println!("gateway: {gateway_line}\nbackend: {backend_line}");

    // No traceparent: a new trace, and a new request id, still in both logs.
    let response = http()
        .get(format!("{base}/events/{id}?userId=tracer"))
        .header("x-request-id", "x".repeat(200))
        .send()
        .await
        .unwrap();
    let echoed = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        echoed.len(),
        36,
        "an unfit id is replaced by a UUID: {echoed}"
    );
    gateway.wait_for_log(&format!("request_id={echoed}")).await;
    let logs = gateway.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(&format!("request_id={echoed}")))
        .unwrap();
    let started = line
        .split("trace_id=")
        .nth(1)
        .and_then(|rest| rest.get(..32))
        .unwrap_or_else(|| panic!("no trace id in {line}"));
    assert_ne!(started, TRACE);
    backend.wait_for_log(&format!("trace_id={started}")).await;
}
