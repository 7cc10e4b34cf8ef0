//! The system across hosts on a real (virtual) network: network namespaces joined by veth pairs
//! on a bridge, three backend hosts and a gateway host that finds them by one name in its own
//! hosts file. A backend host's link set down loses packets silently (no refusal, no reset),
//! which loopback cannot do: the gateway must stop using it by its health rule, fail no
//! idempotent request and lose no SSE event; the link back up, it rejoins; a fourth host added
//! to the name takes traffic after the next re-resolve. Needs root; SKIPPED loudly otherwise.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use eventsys::v1::event_service_server::SERVICE_NAME;
use futures::StreamExt;
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

use crate::{
    pubsub::subscribe,
    support::{EVENTSYS, EXCLUSIVE, http, series_value},
};

/// The name the gateway's `--backends` gives, in the gateway host's own hosts file.
const NAME: &str = "backends.test";

/// Runs `ip` with `args`; its error output on failure.
fn ip(args: &[&str]) -> Result<(), String> {
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
struct Net {
    id: String,
    subnet: u8,
    namespaces: Vec<String>,
    etc: Vec<PathBuf>,
}

impl Net {
    fn create() -> Result<Net, String> {
        let pid = std::process::id();
        let id = format!("evs{}", pid % 100_000);
        let mut net = Net {
            subnet: (pid % 250) as u8,
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

    fn switch(&self) -> String {
        format!("{}-sw", self.id)
    }

    fn namespace(&self, host: &str) -> String {
        format!("{}-{host}", self.id)
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, host)
    }

    /// A host on the bridge at `.{octet}`, its port on the switch named `host`.
    fn add_host(&mut self, host: &str, octet: u8) -> Result<Ipv4Addr, String> {
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

    /// Sets `host`'s port on the switch down (its packets vanish) or up.
    fn link(&self, host: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch(), "link", "set", host, state]).unwrap();
    }

    /// `host`'s own `/etc/hosts` (`ip netns exec` mounts `/etc/netns/NAME/*` over `/etc`),
    /// with every address of `NAME`; written in place, so a running process sees a change.
    fn hosts_file(&mut self, host: &str, backends: &[Ipv4Addr]) {
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
struct Remote {
    _child: Child,
    logs: Arc<Mutex<String>>,
}

impl Remote {
    fn start(net: &Net, host: &str, args: &[&str]) -> Remote {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &net.namespace(host), EVENTSYS])
            .args(args)
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
        Remote {
            _child: child,
            logs,
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits (up to `within`) for a log line containing `text`.
    async fn log_line(&self, text: &str, within: Duration) -> Duration {
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

/// Starts a backend on `host` (all addresses, port 5000) and waits for SERVING over the network.
async fn backend(net: &Net, host: &str, addr: Ipv4Addr, db: &str) -> Remote {
    let store = format!("sqlite://{db}");
    let remote = Remote::start(
        net,
        host,
        &[
            "backend",
            "--host",
            "0.0.0.0",
            "--port",
            "5000",
            "--store",
            &store,
            "--allow-anonymous",
        ],
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

/// Calls the gateway sent to `backend`, from its `/metrics`.
async fn calls_to(base: &str, backend: &str) -> u64 {
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
struct Tally {
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
}

/// GET, PUT and DELETE through `base` from `workers` clients until `stop`; DELETEs take events
/// from `doomed`, one each.
async fn load(
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

async fn create(base: &str, topic: Option<&str>) -> Value {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn across_hosts_a_blackholed_backend_fails_nothing_and_rejoins_and_the_name_scales_out() {
    let _exclusive = EXCLUSIVE.lock().await;
    let mut net = match Net::create() {
        Ok(net) => net,
        Err(err) => {
            println!(
                "SKIPPED: multi-host test: cannot create network namespaces here ({err}); it needs root and iproute2"
            );
            eprintln!("SKIPPED: multi-host test (no network namespaces: {err})");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db").display().to_string();
    let hosts = ["b1", "b2", "b3"];
    let mut addrs = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        addrs.push(net.add_host(host, 11 + i as u8).unwrap());
    }
    let gateway_addr = net.add_host("gw", 10).unwrap();
    net.hosts_file("gw", &addrs);
    let mut backends = Vec::new();
    for (host, addr) in hosts.iter().zip(&addrs) {
        backends.push(backend(&net, host, *addr, &db).await);
    }
    let gateway = Remote::start(
        &net,
        "gw",
        &[
            "gateway",
            "--host",
            "0.0.0.0",
            "--port",
            "3000",
            "--backends",
            &format!("{NAME}:5000"),
            "--resolve-interval",
            "1s",
            // Shorter than the outage below: a call left waiting on the lost host would fail.
            "--request-timeout",
            "3s",
            "--allow-anonymous",
        ],
    );
    let base = format!("http://{gateway_addr}:3000");
    // Ready with all three behind the one name.
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
        if healthy == 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gateway never saw three backends:\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Events to read and update, and to delete one each.
    let mut events = Vec::new();
    let mut doomed = Vec::new();
    for i in 0..200 {
        let id = create(&base, None).await["id"].as_str().unwrap().to_owned();
        if i < 50 {
            events.push(id);
        } else {
            doomed.push(id);
        }
    }
    let events = Arc::new(events);
    let doomed = Arc::new(Mutex::new(doomed));

    // Two SSE clients of one topic; its hub's backend is the one to lose.
    let topic = "multihost";
    let first = create(&base, Some(topic)).await["seq"].as_u64().unwrap();
    let (mut one, victim) = subscribe(format!("{base}/subscribe/{topic}"), Some(first)).await;
    let (mut two, _) = subscribe(format!("{base}/subscribe/{topic}"), Some(first)).await;
    let victim_host = hosts[addrs
        .iter()
        .position(|a| victim == format!("{a}:5000"))
        .unwrap_or_else(|| panic!("the hub's backend {victim} is none of {addrs:?}"))];

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load_task = tokio::spawn(load(
        base.clone(),
        16,
        events.clone(),
        doomed.clone(),
        stop.clone(),
        tally.clone(),
    ));
    // A publisher at ~50 events/s; what it was told is stored, the clients must get.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let publisher = tokio::spawn({
        let (base, stop, acked) = (base.clone(), stop.clone(), acked.clone());
        async move {
            let mut failed = 0;
            while !stop.load(Ordering::Relaxed) {
                let sent = http()
                    .post(format!("{base}/publish"))
                    .json(&json!({"topic": topic, "userId": "mh", "title": "live"}))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == StatusCode::OK => {
                        let body: Value = response.json().await.unwrap();
                        acked.lock().unwrap().insert(body["seq"].as_u64().unwrap());
                    }
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failed
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The victim's link goes down: its packets vanish.
    let before = calls_to(&base, &victim).await;
    let ok_at_cut = tally.ok.load(Ordering::Relaxed);
    net.link(victim_host, false);
    let cut = Instant::now();
    let removed = format!("backend={victim}");
    while !gateway
        .logs()
        .lines()
        .any(|l| l.contains("backend unhealthy: removed") && l.contains(&removed))
    {
        assert!(
            cut.elapsed() < Duration::from_secs(10),
            "{victim} never removed:\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took_out = cut.elapsed();
    let at_removal = calls_to(&base, &victim).await;
    // Down for longer than a request may take.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = calls_to(&base, &victim).await;
    assert_eq!(
        at_removal, after,
        "calls went to {victim} after it was taken out"
    );
    let served_during_fault = tally.ok.load(Ordering::Relaxed) - ok_at_cut;

    // The link back up: it rejoins and takes calls again.
    let healthy = format!("backend={victim}");
    let times_healthy = |logs: String| {
        logs.lines()
            .filter(|l| l.contains("backend healthy: receiving traffic") && l.contains(&healthy))
            .count()
    };
    let healthy_before = times_healthy(gateway.logs());
    net.link(victim_host, true);
    let back = Instant::now();
    while times_healthy(gateway.logs()) == healthy_before || calls_to(&base, &victim).await <= after
    {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "{victim} never rejoined:\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rejoined = back.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    load_task.await.unwrap();
    let failed_publishes = publisher.await.unwrap();
    let failed = tally.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} idempotent requests failed (of {}): {:?}",
        failed.len(),
        tally.ok.load(Ordering::Relaxed) + failed.len() as u64,
        &failed[..failed.len().min(10)]
    );

    // Every acknowledged event reached both clients, in order, once, with no seq skipped.
    let acked = acked.lock().unwrap().clone();
    let last = *acked.iter().next_back().unwrap();
    for frames in [&mut one, &mut two] {
        let mut seqs = Vec::new();
        while seqs.last().is_none_or(|s| *s < last) {
            let frame = tokio::time::timeout(Duration::from_secs(30), frames.next())
                .await
                .unwrap_or_else(|_| panic!("stream stalled at {:?} of {last}", seqs.last()))
                .expect("stream open")
                .expect("valid SSE");
            if frame.event == "message" {
                seqs.push(frame.id.parse::<u64>().unwrap());
            }
        }
        let expected: Vec<u64> = (first + 1..=last).collect();
        assert_eq!(seqs, expected, "a gap or a duplicate");
        assert!(acked.iter().all(|s| seqs.contains(s)));
    }

    // Scale-out: a fourth host under the same name takes calls after the next re-resolve.
    let b4 = net.add_host("b4", 14).unwrap();
    let fourth = backend(&net, "b4", b4, &db).await;
    let mut all = addrs.clone();
    all.push(b4);
    net.hosts_file("gw", &all);
    let named = Instant::now();
    let b4_backend = format!("{b4}:5000");
    gateway
        .log_line(
            &format!("backend discovered backend={b4_backend}"),
            Duration::from_secs(10),
        )
        .await;
    let discovered = named.elapsed();
    while calls_to(&base, &b4_backend).await == 0 {
        let _ = http()
            .get(format!("{base}/events/{}?userId=mh", events[0]))
            .send()
            .await;
        assert!(
            named.elapsed() < Duration::from_secs(15),
            "{b4_backend} never called:\n{}",
            gateway.logs()
        );
    }
    let scaled = named.elapsed();

    println!(
        "multi-host: {victim} blackholed: taken out after {took_out:?} ({} calls to it before, {} \
         after removal, none in the 4 s since); {served_during_fault} GET/PUT/DELETE served from the \
         cut to then, 0 failed ({} in the whole run); SSE: 2 clients got every one of {} events ({} acknowledged, \
         {failed_publishes} publishes failed during the fault) in order without gap; rejoined \
         and called {rejoined:?} after its link came back; a fourth host discovered {discovered:?} \
         and called {scaled:?} after it was added to the name",
        before,
        at_removal,
        tally.ok.load(Ordering::Relaxed),
        last - first,
        acked.len(),
    );
    drop((fourth, backends, gateway));
}
