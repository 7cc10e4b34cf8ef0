//! `eventsys up` as a user runs it: the launcher binary starting its backends and gateway on
//! free ports, read through its banner (addresses) and log (each child's pid). Shared by the
//! `up` tests and the end-to-end tests that need the whole system as one command (MongoDB).

use std::{collections::HashMap, net::SocketAddr, path::Path, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// How long the launcher's output may take to say what a test waits for.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

pub(crate) struct Launcher {
    pub(crate) child: Child,
    pub(crate) lines: mpsc::UnboundedReceiver<String>,
    pub(crate) rest: SocketAddr,
    pub(crate) backends: Vec<SocketAddr>,
    /// The backends' metrics URLs the banner names.
    pub(crate) metrics: Vec<String>,
    /// Every child pid the launcher has reported starting, by child name.
    pub(crate) pids: HashMap<String, Vec<i32>>,
}

pub(crate) fn command(data: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventsys"));
    command
        .current_dir(data)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("STORE_URI")
        .env_remove("MONGO_URI")
        .env_remove("DATABASE_URL")
        .env_remove("HOST")
        .env_remove("GATEWAY_PORT")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// The `pid=` of a `started child=NAME pid=N` line.
pub(crate) fn started(line: &str) -> Option<(String, i32)> {
    let rest = line.split_once("started child=")?.1;
    let mut words = rest.split_whitespace();
    let name = words.next()?.to_owned();
    let pid = words.find_map(|w| w.strip_prefix("pid="))?.parse().ok()?;
    Some((name, pid))
}

impl Launcher {
    pub(crate) async fn start(data: &Path) -> Launcher {
        Self::start_with(data, &[], &[]).await
    }

    pub(crate) async fn start_with(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Launcher {
        Self::start_backends(data, 3, extra, env).await
    }

    /// `eventsys up` with `backends` backends, `extra` flags and `env`, in `data`.
    pub(crate) async fn start_backends(
        data: &Path,
        backends: usize,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Launcher {
        let mut child = command(data)
            .args([
                "up",
                "--backends",
                &backends.to_string(),
                "--base-port",
                "0",
                "--gateway-port",
                "0",
            ])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start eventsys up");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped");
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut launcher = Launcher {
            child,
            lines,
            rest: "0.0.0.0:0".parse().unwrap(),
            backends: Vec::new(),
            metrics: Vec::new(),
            pids: HashMap::new(),
        };
        let rest = launcher
            .expect(|l| l.split_once("REST API  http://").map(|(_, r)| r.to_owned()))
            .await;
        launcher.rest = rest.trim_end_matches("/events").parse().unwrap();
        let metrics = launcher
            .expect(|l| {
                l.split_once("backends' metrics  ")
                    .map(|(_, r)| r.to_owned())
            })
            .await;
        launcher.metrics = metrics.split_whitespace().map(str::to_owned).collect();
        let grpc = launcher
            .expect(|l| l.split_once("gRPC      ").map(|(_, r)| r.to_owned()))
            .await;
        launcher.backends = grpc
            .split_whitespace()
            .take_while(|w| !w.starts_with('('))
            .map(|a| a.parse().unwrap())
            .collect();
        launcher
    }

    /// Reads output until `found` matches a line, noting child pids on the way.
    pub(crate) async fn expect<T>(&mut self, found: impl Fn(&str) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                let line = self.lines.recv().await.expect("launcher output ended");
                println!("{line}");
                if let Some((name, pid)) = started(&line) {
                    self.pids.entry(name).or_default().push(pid);
                }
                if let Some(hit) = found(&line) {
                    return hit;
                }
            }
        })
        .await
        .expect("expected launcher output")
    }

    pub(crate) fn all_pids(&self) -> Vec<i32> {
        self.pids.values().flatten().copied().collect()
    }
}

impl Launcher {
    /// `http://` the gateway's address and `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.rest)
    }

    /// The pid of the backend serving on `addr` now (the launcher names them `backend-N` in the
    /// banner's order, and a restarted one keeps its name).
    pub(crate) fn backend_pid(&self, addr: &str) -> i32 {
        let index = self
            .backends
            .iter()
            .position(|b| b.to_string() == addr)
            .unwrap_or_else(|| panic!("{addr} is none of {:?}", self.backends));
        *self.pids[&format!("backend-{}", index + 1)]
            .last()
            .expect("started")
    }
}
