//! The load tool against the real system: what it reports is what the gateway served, and
//! failures are counted and fail the run.

use serde_json::Value;

use crate::support::{EVENTSYS, EXCLUSIVE, System, metric};

async fn bench(system: &System, args: &[&str]) -> (bool, Value) {
    let out = tokio::process::Command::new(EVENTSYS)
        .arg("bench")
        .args(["--gateway", &system.url(""), "--json"])
        .args(args)
        .output()
        .await
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

/// The gateway's own count of requests to `route` that got `status`.
async fn served(system: &System, method: &str, route: &str, status: u16) -> u64 {
    let series = format!(
        "gateway_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
    );
    metric(system.gateway.addr, &series).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_exactly_the_requests_the_gateway_served() {
    let _exclusive = EXCLUSIVE.lock().await;
    let system = System::start(3).await;
    let args = [
        "closed",
        "--endpoint",
        "get",
        "--concurrency",
        "4",
        "--requests",
        "200",
    ];
    let (ok, report) = bench(&system, &args).await;
    assert!(ok, "{report}");
    assert_eq!(
        (report["requests"].as_u64(), report["ok"].as_u64()),
        (Some(200), Some(200))
    );
    let spread: u64 = report["backends"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(spread, 200);
    assert_eq!(served(&system, "GET", "/events/{id}", 200).await, 200);

    let (ok, report) = bench(&system, &["mix", "--users", "3", "--iterations", "5"]).await;
    assert!(ok, "{report}");
    // Each iteration: create, update, get, delete, list.
    assert_eq!(report["requests"].as_u64(), Some(3 * 5 * 5));
    assert_eq!(served(&system, "DELETE", "/events/{id}", 204).await, 15);

    // With publishes, followed live and checked; every write with a fresh key.
    let args = [
        "--idempotency-keys",
        "mix",
        "--users",
        "3",
        "--iterations",
        "5",
        "--publish",
    ];
    let (ok, report) = bench(&system, &args).await;
    assert!(ok, "{report}");
    assert_eq!(report["requests"].as_u64(), Some(3 * 5 * 6));
    let extra = &report["extra"];
    for (figure, want) in [
        ("publishes_acknowledged", 15),
        ("publishes_stored", 15),
        ("delivered_once", 15),
        ("delivered_twice", 0),
        ("seqs_missing", 0),
        ("events_left_behind", 0),
    ] {
        assert_eq!(extra[figure].as_u64(), Some(want), "{figure}: {report}");
    }
    assert_eq!(extra["stream_broken"], false);
    assert_eq!(served(&system, "POST", "/publish", 200).await, 15);

    // Six subscribers over two topics, 50 events round robin: 25 for each subscriber.
    let fanout = [
        "fanout",
        "--subscribers",
        "6",
        "--topics",
        "2",
        "--publishes",
        "50",
    ];
    let (ok, report) = bench(&system, &fanout).await;
    assert!(ok, "{report}");
    let extra = &report["extra"];
    assert_eq!(extra["delivered"].as_u64(), Some(150), "{report}");
    assert_eq!(
        extra["complete"],
        "6 of 6 got every stored event of their topic (50 in all)"
    );
    // The gateway's own figures, from its /metrics.
    assert!(
        extra["gateway"]["rss_per_stream_kib"].is_number(),
        "{report}"
    );
    assert!(
        extra["gateway"]["cpu_per_delivery_us"].as_f64() > Some(0.0),
        "{report}"
    );
    assert_eq!(served(&system, "POST", "/publish", 200).await, 15 + 50);

    // Four subscribers each on all five topics by a pattern: one backend stream for them all.
    let pattern = [
        "fanout",
        "--subscribers",
        "4",
        "--topics",
        "5",
        "--pattern",
        "--publishes",
        "50",
    ];
    let (ok, report) = bench(&system, &pattern).await;
    assert!(ok, "{report}");
    let extra = &report["extra"];
    assert_eq!(extra["delivered"].as_u64(), Some(200), "{report}");
    assert_eq!(
        extra["complete"],
        "4 of 4 got every stored event of every topic (50 in all)"
    );
    assert_eq!(extra["backend_streams_per_gateway"], 1, "{report}");
    assert_eq!(served(&system, "POST", "/publish", 200).await, 15 + 100);

    // Open loop: 20 events a second for a second.
    let rate = [
        "fanout",
        "--subscribers",
        "3",
        "--rate",
        "20",
        "--duration",
        "1s",
    ];
    let (ok, report) = bench(&system, &rate).await;
    assert!(ok, "{report}");
    assert_eq!(report["requests"].as_u64(), Some(20), "{report}");
    assert_eq!(report["extra"]["delivered"].as_u64(), Some(60), "{report}");
}

/// `bench presence` (anonymous: counts, no subjects): every stream counted, the queries timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_presence_benchmark_counts_every_stream() {
    let system = System::start(1).await;
    let args = [
        "presence",
        "--subscribers",
        "6",
        "--queries",
        "4",
        "--changes",
        "0",
        "--duration",
        "1s",
    ];
    let (ok, report) = bench(&system, &args).await;
    assert!(ok, "{report}");
    assert_eq!(report["requests"].as_u64(), Some(4), "{report}");
    let extra = &report["extra"];
    assert_eq!(extra["subscribers"], 6, "{report}");
    assert_eq!(extra["subjects"], 0, "{report}");
    assert!(
        extra["query_ms"]["count_p99"].as_f64() > Some(0.0),
        "{report}"
    );
    assert!(extra["store_writes_per_s"].is_number(), "{report}");
}

/// `bench changes`: the writes it reports are what the gateway served, and each watcher got its
/// user's feed whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_change_feed_benchmark_checks_every_watcher() {
    let system = System::start(2).await;
    let args = [
        "changes",
        "--users",
        "3",
        "--watchers",
        "2",
        "--rate",
        "100",
        "--duration",
        "1s",
    ];
    let (ok, report) = bench(&system, &args).await;
    assert!(ok, "{report}");
    assert_eq!(report["requests"].as_u64(), Some(100), "{report}");
    let extra = &report["extra"];
    assert_eq!(
        extra["complete"],
        "6 of 6 watchers got every change of their user's feed once, in order"
    );
    // Mixed: of every 4 writes of a user, 2 creates, an update, a delete.
    assert_eq!(extra["changes_recorded"].as_u64(), Some(100), "{report}");
    assert!(
        extra["delivery_ms"]["from_write_sent_p99"].as_f64() > Some(0.0),
        "{report}"
    );
    let created = served(&system, "POST", "/events", 201).await;
    let updated = served(&system, "PUT", "/events/{id}", 200).await;
    let deleted = served(&system, "DELETE", "/events/{id}", 204).await;
    assert_eq!(created + updated + deleted, 100);
    assert_eq!((updated, deleted), (24, 24), "{created} created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_failures_and_exits_non_zero() {
    let _exclusive = EXCLUSIVE.lock().await;
    let system = System::start(1).await;
    let missing = uuid::Uuid::new_v4().to_string();
    let args = [
        "closed",
        "--endpoint",
        "get",
        "--id",
        &missing,
        "--requests",
        "50",
    ];
    let (ok, report) = bench(&system, &args).await;
    assert!(!ok, "a run with failures exits non-zero");
    assert_eq!(report["ok"].as_u64(), Some(0));
    assert_eq!(report["errors"]["HTTP 404"].as_u64(), Some(50), "{report}");
    assert_eq!(served(&system, "GET", "/events/{id}", 404).await, 50);
}
