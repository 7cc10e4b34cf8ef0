//! Servers as real processes, for the tests where the process is the point (signals, `kill -9`,
//! logs, memory, the open-file limit, TLS on the wire): the `eventsys` binary's `backend` or
//! `gateway` on a socket the harness binds and hands over as fd 3, started by one builder
//! (linkerd's integration harness shape):
//! `Launch::backend(&db).flag("--access-log").env("K", "V").start().await`.

use std::{
    net::SocketAddr,
    path::Path,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use command_fds::{CommandFdExt, FdMapping};
use eventsys::v1::{event_service_client::EventServiceClient, event_service_server::SERVICE_NAME};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{
    START_TIMEOUT,
    clients::{grpc_channel, http},
};

/// The multi-call binary every server and tool of the system runs from; cargo builds it
/// before it runs this package's tests.
pub(crate) const EVENTSYS: &str = env!("CARGO_BIN_EXE_eventsys");

/// Which server a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    Backend,
    Gateway,
}

impl Server {
    fn subcommand(self) -> &'static str {
        match self {
            Server::Backend => "backend",
            Server::Gateway => "gateway",
        }
    }
}

/// What happens to the process's stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logs {
    /// Read for its whole life into `Process::logs`.
    Kept,
    /// A pipe nobody reads, as under a supervisor that stopped reading.
    Unread,
}

/// How to start one server process; `start` starts it and waits until it is ready.
#[must_use = "a launch does nothing until `start`"]
pub(crate) struct Launch {
    server: Server,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Where the harness binds the socket it hands over (port 0: a free one).
    on: SocketAddr,
    /// A soft open-file limit, as a shell's `ulimit -Sn` would leave it.
    files: Option<u64>,
    logs: Logs,
    /// Wait for readiness with the harness's plain-text probe (not for TLS servers, whose
    /// callers wait on their own signal; the socket is bound already, so connections wait in
    /// the backlog until it serves).
    probe: bool,
}

impl Launch {
    /// `server` with no flags yet.
    pub(crate) fn server(server: Server) -> Launch {
        Launch {
            server,
            args: Vec::new(),
            env: Vec::new(),
            on: "127.0.0.1:0".parse().expect("an address"),
            files: None,
            logs: Logs::Kept,
            probe: true,
        }
    }

    /// A backend over the SQLite file at `db`.
    pub(crate) fn backend(db: &Path) -> Launch {
        Launch::server(Server::Backend).flags(&["--store", &format!("sqlite://{}", db.display())])
    }

    /// A gateway over `backends`.
    pub(crate) fn gateway(backends: &[SocketAddr]) -> Launch {
        let list = backends
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        Launch::server(Server::Gateway).flags(&["--backends", &list])
    }

    pub(crate) fn flag(mut self, flag: &str) -> Launch {
        self.args.push(flag.to_owned());
        self
    }

    pub(crate) fn flags(mut self, flags: &[&str]) -> Launch {
        self.args.extend(flags.iter().map(|f| (*f).to_owned()));
        self
    }

