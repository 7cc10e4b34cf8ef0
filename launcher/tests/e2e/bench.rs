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
    let system = System::start(3, &[]).await;
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

    let (ok, report) = bench(
        &system,
        &["fanout", "--subscribers", "5", "--publishes", "50"],
    )
    .await;
    assert!(ok, "{report}");
    assert_eq!(report["extra"]["delivered"].as_u64(), Some(250), "{report}");
    assert_eq!(
        report["extra"]["complete"],
        "5 of 5 got all 50 stored events"
    );
    assert_eq!(served(&system, "POST", "/publish", 200).await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_failures_and_exits_non_zero() {
    let _exclusive = EXCLUSIVE.lock().await;
    let system = System::start(1, &[]).await;
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
