//! One supervised child process (a backend or the gateway): started as this same binary with a
//! subcommand and the listening socket the launcher bound for it (fd 3, `LISTEN_FDS=1`), its
//! output relayed to the console, restarted on the same socket with capped backoff whenever it
//! crashes (a crash loop is logged at ERROR, never given up on: a system that stops serving for
//! good because of a transient fault is worse than one that keeps trying), stopped with SIGTERM
//! (SIGKILL after a grace period) when the launcher stops.

use std::{
    collections::VecDeque,
    net::{SocketAddr, TcpListener},
    os::fd::OwnedFd,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use command_fds::{CommandFdExt, FdMapping};
use eventsys::backoff::Backoff;
use futures::StreamExt;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{
    io::AsyncRead,
    process::{Child, Command},
};
use tokio_util::{
    codec::{FramedRead, LinesCodec, LinesCodecError},
    sync::CancellationToken,
};

use crate::{
    console::{Console, Label},
    lifeline::PARENT_ENV,
};

/// The fd a child finds its listening socket at (systemd's `SD_LISTEN_FDS_START`).
const LISTEN_FD: i32 = 3;

/// The first wait before a crashed child is restarted.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A child that crashes this often within `CRASH_WINDOW` is in a crash loop.
const CRASH_LOOP: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// Longest line relayed from a child; longer ones are cut.
const MAX_LINE: usize = 64 * 1024;
/// A child that ran this long before crashing starts its backoff over.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a stopping child may drain before it is killed (the servers drain for 10 s).
const STOP_GRACE: Duration = Duration::from_secs(15);

/// `--max-restart-backoff`: restarts wait 250 ms (or the cap, if lower) doubling up to this
/// cap, without jitter (each child restarts alone: there is no crowd to spread out).
pub(crate) fn restart_backoff(cap: &str) -> Result<Backoff, String> {
    let cap = humantime::parse_duration(cap).map_err(|e| e.to_string())?;
    Backoff::new(FIRST_BACKOFF.min(cap), cap, 0.0).map_err(|e| e.to_string())
}

/// What to run.
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) name: String,
    /// `backend` or `gateway`.
    pub(crate) subcommand: &'static str,
    /// The socket every incarnation serves on.
    pub(crate) listener: TcpListener,
    /// A backend's metrics socket, handed over as fd 4.
    pub(crate) metrics: Option<TcpListener>,
    pub(crate) args: Vec<String>,
    /// Variables set for the child (kept out of its command line, which anyone can read).
    pub(crate) env: Vec<(&'static str, String)>,
    /// Waits between restarts of a crashing child.
    pub(crate) restarts: Backoff,
}

/// One child process of `up`, restarted on the same socket whenever it exits on its own; its
/// `supervise` task owns the running process. Only `last_line` is shared (the output relay
/// writes it, the crash log reads it): a std mutex held for a `String` swap or clone.
pub(crate) struct Supervised {
    name: String,
    subcommand: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    addr: SocketAddr,
    /// Every incarnation's listening socket, held between them so clients wait in the backlog.
    listener: TcpListener,
    metrics: Option<TcpListener>,
    restarts: Backoff,
    label: Label,
    console: Arc<Console>,
    last_line: Mutex<String>,
}

impl Supervised {
    pub(crate) fn new(
        spec: Spec,
        label: Label,
        console: Arc<Console>,
    ) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            addr: spec.listener.local_addr()?,
            name: spec.name,
            subcommand: spec.subcommand,
            args: spec.args,
            env: spec.env,
            listener: spec.listener,
            metrics: spec.metrics,
            restarts: spec.restarts,
            label,
            console,
            last_line: Mutex::new(String::new()),
        }))
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Where the child serves: the launcher's socket, the same for every incarnation.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of the listening socket for the next incarnation.
    fn socket(&self) -> std::io::Result<OwnedFd> {
        Ok(self.listener.try_clone()?.into())
    }

    /// Where the child serves its metrics, if it has a socket for them.
    pub(crate) fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.local_addr().ok())
    }

    fn spawn(self: &Arc<Self>) -> std::io::Result<Child> {
        let exe = std::env::current_exe()?;
        let mut sockets = vec![FdMapping {
            parent_fd: self.socket()?,
            child_fd: LISTEN_FD,
        }];
        let mut names = self.name.clone();
        if let Some(metrics) = &self.metrics {
            sockets.push(FdMapping {
                parent_fd: metrics.try_clone()?.into(),
                child_fd: LISTEN_FD + 1,
            });
            names.push_str(":metrics");
        }
        let mut command = Command::new(exe);
        command
            .arg(self.subcommand)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(PARENT_ENV, std::process::id().to_string())
            .env("LISTEN_FDS", sockets.len().to_string())
            .env("LISTEN_FDNAMES", names)
            // No pid check: the child's pid is not known before it is spawned.
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
            .fd_mappings(sockets)
            .map_err(|_| std::io::Error::other("fd 3 mapped twice"))?;
        let mut child = command.spawn()?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(self.clone().relay(out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(self.clone().relay(err));
        }
        Ok(child)
    }

    /// Copies the child's output to the console, line by line (a line cut at `MAX_LINE`).
    async fn relay(self: Arc<Self>, output: impl AsyncRead + Unpin) {
        let mut lines = FramedRead::new(output, LinesCodec::new_with_max_length(MAX_LINE));
        while let Some(line) = lines.next().await {
            let line = match line {
                Ok(line) => line,
                Err(LinesCodecError::MaxLineLengthExceeded) => "… (line too long, cut)".into(),
                Err(LinesCodecError::Io(_)) => return,
            };
            self.console.line(&self.label, &line);
            *self
                .last_line
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = line;
        }
    }

    /// Runs the child until `stop` is cancelled, restarting it whenever it exits on its own.
    /// `force` cancelled means stop without waiting for a graceful drain.
    pub(crate) async fn supervise(
        self: Arc<Self>,
        stop: CancellationToken,
        force: CancellationToken,
    ) {
        let name = self.name.clone();
        let mut crashes = VecDeque::new();
        let mut pauses = self.restarts.attempts();
        loop {
            let started = Instant::now();
            let status = match self.spawn() {
                Ok(mut child) => {
                    tracing::info!(child = %name, pid = child.id().unwrap_or(0), "started");
                    tokio::select! {
                        status = child.wait() => describe(status),
                        _ = stop.cancelled() => {
                            self.terminate(&mut child, &force).await;
                            return;
                        }
                    }
                }
                Err(err) => format!("cannot be started: {err}"),
            };
            let now = Instant::now();
            crashes.push_back(now);
            crashes.retain(|at| now.duration_since(*at) < CRASH_WINDOW);
            if now.duration_since(started) > STABLE_AFTER {
                pauses.reset();
            }
            let backoff = pauses.next_pause();
            if crashes.len() >= CRASH_LOOP {
                let last = self
                    .last_line
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                tracing::error!(
                    child = %name,
                    crashes = crashes.len(),
                    within = ?CRASH_WINDOW,
                    %status,
                    last_words = %last,
                    ?backoff,
                    "crash loop: restarting"
                );
            } else {
                tracing::warn!(child = %name, %status, ?backoff, "exited unexpectedly: restarting");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
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
                tracing::warn!(child = %self.name, "did not stop in time: killing it");
                let _ = child.start_kill();
                child.wait().await
            }
        };
        tracing::info!(child = %self.name, status = %describe(status), "stopped");
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(err) => format!("unknown exit: {err}"),
    }
}
