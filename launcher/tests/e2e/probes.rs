//! The gateway's probes against the real processes: `/healthz` while the process serves,
//! `/readyz` following its backends' health within a second either way, both open in token
//! mode, never rate-limited and not counted as API traffic.

use std::time::Duration;

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{
    EXCLUSIVE, Launch, Local, Server, get_json, http, readyz_becomes, series_value,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_follows_the_backends_and_probes_need_no_token_and_no_rate() {
    let _exclusive = EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a test secret of at least thirty-two bytes").unwrap();
    let secret = secret.display().to_string();
    let auth = ["--auth", "jwt", "--jwt-secret-file", &secret];
    let mut backends = Vec::new();
    for _ in 0..2 {
        backends.push(Launch::backend(&db).flags(&auth).start().await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let mut flags = auth.to_vec();
    flags.extend(["--rate-limit", "5", "--access-log"]);
    let gateway = Launch::gateway(&addrs).flags(&flags).start().await;
    let base = gateway.url();

    readyz_becomes(&base, StatusCode::OK, Duration::from_secs(10)).await;
    // Ready takes one healthy backend; the count below wants both (the second's first health
    // answer may come a moment later).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = get_json(format!("{base}/readyz")).await;
        if body["backends"]["healthy"] == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both backends never healthy: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Far over the rate of 5 per second, without a token: every probe answers.
    for _ in 0..20 {
        let ready = http().get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let body: Value = ready.json().await.unwrap();
        assert_eq!(body["backends"]["healthy"], 2, "{body}");
        let alive = http().get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(alive.status(), StatusCode::OK);
    }
    // The API itself still wants a token (asked from another address, whose rate is untouched).
    let other = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let api = other.get(format!("{base}/events")).send().await.unwrap();
    assert_eq!(
        api.status(),
        StatusCode::UNAUTHORIZED,
        "{:?}",
        api.text().await
    );

    // Every backend killed: not ready within a second, with the contract's error body.
    for backend in &mut backends {
        backend.signal(Signal::SIGKILL);
        backend.exit_within(Duration::from_secs(5)).await;
    }
    let (took, down) = readyz_becomes(
        &base,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(1),
    )
    .await;
    println!("/readyz 503 {took:?} after the last backend died");
    assert_eq!(down["code"], "UNAVAILABLE", "{down}");
    let why = down["message"].as_str().unwrap_or_default();
    assert!(why.starts_with("no healthy backend: "), "{down}");
    let alive = http().get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), StatusCode::OK, "the process still serves");

    // One backend back on its port (ready once it serves gRPC health): ready within a second.
    let store = format!("sqlite://{}", db.display());
    let mut args = vec!["--store", store.as_str()];
    args.extend(auth);
    backends[0] = Launch::server(Server::Backend)
        .on(addrs[0])
        .flags(&args)
        .start()
        .await;
    let (took, _) = readyz_becomes(&base, StatusCode::OK, Duration::from_secs(1)).await;
    println!("/readyz 200 {took:?} after a backend came back");

    // Probes are not API traffic: the access log has the API request and no probe.
    let logs = gateway.logs();
    assert!(logs.contains("/events"), "{logs}");
    assert!(
        !logs.contains("/readyz") && !logs.contains("/healthz"),
        "{logs}"
    );
}

/// SIGTERM with `--shutdown-delay`: `/readyz` says 503 "shutting down" within a second while the
/// gateway keeps serving the API, then it drains and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_turns_503_at_the_signal_and_the_api_serves_through_the_delay() {
    let _exclusive = EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = Launch::backend(&dir.path().join("events.db")).start().await;
    let mut gateway = Launch::gateway(&[backend.addr])
        .flags(&["--shutdown-delay", "3s"])
        .start()
        .await;
    let base = gateway.url();
    readyz_becomes(&base, StatusCode::OK, Duration::from_secs(10)).await;

    gateway.signal(Signal::SIGTERM);
    let (took, leaving) = readyz_becomes(
        &base,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(1),
    )
    .await;
    println!("/readyz 503 {took:?} after SIGTERM");
    assert_eq!(
        leaving["message"], "the gateway is shutting down",
        "{leaving}"
    );
    // Still serving: new connections and the API.
    let api = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{base}/events"))
        .json(&serde_json::json!({"userId": "late", "title": "during the delay"}))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::CREATED);
    let alive = http().get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), StatusCode::OK);

    let status = gateway.exit_within(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
}

/// A backend that starts draining says NOT_SERVING on its health Watch, and the gateway takes it
/// out at once: with Check polled only every 30 s, nothing else could within the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_backend_is_taken_out_by_its_health_watch_at_once() {
    let _exclusive = EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let mut leaving = Launch::backend(&db).start().await;
    let staying = Launch::backend(&db).start().await;
    let gateway = Launch::gateway(&[leaving.addr, staying.addr])
        .flags(&["--health-interval", "30s"])
        .start()
        .await;
    crate::support::wait_healthy(gateway.addr, None, 2).await;

    leaving.signal(Signal::SIGTERM);
    let started = std::time::Instant::now();
    let removed = format!("backend={} reason=NotServing", leaving.addr);
    tokio::time::timeout(Duration::from_secs(1), gateway.wait_for_log(&removed))
        .await
        .unwrap_or_else(|_| panic!("not taken out within a second:\n{}", gateway.logs()));
    println!("taken out {:?} after SIGTERM", started.elapsed());
    assert!(gateway.logs().contains("removed (health watch)"));
    // The gateway let go of its Watch: the backend's drain does not wait on it.
    let status = leaving.exit_within(Duration::from_secs(5)).await;
    println!("backend exited {:?} after SIGTERM", started.elapsed());
    assert!(status.success(), "{status:?}");
    drop(staying);
}

