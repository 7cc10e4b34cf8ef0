//! One supervised child process (a backend or the gateway): started as this same binary with a
//! subcommand, its output relayed to the console, its listening address learned from its log,
//! restarted with backoff when it crashes and given up on when it keeps crashing, stopped with
//! SIGTERM (SIGKILL after a grace period) when the launcher stops.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    process::{ExitStatus, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use crate::{
    console::{Console, Label},
    lifeline::PARENT_ENV,
};

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A child that crashes this often within `CRASH_WINDOW` is given up on.
const CRASHES_TO_GIVE_UP: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// A child that ran this long before crashing starts its backoff over.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a stopping child may drain before it is killed (the servers drain for 10 s).
const STOP_GRACE: Duration = Duration::from_secs(15);

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    /// `backend` or `gateway`.
    pub subcommand: &'static str,
    pub host: IpAddr,
    /// 0 until the first incarnation has picked one; restarts keep the same port.
    pub port: u16,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{name} {reason}")]
pub struct GaveUp {
    pub name: String,
    pub reason: String,
}

pub struct Supervised {
    spec: Spec,
    port: AtomicU16,
    label: Label,
    console: Arc<Console>,
    /// Where the current incarnation listens, once it says so; `None` while it is down.
    listening: watch::Sender<Option<SocketAddr>>,
    last_line: Mutex<String>,
}

impl Supervised {
    pub fn new(spec: Spec, label: Label, console: Arc<Console>) -> Arc<Self> {
        Arc::new(Self {
            port: AtomicU16::new(spec.port),
            spec,
            label,
            console,
            listening: watch::Sender::new(None),
            last_line: Mutex::new(String::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Follows where the child listens.
    pub fn listening(&self) -> watch::Receiver<Option<SocketAddr>> {
        self.listening.subscribe()
    }

    fn spawn(self: &Arc<Self>) -> std::io::Result<Child> {
        let exe = std::env::current_exe()?;
        // The listening line is how the launcher learns a child's address, so it is kept
        // whatever RUST_LOG says.
        let filter = match std::env::var("RUST_LOG") {
            Ok(spec) if !spec.is_empty() => {
                format!("{spec},eventsvc::server=info,gateway::server=info")
            }
            _ => "info".to_owned(),
        };
        let mut child = Command::new(exe)
            .arg(self.spec.subcommand)
            .arg("--host")
            .arg(self.spec.host.to_string())
            .arg("--port")
            .arg(self.port.load(Ordering::Relaxed).to_string())
            .args(&self.spec.args)
            .env(PARENT_ENV, std::process::id().to_string())
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(self.clone().relay(out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(self.clone().relay(err));
        }
        Ok(child)
    }

    /// Copies the child's output to the console, watching for its listening address.
    async fn relay(self: Arc<Self>, output: impl AsyncRead + Unpin) {
        let mut lines = BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = listening_addr(&line) {
                self.port.store(addr.port(), Ordering::Relaxed);
                self.listening.send_replace(Some(addr));
            }
            self.console.line(&self.label, &line);
            *self
                .last_line
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = line;
        }
    }

    /// Runs the child until `stop` is cancelled, restarting it when it exits on its own.
    /// `force` cancelled means stop without waiting for a graceful drain.
    pub async fn supervise(
        self: Arc<Self>,
        stop: CancellationToken,
        force: CancellationToken,
    ) -> Result<(), GaveUp> {
        let name = self.spec.name.clone();
        let mut crashes = VecDeque::new();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut child = self.spawn().map_err(|e| GaveUp {
                name: name.clone(),
                reason: format!("cannot be started: {e}"),
            })?;
            let started = Instant::now();
            tracing::info!(child = %name, pid = child.id().unwrap_or(0), "started");
            let status = tokio::select! {
                status = child.wait() => status,
                _ = stop.cancelled() => {
                    self.terminate(&mut child, &force).await;
                    return Ok(());
                }
            };
            self.listening.send_replace(None);
            let status = describe(status);
            let now = Instant::now();
            crashes.push_back(now);
            crashes.retain(|at| now.duration_since(*at) < CRASH_WINDOW);
            if crashes.len() >= CRASHES_TO_GIVE_UP {
                let last = self
                    .last_line
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                return Err(GaveUp {
                    name,
                    reason: format!(
                        "crashed {} times within {:?} ({status}); giving up. Its last words: {last}",
                        crashes.len(),
                        CRASH_WINDOW
                    ),
                });
            }
            if now.duration_since(started) > STABLE_AFTER {
                backoff = FIRST_BACKOFF;
            }
            tracing::warn!(child = %name, %status, ?backoff, "exited unexpectedly: restarting");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return Ok(()),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// SIGTERM, then SIGKILL if the child has not exited within the grace period (or at once
    /// when `force` is cancelled).
    async fn terminate(&self, child: &mut Child, force: &CancellationToken) {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = tokio::time::sleep(STOP_GRACE) => None,
            _ = force.cancelled() => None,
        };
        let status = match exited {
            Some(status) => status,
            None => {
                tracing::warn!(child = %self.spec.name, "did not stop in time: killing it");
                let _ = child.start_kill();
                child.wait().await
            }
        };
        self.listening.send_replace(None);
        tracing::info!(child = %self.spec.name, status = %describe(status), "stopped");
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(err) => format!("unknown exit: {err}"),
    }
}

/// The address from a server's `listening addr=…` log line.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening addr=")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_lines() {
        let line = "2026-01-01T00:00:00Z  INFO eventsvc::server: listening addr=127.0.0.1:5001";
        assert_eq!(
            listening_addr(line),
            Some("127.0.0.1:5001".parse().unwrap())
        );
        assert_eq!(listening_addr("INFO eventsvc::cli: opening store"), None);
    }
}