    pub(crate) fn env(mut self, name: &str, value: &str) -> Launch {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// On a socket bound to `addr` (a restarted server on its predecessor's port).
    pub(crate) fn on(mut self, addr: SocketAddr) -> Launch {
        self.on = addr;
        self
    }

    pub(crate) fn file_limit(mut self, files: u64) -> Launch {
        self.files = Some(files);
        self
    }

    pub(crate) fn unread_logs(mut self) -> Launch {
        self.logs = Logs::Unread;
        self
    }

    /// Do not wait for readiness (TLS servers: the caller waits on its own signal).
    pub(crate) fn unprobed(mut self) -> Launch {
        self.probe = false;
        self
    }

    /// Spawns the process on its socket and, unless unprobed, waits until it is ready: a
    /// backend when it reports SERVING, a gateway when it answers HTTP. The harness keeps no
    /// copy of the socket: once the process dies, connections to it are refused, as on a real
    /// machine.
    pub(crate) async fn start(self) -> Process {
        let Launch {
            server,
            args,
            env,
            on,
            files,
            logs,
            probe,
        } = self;
        let listener = std::net::TcpListener::bind(on)
            .unwrap_or_else(|e| panic!("bind {on} for the {server:?}: {e}"));
        let addr = listener.local_addr().expect("bound address");
        let mut command = match files {
            None => Command::new(EVENTSYS),
            // fd 3 survives the shell's exec.
            Some(files) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -Sn {files} && exec \"$0\" \"$@\""))
                    .arg(EVENTSYS);
                shell
            }
        };
        command
            .arg(server.subcommand())
            .args(&args)
            .env("RUST_LOG", "info")
            .env("LISTEN_FDS", "1")
            .env_remove("LISTEN_PID")
            .env_remove("STORE_URI")
            .env_remove("MONGO_URI")
            .env_remove("DATABASE_URL")
            .env_remove("DATA_DIR")
            .env_remove("PORT")
            .env_remove("BACKENDS")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
            .fd_mappings(vec![FdMapping {
                parent_fd: listener.into(),
                child_fd: 3,
            }])
            .expect("one fd mapping");
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {server:?}: {e}"));
        // The command holds the harness's copy of the socket until it is dropped.
        drop(command);
        let kept = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let (unread, reader) = match logs {
            Logs::Unread => (Some(stderr), None),
            Logs::Kept => {
                let sink = kept.clone();
                // Keeps draining stderr for the child's whole life so it never blocks on a
                // full pipe.
                let reader = tokio::spawn(async move {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let mut logs = sink.lock().unwrap();
                        logs.push_str(&line);
                        logs.push('\n');
                    }
                });
                (None, Some(reader))
            }
        };
        let mut process = Process {
            child,
            addr,
            logs: kept,
            reader,
            _unread: unread,
        };
        if probe {
            process.wait_ready(server, &args).await;
        }
        process
    }
}

/// A running server process, killed when dropped.
pub(crate) struct Process {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    /// The task copying stderr into `logs`: done once the process has exited and its last
    /// line is in.
    reader: Option<tokio::task::JoinHandle<()>>,
    /// The read end of a stderr pipe nobody reads (`Launch::unread_logs`).
    _unread: Option<tokio::process::ChildStderr>,
}

impl Process {
    async fn wait_ready(&mut self, server: Server, args: &[String]) {
        let process = self;
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            loop {
                if process.ready(server).await {
                    return true;
                }
                if process.child.try_wait().ok().flatten().is_some() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if ready != Ok(true) {
            let status = process.child.try_wait().ok().flatten();
            panic!(
                "{server:?} {args:?} never became ready (exit: {status:?}); logs:\n{}",
                process.logs()
            );
        }
    }

    /// A backend is ready when it reports SERVING, a gateway when it answers HTTP.
    async fn ready(&self, server: Server) -> bool {
        match server {
            Server::Backend => {
                let Ok(channel) = Channel::from_shared(self.url()).unwrap().connect().await else {
                    return false;
                };
                let request = HealthCheckRequest {
                    service: SERVICE_NAME.into(),
                };
                matches!(
                    HealthClient::new(channel).check(request).await,
                    Ok(r) if r.get_ref().status == ServingStatus::Serving as i32
                )
            }
            // Any answer: in token mode `/metrics` is 401 without an admin token.
            Server::Gateway => http()
                .get(format!("{}/metrics", self.url()))
                .send()
                .await
                .is_ok(),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) async fn channel(&self) -> Channel {
        grpc_channel(self.addr).await
    }

    pub(crate) async fn client(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel().await)
    }

    pub(crate) fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the process has logged `text` (its log reaches the harness a little later
    /// than it happens).
    pub(crate) async fn wait_for_log(&self, text: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.logs().contains(text) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never logged {text:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A backend's metrics exposition (it runs with `--metrics-addr`; its log names the
    /// address).
    pub(crate) async fn metrics(&self) -> String {
        self.wait_for_log("metrics at http://").await;
        let logs = self.logs();
        let url = logs
            .split("metrics at ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("a metrics URL")
            .to_owned();
        http().get(url).send().await.unwrap().text().await.unwrap()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// Resident memory now, in bytes (`VmRSS`).
    pub(crate) fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("process status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS line")
            * 1024
    }

    pub(crate) fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("process still running") as i32;
        nix::sys::signal::kill(Pid::from_raw(pid), signal).expect("send signal");
    }

    /// Waits for the process to exit, failing the test if it takes longer than `limit`.
    pub(crate) async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => {
                // Its last lines may still be in the pipe: the reader ends at its end.
                if let Some(reader) = self.reader.take() {
                    let _ = tokio::time::timeout(limit, reader).await;
                }
                status.expect("wait for the process")
            }
            Err(_) => panic!(
                "process still running after {limit:?}; logs:\n{}",
                self.logs()
            ),
        }
    }
}
