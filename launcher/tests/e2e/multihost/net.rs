//! The test network and what runs on it: network namespaces joined by veth pairs on a bridge
//! (a host's link set down loses its packets silently: no refusal, no reset, which loopback
//! cannot do), servers started in a host's namespace, and the load the tests put through the
//! gateway host.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use eventsys::v1::event_service_server::SERVICE_NAME;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    task::JoinSet,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{EVENTSYS, http, series_value};

/// The name the gateway's `--backends` gives, in the gateway host's own hosts file.
pub(super) const NAME: &str = "backends.test";

/// Runs `ip` with `args`; its error output on failure.
pub(super) fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The test's network: a switch namespace with a bridge, the test process's own port on it (an
/// address in a range of 198.18.0.0/15, set aside for tests), and one namespace per host.
/// Dropping it deletes every namespace and hosts file it made, and with them every link.
pub(super) struct Net {
    id: String,
    subnet: u8,
    namespaces: Vec<String>,
    etc: Vec<PathBuf>,
}

impl Net {
    fn create() -> Result<Net, String> {
        // A name of its own per network, not per process: the kernel removes a deleted
        // namespace's links a moment later, so the next test's network must not reuse them.
        static MADE: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let made = MADE.fetch_add(1, Ordering::Relaxed);
        let id = format!("evs{}n{}", pid % 100_000, made % 100);
        let mut net = Net {
            subnet: ((pid + made * 7) % 250) as u8,
            namespaces: Vec::new(),
            etc: Vec::new(),
            id,
        };
        let switch = net.switch();
        ip(&["netns", "add", &switch])?;
        net.namespaces.push(switch.clone());
        ip(&["-n", &switch, "link", "set", "lo", "up"])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        // The test's own port: a veth whose root end is deleted with the switch namespace.
        ip(&[
            "link", "add", &net.id, "type", "veth", "peer", "name", "root", "netns", &switch,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.addr(1)),
            "dev",
            &net.id,
        ])?;
        ip(&["link", "set", &net.id, "up"])?;
        ip(&["-n", &switch, "link", "set", "root", "master", "br0", "up"])?;
        Ok(net)
    }

    /// `create`, or `None` after saying SKIPPED (naming `what`) where namespaces cannot be made.
    pub(super) fn create_or_skip(what: &str) -> Option<Net> {
        match Net::create() {
            Ok(net) => Some(net),
            Err(err) => {
                // Straight to the process's stderr: the harness captures `println!` and
                // `eprintln!` of a test that passes, and a skip must be seen.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: {what}: cannot create network namespaces here ({err}); it needs root and iproute2"
                );
                None
            }
        }
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.id)
    }

    pub(super) fn namespace(&self, host: &str) -> String {
        format!("{}-{host}", self.id)
    }

    pub(super) fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, host)
    }

    /// A host on the bridge at `.{octet}`, its port on the switch named `host`.
    pub(super) fn add_host(&mut self, host: &str, octet: u8) -> Result<Ipv4Addr, String> {
        let namespace = self.namespace(host);
        let switch = self.switch();
        ip(&["netns", "add", &namespace])?;
        self.namespaces.push(namespace.clone());
        ip(&[
            "-n", &switch, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns",
            &namespace,
        ])?;
        ip(&["-n", &switch, "link", "set", host, "master", "br0", "up"])?;
        let addr = self.addr(octet);
        ip(&[
            "-n",
            &namespace,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        Ok(addr)
    }

    /// Backend hosts `hosts` at `.11`, `.12`, … and the gateway host `gw` at `.10`, whose hosts
    /// file names them all `NAME`; their addresses, then the gateway's.
    pub(super) fn backends_and_gateway(&mut self, hosts: &[&str]) -> (Vec<Ipv4Addr>, Ipv4Addr) {
        let addrs: Vec<_> = (11..)
            .zip(hosts)
            .map(|(octet, host)| self.add_host(host, octet).unwrap())
            .collect();
        let gateway = self.add_host("gw", 10).unwrap();
        self.hosts_file("gw", &addrs);
        (addrs, gateway)
    }

    /// Sets `host`'s port on the switch down (its packets vanish) or up.
    pub(super) fn link(&self, host: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch(), "link", "set", host, state]).unwrap();
    }

    /// `host`'s own `/etc/hosts` (`ip netns exec` mounts `/etc/netns/NAME/*` over `/etc`),
    /// with every address of `NAME`; written in place, so a running process sees a change.
    pub(super) fn hosts_file(&mut self, host: &str, backends: &[Ipv4Addr]) {
        let dir = PathBuf::from("/etc/netns").join(self.namespace(host));
        if !self.etc.contains(&dir) {
            std::fs::create_dir_all(&dir).unwrap();
            // Every address of a name, not only the first (glibc's `multi`).
            std::fs::write(dir.join("host.conf"), "multi on\n").unwrap();
            self.etc.push(dir.clone());
        }
        let mut text = String::from("127.0.0.1 localhost\n");
        for addr in backends {
            text.push_str(&format!("{addr} {NAME}\n"));
        }
        std::fs::write(dir.join("hosts"), text).unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for namespace in self.namespaces.iter().rev() {
            if let Err(err) = ip(&["netns", "del", namespace]) {
                eprintln!("cleanup: {err}");
            }
        }
        for dir in &self.etc {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A server in a host's namespace, killed when dropped.
pub(super) struct Remote {
    child: Child,
    logs: Arc<Mutex<String>>,
}

impl Remote {
    pub(super) fn start(net: &Net, host: &str, args: &[&str], env: &[(&str, &str)]) -> Remote {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &net.namespace(host), EVENTSYS])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env_remove("LISTEN_FDS")
            .env_remove("BACKENDS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("ip netns exec");
        let logs = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let into = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut logs = into.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        Remote { child, logs }
    }

    /// Its command line, while it runs.
    pub(super) fn cmdline(&self) -> Option<String> {
        let pid = self.child.id()?;
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(String::from_utf8_lossy(&raw).replace('\0', " "))
    }

    /// `kill -9`, as on a crash (`ip netns exec` became the server: the child is the server).
    pub(super) fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    pub(super) fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// How many of its log lines contain every one of `parts`.
    pub(super) fn lines_with(&self, parts: &[&str]) -> usize {
        self.logs()
            .lines()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .count()
    }

    /// Waits (up to `within`) until more than `seen` log lines contain every one of `parts`.
    pub(super) async fn more_lines_with(&self, parts: &[&str], seen: usize, within: Duration) {
        let started = Instant::now();
        while self.lines_with(parts) <= seen {
            assert!(
                started.elapsed() < within,
                "no new line with {parts:?} within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (up to `within`) for a log line containing `text`.
    pub(super) async fn log_line(&self, text: &str, within: Duration) -> Duration {
        let started = Instant::now();
        while !self.logs().contains(text) {
            assert!(
                started.elapsed() < within,
                "no `{text}` within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }
}

/// Starts a backend on `host` (all addresses, port 5000) with its store named by `store` (in its
/// environment, as credentials must be: never on a command line), and waits for SERVING over
/// the network.
pub(super) async fn backend(net: &Net, host: &str, addr: Ipv4Addr, store: &str) -> Remote {
    let remote = Remote::start(
        net,
        host,
        &[
            "backend",
            "--host",
            "0.0.0.0",
            "--port",
            "5000",
            "--allow-anonymous",
        ],
        &[("STORE_URI", store)],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let serving = async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}:5000"))
                .ok()?
                .connect_timeout(Duration::from_millis(500))
                .connect()
                .await
                .ok()?;
            let request = HealthCheckRequest {
                service: SERVICE_NAME.into(),
            };
            let answer = HealthClient::new(channel).check(request).await.ok()?;
            Some(answer.get_ref().status == ServingStatus::Serving as i32)
        };
        if tokio::time::timeout(Duration::from_secs(2), serving)
            .await
            .ok()
            .flatten()
            == Some(true)
        {
            return remote;
        }
        assert!(
            Instant::now() < deadline,
            "backend on {host} never served:\n{}",
            remote.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the gateway on `host` (port 3000) over the backends behind `NAME`, and waits until it
/// sees `backends` of them healthy; its base URL.
pub(super) async fn gateway(
    net: &Net,
    host: &str,
    addr: Ipv4Addr,
    backends: usize,
    args: &[&str],
) -> (Remote, String) {
    let named = format!("{NAME}:5000");
    let mut all = vec![
        "gateway",
        "--host",
        "0.0.0.0",
        "--port",
        "3000",
        "--backends",
        &named,
        "--allow-anonymous",
    ];
    all.extend_from_slice(args);
    let gateway = Remote::start(net, host, &all, &[]);
    let base = format!("http://{addr}:3000");
    until_healthy(&base, backends, &gateway).await;
    (gateway, base)
}

/// Waits (up to 30 s) until the gateway at `base` sees `backends` healthy.
pub(super) async fn until_healthy(base: &str, backends: usize, gateway: &Remote) {
    let started = Instant::now();
    loop {
        let load: Option<Value> = async {
            http()
                .get(format!("{base}/load"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()
        }
        .await;
        let healthy = load
            .as_ref()
            .and_then(|l| l["backends"].as_array())
            .map_or(0, |b| b.iter().filter(|b| b["healthy"] == true).count());
        if healthy == backends {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gateway never saw {backends} backends healthy:\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates `read` events to read and update and `doomed` more to delete one each (user `mh`):
/// the ids `load` takes.
pub(super) async fn events(
    base: &str,
    read: usize,
    doomed: usize,
) -> (Arc<Vec<String>>, Arc<Mutex<Vec<String>>>) {
    let mut ids = Vec::new();
    for _ in 0..read + doomed {
        ids.push(create(base, None).await["id"].as_str().unwrap().to_owned());
    }
    let doomed = ids.split_off(read);
    (Arc::new(ids), Arc::new(Mutex::new(doomed)))
}

/// Calls the gateway sent to `backend`, from its `/metrics`.
pub(super) async fn calls_to(base: &str, backend: &str) -> u64 {
    let text = http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    series_value(
        &text,
        &format!("gateway_backend_calls_total{{backend=\"{backend}\"}}"),
    )
}

/// What the load saw.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) ok: AtomicU64,
    pub(super) failed: Mutex<Vec<String>>,
}

/// GET, PUT and DELETE through `base` from `workers` clients until `stop`; DELETEs take events
/// from `doomed`, one each.
pub(super) async fn load(
    base: String,
    workers: usize,
    events: Arc<Vec<String>>,
    doomed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        let (base, events, doomed, stop, tally) = (
            base.clone(),
            events.clone(),
            doomed.clone(),
            stop.clone(),
            tally.clone(),
        );
        tasks.spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = &events[n % events.len()];
                let url = format!("{base}/events/{id}?userId=mh");
                let (what, request, want) = match n % 3 {
                    0 => ("GET", client.get(&url), StatusCode::OK),
                    1 => (
                        "PUT",
                        client.put(&url).json(
                            &json!({"title": format!("t{n}"), "description": "", "completed": n % 2 == 0}),
                        ),
                        StatusCode::OK,
                    ),
                    _ => {
                        let Some(id) = doomed.lock().unwrap().pop() else {
                            continue;
                        };
                        let url = format!("{base}/events/{id}?userId=mh");
                        ("DELETE", client.delete(url), StatusCode::NO_CONTENT)
                    }
                };
                match request.send().await {
                    Ok(response) if response.status() == want => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => {
                        let status = response.status();
                        let body = response.text().await.unwrap_or_default();
                        tally
                            .failed
                            .lock()
                            .unwrap()
                            .push(format!("{what} {status} {body}"));
                    }
                    Err(err) => tally.failed.lock().unwrap().push(format!("{what}: {err}")),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

pub(super) async fn create(base: &str, topic: Option<&str>) -> Value {
    let mut body = json!({"userId": "mh", "title": "multi-host"});
    if let Some(topic) = topic {
        body["topic"] = json!(topic);
    }
    let path = if topic.is_some() { "publish" } else { "events" };
    http()
        .post(format!("{base}/{path}"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