/// Families of a Prometheus text exposition as the Prometheus client's own parser reads them
/// (`prometheus-client` on PyPI, which `.ci/run` installs): name → [type, sample names].
fn parse_exposition(text: &str) -> serde_json::Map<String, Value> {
    const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = [family.type, [s.name for s in family.samples]]
print(json.dumps(families))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the exposition does not parse (pip install prometheus-client; .ci/run does): {stderr}\n{text}"
    );
    let families: Value = serde_json::from_slice(&out.stdout).unwrap();
    let families = families.as_object().unwrap().clone();
    // What can be rate()d is a counter.
    for (name, family) in &families {
        let samples = family[1].as_array().unwrap();
        let counts = samples
            .iter()
            .any(|s| s.as_str().unwrap().ends_with("_total"));
        assert!(
            !counts || family[0] == "counter",
            "{name} has _total samples but is a {}",
            family[0]
        );
    }
    families
}

fn assert_kinds(families: &serde_json::Map<String, Value>, kinds: &[(&str, &str)], text: &str) {
    // The parser names a counter family without its `_total`.
    for (name, kind) in kinds {
        assert_eq!(
            families.get(*name).map(|f| &f[0]),
            Some(&Value::from(*kind)),
            "{name}: {text}"
        );
    }
}

/// Every process's `/metrics` parses with the Prometheus client's parser, and what can be
/// `rate()`d is a counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_as_prometheus_text_and_counts_are_counters() {
    if !testdb::needs(
        "metrics_parse_as_prometheus_text_and_counts_are_counters",
        &[testdb::Tool::PrometheusClient],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backend = Local::backend(&dir.path().join("events.db"), &[]).await;
    let gateway = Local::gateway(&[backend.addr], &[]).await;
    let base = gateway.url();
    readyz_becomes(&base, StatusCode::OK, Duration::from_secs(10)).await;
    for _ in 0..3 {
        http()
            .get(format!("{base}/events?userId=m"))
            .send()
            .await
            .unwrap();
    }
    let text = http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // (Series with labels appear once they have a value: resumes, for one, do not yet.)
    let gateway_kinds = [
        ("gateway_http_requests", "counter"),
        ("gateway_backend_calls", "counter"),
        ("gateway_backend_unreachable_calls", "counter"),
        ("gateway_connections_refused", "counter"),
        ("gateway_limit_refusals", "counter"),
        ("process_cpu_seconds", "counter"),
        ("gateway_http_request_duration_seconds", "histogram"),
        ("gateway_backend_healthy", "gauge"),
        ("gateway_sse_streams", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
    ];
    assert_kinds(&parse_exposition(&text), &gateway_kinds, &text);
    let gateway_text = text;

    // The backend's, on its metrics endpoint.
    let text = backend.metrics().await;
    let backend_kinds = [
        ("eventsvc_rpcs", "counter"),
        ("eventsvc_rpc_duration_seconds", "histogram"),
        ("eventsvc_rpcs_in_flight", "gauge"),
        ("eventsvc_subscriptions", "gauge"),
        ("eventsvc_feed_delay_seconds", "histogram"),
        ("eventsvc_store_duration_seconds", "histogram"),
        ("eventsvc_idempotent_replays", "counter"),
        ("process_cpu_seconds", "counter"),
        ("process_open_fds", "gauge"),
    ];
    assert_kinds(&parse_exposition(&text), &backend_kinds, &text);
    let backend_text = text;

    // The dashboard charts only series these processes export.
    let dashboard = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/eventsys.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(dashboard).unwrap())
        .expect("the dashboard is JSON");
    let exported = format!("{gateway_text}\n{backend_text}");
    // Labelled series appear once they have a value; resumes have none in this run.
    let not_yet = ["gateway_sse_resumes_total"];
    let mut charted = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| {
                    ["gateway_", "eventsvc_", "process_"]
                        .iter()
                        .any(|p| w.starts_with(p))
                });
            for name in names {
                charted += 1;
                assert!(
                    exported.contains(&format!("\n{name}")) || not_yet.contains(&name),
                    "the dashboard charts {name}, which no process exports"
                );
            }
        }
    }
    assert!(charted > 15, "{charted} series charted");
    assert!(
        backend_text.contains("eventsvc_rpcs_total{code=\"Ok\",method=\"ListEvents\"} 3"),
        "{backend_text}"
    );
    // Each list is one store read (one page of none).
    assert_eq!(
        series_value(
            &backend_text,
            "eventsvc_store_duration_seconds_count{operation=\"list\"}"
        ),
        3,
        "{backend_text}"
    );
}
