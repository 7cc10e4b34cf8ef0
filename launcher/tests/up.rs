//! `eventsys up` end to end: the real launcher binary starts real backends and a real gateway on
//! free ports; a request goes through; a backend killed with `kill -9` is restarted; SIGTERM
//! stops everything and leaves no process behind, and so does killing the launcher itself.

use std::{process::Stdio, time::Duration};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

// The DevTools client of the e2e tests, for the dashboard's test here.
#[allow(dead_code)]
#[path = "e2e/cdp.rs"]
mod cdp;
// The launcher harness, shared with the end-to-end tests.
#[allow(dead_code)]
#[path = "e2e/support/up.rs"]
mod harness;

use harness::{Launcher, WAIT, command, started};

/// The socket a child serves on: its fd 3 (`socket:[inode]`), handed over by the launcher.
fn listening_socket(pid: i32) -> String {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/3"))
        .unwrap_or_else(|e| panic!("child {pid} has no fd 3: {e}"));
    let link = link.to_string_lossy().into_owned();
    assert!(link.starts_with("socket:["), "fd 3 of {pid} is {link}");
    link
}

/// Whether a process is gone (or a zombie nobody has reaped yet: it runs no code).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

async fn all_gone(pids: &[i32]) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if pids.iter().all(|p| gone(*p)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_restarts_a_killed_backend_and_stops_without_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut launcher = Launcher::start(dir.path()).await;
    assert_eq!(launcher.backends.len(), 3);
    assert!(
        dir.path().join("data/events.db").exists(),
        "store under ./data by default"
    );

    let client = http();
    let base = format!("http://{}", launcher.rest);
    let created: Value = client
        .post(format!("{base}/events"))
        .json(&json!({"userId": "u", "title": "through the launcher"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let got = client
        .get(format!("{base}/events/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);

    // kill -9 one backend: the launcher restarts it on the very socket it bound for it.
    let first = launcher.pids["backend-1"][0];
    let socket = listening_socket(first);
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    launcher
        .expect(|l| l.contains("exited unexpectedly").then_some(()))
        .await;
    let again = launcher
        .expect(|l| started(l).filter(|(n, _)| n == "backend-1").map(|(_, p)| p))
        .await;
    assert_ne!(again, first);
    assert_eq!(
        listening_socket(again),
        socket,
        "the restarted backend serves on the socket its predecessor had"
    );
    // Every backend's metrics, at the address the banner printed, the restarted one's too
    // (its metrics socket is handed over again as fd 4).
    assert_eq!(launcher.metrics.len(), 3, "{:?}", launcher.metrics);
    for url in &launcher.metrics {
        let text = client.get(url).send().await.unwrap().text().await.unwrap();
        assert!(text.contains("eventsvc_rpcs_in_flight"), "{url}: {text}");
    }
    let got = client
        .get(format!("{base}/events/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);

    // SIGTERM: everything stops, gateway first, and nothing is left running.
    let pids = launcher.all_pids();
    assert_eq!(
        pids.len(),
        5,
        "3 backends, 1 restart, 1 gateway: {:?}",
        launcher.pids
    );
    kill(
        Pid::from_raw(launcher.child.id().unwrap() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(WAIT, launcher.child.wait())
        .await
        .expect("launcher stops")
        .unwrap();
    assert!(status.success(), "{status:?}");
    while let Ok(line) = launcher.lines.try_recv() {
        println!("{line}");
    }
    assert!(all_gone(&pids).await, "children left running: {pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_die_with_a_killed_launcher() {
    let dir = tempfile::tempdir().unwrap();
    // `.env` in the working directory is honoured, as the old service's was.
    std::fs::write(
        dir.path().join(".env"),
        "STORE_URI=sqlite://from-dotenv/events.db\n",
    )
    .unwrap();
    let mut launcher = Launcher::start(dir.path()).await;
    assert!(
        dir.path().join("from-dotenv/events.db").exists(),
        ".env chose the store"
    );
    let pids = launcher.all_pids();
    assert_eq!(pids.len(), 4);
    launcher.child.start_kill().unwrap();
    launcher.child.wait().await.unwrap();
    assert!(all_gone(&pids).await, "orphans left running: {pids:?}");
}

#[tokio::test]
async fn a_port_in_use_is_reported_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = command(dir.path())
        .args(["up", "--backends", "2", "--gateway-port", "0"])
        .args(["--base-port", &port.to_string()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .trim()
            .starts_with(&format!("eventsys: port {port} is already in use")),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("started"),
        "nothing started"
    );
    assert!(!dir.path().join("data").exists(), "not even the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_reaches_every_child() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "a secret for the launcher test, long enough";
    let mut launcher =
        Launcher::start_with(dir.path(), &["--auth", "jwt"], &[("JWT_SECRET", secret)]).await;
    let token = std::process::Command::new(env!("CARGO_BIN_EXE_eventsys"))
        .args(["token", "--sub", "alice", "--ttl", "5m"])
        .env("JWT_SECRET", secret)
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let client = http();
    let base = format!("http://{}", launcher.rest);
    // The gateway: no token, no service; with one, the caller's own events.
    let refused = client.get(format!("{base}/events")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let created = client
        .post(format!("{base}/events"))
        .bearer_auth(&token)
        .json(&json!({"title": "through up, in token mode"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["userId"], "alice");
    // Every backend got the configuration too: each refuses a call without a token.
    for backend in &launcher.backends {
        let channel = tonic::transport::Channel::from_shared(format!("http://{backend}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let refused = eventsys::v1::event_service_client::EventServiceClient::new(channel)
            .list_events(eventsys::v1::ListEventsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{backend}");
    }
    launcher.child.start_kill().unwrap();
    launcher.child.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_keeps_crashing_is_restarted_for_ever() {
    let dir = tempfile::tempdir().unwrap();
    let mut launcher =
        Launcher::start_with(dir.path(), &["--max-restart-backoff", "100ms"], &[]).await;
    let mut pid = launcher.pids["backend-1"][0];
    let crash_loop = std::sync::atomic::AtomicBool::new(false);
    for _ in 0..10 {
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        pid = launcher
            .expect(|l| {
                if l.contains("ERROR") && l.contains("crash loop") {
                    crash_loop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                started(l).filter(|(n, _)| n == "backend-1").map(|(_, p)| p)
            })
            .await;
    }
    assert!(
        crash_loop.load(std::sync::atomic::Ordering::Relaxed),
        "a crash loop is logged at ERROR"
    );
    // The eleventh incarnation serves, on the same socket.
    let url = format!("http://{}", launcher.backends[0]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let channel = tonic::transport::Channel::from_shared(url.clone()).unwrap();
        if let Ok(channel) = channel.connect().await {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let request = tonic_health::pb::HealthCheckRequest::default();
            if health.check(request).await.is_ok() {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend-1 never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(launcher.pids["backend-1"].len(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nobody_reading_stdout_does_not_stop_the_system() {
    let dir = tempfile::tempdir().unwrap();
    // With access logs, every request writes a line in the gateway and one in a backend.
    let mut child = command(dir.path())
        .args(["up", "--base-port", "0", "--gateway-port", "0"])
        .env("ACCESS_LOG", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start eventsys up");
    let mut reader = BufReader::new(child.stdout.take().expect("piped")).lines();
    let rest = tokio::time::timeout(WAIT, async {
        loop {
            let line = reader
                .next_line()
                .await
                .unwrap()
                .expect("output until ready");
            if let Some((_, rest)) = line.split_once("REST API  http://") {
                return rest.trim_end_matches("/events").to_owned();
            }
        }
    })
    .await
    .expect("ready");
    // From here on nobody reads: the pipe (64 KiB) fills after a few hundred lines.
    let base = format!("http://{rest}");
    serve_3000(&base).await;
    // Reading again: the launcher says how much it dropped meanwhile.
    tokio::time::timeout(WAIT, async {
        loop {
            let line = reader.next_line().await.unwrap().expect("output");
            if line.contains("lines dropped") {
                return;
            }
        }
    })
    .await
    .expect("the dropped lines are counted");

    // Nobody reads again; SIGTERM is handled at once, and everything stops within the drain
    // time.
    serve_3000(&base).await;
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("stops within the drain time")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// 3,000 writes from 4 clients, each answered.
async fn serve_3000(base: &str) {
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let base = base.to_owned();
        workers.spawn(async move {
            let client = http();
            for i in 0..750 {
                let response = client
                    .post(format!("{base}/events"))
                    .json(&json!({"userId": "quiet", "title": format!("{w}-{i}")}))
                    .send()
                    .await
                    .expect("served while stdout is full");
                assert_eq!(response.status(), 201);
            }
        });
    }
    tokio::time::timeout(WAIT, workers.join_all())
        .await
        .expect("3,000 requests served with nobody reading the logs");
}

/// A variable of a running process's environment.
fn environment(pid: i32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|entry| {
        let entry = String::from_utf8_lossy(entry);
        entry.strip_prefix(&format!("{name}=")).map(str::to_owned)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_share_the_cores_unless_told_otherwise() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let expected = cores.div_ceil(4).to_string();
    for (env, want) in [
        (vec![], expected),
        (vec![("TOKIO_WORKER_THREADS", "3")], "3".into()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut launcher = Launcher::start_with(dir.path(), &[], &env).await;
        let children: Vec<i32> = launcher.pids.values().flatten().copied().collect();
        assert_eq!(
            children.len(),
            4,
            "three backends and a gateway: {:?}",
            launcher.pids
        );
        for pid in children {
            assert_eq!(
                environment(pid, "TOKIO_WORKER_THREADS").as_deref(),
                Some(want.as_str()),
                "{env:?}"
            );
        }
        launcher.child.start_kill().unwrap();
        launcher.child.wait().await.unwrap();
    }
}

/// `LOG_FORMAT=json`: every line `eventsys up` prints is one JSON object naming its process,
/// the servers' own log lines with their level, target and fields, the banner as a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_log_format_json_every_line_is_a_json_object() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(dir.path())
        .args([
            "up",
            "--backends",
            "2",
            "--base-port",
            "0",
            "--gateway-port",
            "0",
        ])
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start eventsys up");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut processes = std::collections::BTreeSet::new();
    let mut levelled = 0;
    let mut banner = false;
    let read = async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("output until ready");
            let object: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
            let process = object["process"].as_str().expect("a process field");
            processes.insert(process.to_owned());
            if object["level"].is_string() {
                assert!(object["timestamp"].is_string() && object["target"].is_string());
                levelled += 1;
            }
            if object["message"]
                .as_str()
                .is_some_and(|m| m.contains("Ctrl-C stops everything"))
            {
                banner = true;
            }
            // Each child's lines reach the launcher through its own pipe, so a child's first
            // line may be relayed after the banner: read until the banner and every process.
            let every_process = ["backend-1", "backend-2", "gateway", "eventsys"]
                .iter()
                .all(|p| processes.contains(*p));
            if banner && every_process {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("ready banner and a line from every process: {processes:?}"));
    assert!(levelled > 0, "the servers' log lines carry their level");
    for process in ["backend-1", "backend-2", "gateway", "eventsys"] {
        assert!(processes.contains(process), "{process} in {processes:?}");
    }
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// The dashboard in headless Chromium against the real `eventsys up`: three healthy backends,
/// every one taking a share under load, one killed with `kill -9` marked down within 2 s and
/// back after its restart, an event published from the page's form seen in its topic tail; no
/// console error and no request outside the gateway. Screenshots of each moment are kept in the
/// test's temp dir (or `EVENTSYS_TEST_SCREENSHOTS`, a directory, when set).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_the_balancer_a_killed_backend_and_a_topic_live() {
    if !testdb::needs(
        "the_dashboard_shows_the_balancer_a_killed_backend_and_a_topic_live",
        &[testdb::Tool::Chromium],
    ) {
        return;
    }
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    let dir = tempfile::tempdir().unwrap();
    let mut launcher = Launcher::start(dir.path()).await;
    let base = format!("http://{}", launcher.rest);
    let shots = std::env::var_os("EVENTSYS_TEST_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().to_owned());
    let browser = cdp::Browser::launch(dir.path()).await;
    let mut page = browser.page().await;
    page.navigate(&format!("{base}/ui")).await;
    let within = Duration::from_secs(30);
    let count = |selector: &str| format!("document.querySelectorAll('{selector}').length");

    page.wait_for(
        &count("#backends .backend[data-healthy=\"true\"]"),
        |n| *n == 3,
        within,
    )
    .await;
    page.screenshot(&shots.join("ui-1-healthy.png")).await;
    // The traffic charts show the last 60 s from the first frame on, ending at the newest.
    page.wait_for("state.charts !== null", |drawn| *drawn == true, within)
        .await;
    let axis = page
        .eval(
            "[state.charts.rps.scales.x, state.charts.latency.scales.x]\
             .map(x => [x.max - x.min, Math.abs(Date.now() / 1000 - x.max) < 10])",
        )
        .await;
    assert_eq!(axis, serde_json::json!([[60, true], [60, true]]), "x-axes");

    // Load: every backend's share of the last 10 s becomes non-zero.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (base, stop) = (base.clone(), stop.clone());
        load.spawn(async move {
            let client = http();
            while !stop.load(Ordering::Relaxed) {
                let _ = client
                    .get(format!("{base}/events?userId=dashboard&limit=1"))
                    .send()
                    .await;
            }
        });
    }
    let shares = "[...document.querySelectorAll('#backends .backend')]\
                  .filter(b => parseFloat(b.dataset.share10) > 0).length";
    page.wait_for(shares, |n| *n == 3, within).await;
    // Only to give the README's screenshot some history to chart: off in CI.
    let history = std::env::var("EVENTSYS_TEST_DASHBOARD_HISTORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    if let Some(history) = history {
        tokio::time::sleep(history).await;
    }
    page.screenshot(&shots.join("ui-2-load.png")).await;

    // kill -9 backend-1: marked down within 2 s, back once the launcher restarted it.
    let victim = launcher.backends[0];
    let pid = launcher.pids["backend-1"][0];
    let card = format!("document.querySelector('[data-backend=\"{victim}\"]')?.dataset.healthy");
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let killed = std::time::Instant::now();
    page.wait_for(&card, |h| *h == "false", Duration::from_secs(2))
        .await;
    let marked_down = killed.elapsed();
    page.screenshot(&shots.join("ui-3-down.png")).await;
    page.wait_for(&card, |h| *h == "true", within).await;
    let back = killed.elapsed();
    if let Some(history) = history {
        tokio::time::sleep(history).await;
    }
    page.screenshot(&shots.join("ui-4-back.png")).await;
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}

    // Tail a topic from the page and publish to it from its form.
    page.eval(
        "document.getElementById('tail-topic').value = 'dashboard-demo'; \
         document.querySelector('#tail-form button').click(); true",
    )
    .await;
    page.wait_for(
        "document.getElementById('tail-status').textContent",
        |s| *s == "tailing dashboard-demo",
        within,
    )
    .await;
    page.eval(
        "document.getElementById('publish-title').value = 'hello from the dashboard'; \
         document.querySelector('#publish-form button').click(); true",
    )
    .await;
    page.wait_for(
        "document.getElementById('tail-events').textContent.includes('hello from the dashboard')",
        |seen| *seen == true,
        within,
    )
    .await;
    // The topic's hub (the page's own tail) in the topics table: its stream here and over
    // every gateway (presence, once the gateway reported), and the backend feeding it.
    page.wait_for(
        "[...document.querySelectorAll('#topics tbody tr')].some(row => \
         row.cells[0].textContent === 'dashboard-demo' && row.cells[1].textContent === '1' \
         && row.cells[2].textContent === '1' && row.cells[4].textContent.startsWith('127.0.0.1:'))",
        |listed| *listed == true,
        within,
    )
    .await;
    page.screenshot(&shots.join("ui-5-tail.png")).await;
    // Follow a user's changes: a create and an update of theirs appear, in order.
    page.eval(
        "document.getElementById('changes-user').value = 'dashboard-user'; \
         document.querySelector('#changes-form button').click(); true",
    )
    .await;
    page.wait_for(
        "document.getElementById('tail-status').textContent",
        |s| *s == "following dashboard-user changes",
        within,
    )
    .await;
    let created: Value = http()
        .post(format!("{base}/events"))
        .json(&json!({"userId": "dashboard-user", "title": "planned"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let updated = http()
        .put(format!("{base}/events/{id}?userId=dashboard-user"))
        .header("if-match", "\"1\"")
        .json(&json!({"title": "done", "completed": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let lines = page
        .wait_for(
            "[...document.querySelectorAll('#tail-events li')].map(li => li.textContent).join(' | ')",
            |text| text.as_str().is_some_and(|t| t.contains("#2 updated")),
            within,
        )
        .await;
    assert_eq!(
        lines, "#2 updated done (revision 2) | #1 created planned (revision 1)",
        "newest first"
    );
    page.screenshot(&shots.join("ui-5b-changes.png")).await;
    // A phone's width: one column, nothing cut off sideways.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    page.wait_for(
        "document.documentElement.scrollWidth <= 390",
        |fits| *fits == true,
        within,
    )
    .await;
    page.screenshot(&shots.join("ui-6-phone.png")).await;
    println!(
        "dashboard: {victim} marked down {marked_down:?} after kill -9, up again after \
         {back:?}; screenshots in {}",
        shots.display()
    );

    let report = page.report();
    report.assert_clean(&base);
    let _ = launcher.child.kill().await;
}
