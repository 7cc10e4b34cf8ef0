//! Creates and publishes that survive their backend's death: the gateway names each new event
//! (its id) before sending it, so it can send it again to another backend when the first dies
//! mid-call, and the store keeps it once: one event, one `seq`, delivered once.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use eventsvc::store::{EventStore, SqliteStore};
use futures::StreamExt;
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    pubsub::subscribe,
    support::{
        EXCLUSIVE, Launch, Local, Relay, System, http, stored_ids_at, until_answered, wait_healthy,
    },
};

/// The first attempt commits on a backend that dies before it answers (a relay to a real
/// backend that holds the answer, then is killed); the gateway sends the publish again to the
/// other backend, which finds the event stored and answers with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_retried_after_its_backend_committed_and_died_is_stored_and_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let real = Local::backend(&db, &[]).await;
    let dying = Relay::holding(real.addr, "Publish").await;
    // The second backend's port, taken now; it serves once the first has committed.
    let spare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let spare_addr = spare.local_addr().unwrap();
    let gateway = Local::gateway(&[dying.addr, spare_addr], &[]).await;
    let base = gateway.url();
    wait_healthy(gateway.addr, None, 1).await;

    // A live subscriber, its stream on the dying backend.
    let topic = "exactly.once";
    let (mut frames, _) = subscribe(format!("{base}/subscribe/{topic}"), None).await;

    let publish = tokio::spawn({
        let base = base.clone();
        async move {
            http()
                .post(format!("{base}/publish"))
                .json(&json!({"topic": topic, "userId": "once", "title": "survives"}))
                .send()
                .await
                .unwrap()
        }
    });
    // The real backend has committed it; the answer is held.
    dying.held().await;
    let store = SqliteStore::open(db.clone()).await.unwrap();
    let committed = store.events_after(topic, 0, 10).await.unwrap()[0].clone();
    // The other backend joins, then the first dies before it answers.
    let _spare = Local::backend_on(spare, &db, &[]).await;
    wait_healthy(gateway.addr, None, 2).await;
    assert!(
        !publish.is_finished(),
        "the first attempt answered before the kill"
    );
    dying.kill();

    let answer = publish.await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "{:?}", answer.text().await);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["id"], committed.id.to_string());
    assert_eq!(body["seq"], committed.seq);
    let stored = store.events_after(topic, 0, 10).await.unwrap();
    assert_eq!(stored.len(), 1, "stored once: {stored:?}");

    // Delivered once: the one event, then nothing more.
    let frame = tokio::time::timeout(Duration::from_secs(20), frames.next())
        .await
        .expect("the event is delivered")
        .unwrap()
        .unwrap();
    assert_eq!(frame.id, committed.seq.to_string());
    let second = http()
        .post(format!("{base}/publish"))
        .json(&json!({"topic": topic, "userId": "once", "title": "next"}))
        .send()
        .await
        .unwrap();
    let next: Value = second.json().await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(20), frames.next())
        .await
        .expect("the next event is delivered")
        .unwrap()
        .unwrap();
    assert_eq!(frame.id, next["seq"].to_string(), "no duplicate in between");
    assert_eq!(next["seq"], committed.seq + 1, "no seq spent on the retry");
}

/// Creates and publishes from eight clients (half of them sending an `Idempotency-Key`) while
/// the backend feeding a live subscriber is killed with `kill -9`: none fails, every
/// acknowledged event is stored exactly once, and the subscriber gets every publish once, in
/// `seq` order, without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_and_publishes_under_a_kill_fail_none_and_are_stored_and_delivered_once() {
    let _exclusive = EXCLUSIVE.lock().await;
    let system = System::launch(3).await;
    let base = system.gateway.url();
    let topic = "kill.writes";
    let (mut frames, feeding) = subscribe(format!("{base}/subscribe/{topic}"), None).await;
    let victim = system
        .backends
        .iter()
        .find(|b| b.addr.to_string() == feeding)
        .expect("the subscription's backend is one of the system's");
    let Answered {
        created,
        published,
        failed: _,
        slowest_failure: _,
    } = MixedLoad::through_a_kill(&base, topic, (200, 1000), || victim.signal(Signal::SIGKILL))
        .await;

    // Each acknowledged id once in the store, and nothing else stored by these clients.
    let stored = stored_ids_at(&format!("sqlite://{}", system.db.display()), "kill-writes").await;
    let unique: HashSet<_> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "an event stored twice");
    let acknowledged: HashSet<_> = created.iter().collect();
    assert_eq!(unique, acknowledged, "stored and acknowledged differ");

    // The subscriber, across the death of the backend feeding it: seqs 1..=N, each once.
    let acknowledged_seqs = published;
    let n = acknowledged_seqs.len();
    assert_eq!(
        acknowledged_seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "publishes acknowledged with seqs 1..={n}, none skipped or repeated"
    );
    let delivered = crate::pubsub::read(&mut frames, n).await;
    assert_eq!(
        delivered, acknowledged_seqs,
        "delivered once each, in order"
    );
    // Nothing more in between: the next publish is the next frame.
    let next = http()
        .post(format!("{base}/publish"))
        .json(&json!({"topic": topic, "userId": "kill-writes", "title": "last"}))
        .send()
        .await
        .unwrap();
    assert!(next.status().is_success());
    let delivered = crate::pubsub::read(&mut frames, 1).await;
    assert_eq!(delivered, [n as u64 + 1]);
    println!(
        "kill -9 of the subscription's backend under writes: {} creates and publishes \
         acknowledged, 0 failed, each stored once; {n} publishes delivered once, in order",
        created.len()
    );
}

/// The pid of the process holding the flock on `lock` (the SQLite file's writer), from
/// `/proc/locks`.
fn holder_of(lock: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(lock).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 4242 fe:01:1234 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let file = fields.get(5)?;
        (fields.get(1) == Some(&"FLOCK") && file.rsplit(':').next()? == inode.to_string())
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

/// Waits (bounded) for a backend of `system` other than `not` to hold the writer's lock.
async fn writing_backend(system: &System<crate::support::Process>, not: Option<u32>) -> u32 {
    let lock = std::path::PathBuf::from(format!("{}-writer.lock", system.db.display()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = holder_of(&lock).filter(|pid| Some(*pid) != not)
            && system.backends.iter().any(|b| b.pid() == pid)
        {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no backend took the writer's lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the backend `writer` (a pid), and no other, says in its health that it commits
/// every backend's writes (what the gateway sends writes by); the backends probe once a second.
async fn says_it_writes(system: &System<crate::support::Process>, writer: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut says = Vec::new();
        for backend in &system.backends {
            // A killed one refuses the connection: it says nothing.
            let Ok(channel) = tonic::transport::Channel::from_shared(backend.url())
                .expect("valid URL")
                .connect()
                .await
            else {
                continue;
            };
            let mut health = HealthClient::new(channel);
            let request = HealthCheckRequest {
                service: eventsys::WRITER_HEALTH.into(),
            };
            if let Ok(answer) = health.check(request).await
                && answer.into_inner().status == ServingStatus::Serving as i32
            {
                says.push(backend.pid());
            }
        }
        if says == [writer] {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backends saying they write: {says:?}, the lock's holder: {writer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The three backends on one file send their writes to the one holding its writer's lock;
/// that one is killed with `kill -9` under creates and publishes: none fails (a write it had
/// taken and not answered is committed again under its id, found stored or not), every
/// acknowledged event is stored exactly once, the publishes' seqs run 1..=N, and another
/// backend takes the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_of_the_backend_committing_everyones_writes_loses_and_repeats_none() {
    let _exclusive = EXCLUSIVE.lock().await;
    let system = System::launch(3).await;
    let base = system.gateway.url();
    let leader = writing_backend(&system, None).await;
    says_it_writes(&system, leader).await;
    let victim = system.backends.iter().find(|b| b.pid() == leader).unwrap();
    let Answered {
        created,
        published,
        failed,
        slowest_failure: _,
    } = MixedLoad::through_a_kill(&base, "kill.leader", (300, 1000), || {
        victim.signal(Signal::SIGKILL)
    })
    .await;
    none_failed(&created, &failed);
    let successor = writing_backend(&system, Some(leader)).await;
    says_it_writes(&system, successor).await;

    let stored = stored_ids_at(&format!("sqlite://{}", system.db.display()), "kill-writes").await;
    let unique: HashSet<_> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "an event stored twice");
    let acknowledged: HashSet<_> = created.iter().collect();
    assert_eq!(unique, acknowledged, "stored and acknowledged differ");
    let n = published.len();
    assert_eq!(
        published,
        (1..=n as u64).collect::<Vec<_>>(),
        "publishes acknowledged with seqs 1..={n}, none skipped or repeated"
    );
    println!(
        "kill -9 of the writing backend (pid {leader}) under writes: {} acknowledged, 0 failed, \
         each stored once; pid {successor} writes now",
        created.len()
    );
}

/// Three backends on one file capped at 2 MiB, sixteen clients creating 64 KiB events at once
/// until each is refused: the writes are committed in batches by one process, and the batches
/// that meet the cap fail. Every refusal is the contract's 503 "store is full", and the file
/// holds exactly the events acknowledged: none of a refused batch, all of an accepted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_filling_under_concurrent_writes_keeps_exactly_what_it_acknowledged() {
    let _exclusive = EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let max = (2 * 1024 * 1024).to_string();
    let mut backends = Vec::new();
    for _ in 0..3 {
        let backend = Launch::backend(&db).flags(&["--store-max-bytes", &max]);
        backends.push(backend.start().await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let gateway = Launch::gateway(&addrs).start().await;
    wait_healthy(gateway.addr, None, 3).await;
    let base = gateway.url();
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let base = base.clone();
            tokio::spawn(async move {
                let event = json!({
                    "userId": "filling",
                    "title": format!("client {c}"),
                    "description": "d".repeat(64 * 1024 - 1),
                });
                let mut acknowledged = Vec::new();
                // A 2 MiB file holds a few dozen: each client is refused long before this.
                for _ in 0..100 {
                    let response = http()
                        .post(format!("{base}/events"))
                        .json(&event)
                        .send()
                        .await
                        .unwrap();
                    let status = response.status();
                    let body: Value = response.json().await.unwrap();
                    if status != StatusCode::CREATED {
                        return (acknowledged, Some((status, body)));
                    }
                    acknowledged.push(body["id"].as_str().unwrap().to_owned());
                }
                (acknowledged, None)
            })
        })
        .collect();
    let mut acknowledged = HashSet::new();
    for client in clients {
        let (ids, refusal) = client.await.unwrap();
        let (status, body) = refusal.expect("the file never filled");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["message"], "store is full", "{body}");
        acknowledged.extend(ids);
    }
    assert!(acknowledged.len() > 5, "{} stored", acknowledged.len());
    let stored = stored_ids_at(&format!("sqlite://{}", db.display()), "filling").await;
    let unique: HashSet<_> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "an event stored twice");
    assert_eq!(unique, acknowledged, "stored and acknowledged differ");
    println!(
        "a 2 MiB file under 16 writers: {} acknowledged and stored, 16 refused 503",
        acknowledged.len()
    );
}

/// Asserts that no write of a `MixedLoad` failed, showing the first few that did.
fn none_failed(created: &[String], failed: &[String]) {
    assert!(
        failed.is_empty(),
        "{} of {} writes failed: {:?}",
        failed.len(),
        created.len() + failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// What a `MixedLoad` got answered.
pub(crate) struct Answered {
    /// The ids of the events acknowledged (created or published).
    pub(crate) created: Vec<String>,
    /// The seqs of the publishes acknowledged, ascending.
    pub(crate) published: Vec<u64>,
    /// Every write that failed: what, the status and the body.
    pub(crate) failed: Vec<String>,
    /// How long the slowest failure took to be answered (a hang shows here).
    pub(crate) slowest_failure: Duration,
}

/// Creates (user `kill-writes`) and publishes (on one topic) from eight clients, half of them
/// sending an `Idempotency-Key` (of this load's own: loads one after another never share one),
/// until stopped.
pub(crate) struct MixedLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    created: Arc<Mutex<Vec<String>>>,
    published: Arc<Mutex<Vec<u64>>>,
    failed: Arc<Mutex<Vec<String>>>,
    slowest_failure: Arc<Mutex<Duration>>,
    workers: tokio::task::JoinSet<()>,
}

impl MixedLoad {
    pub(crate) fn start(base: &str, topic: &str) -> MixedLoad {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let created = Arc::new(Mutex::new(Vec::new()));
        let published = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let slowest_failure = Arc::new(Mutex::new(Duration::ZERO));
        let mut workers = tokio::task::JoinSet::new();
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        for worker in 0..8 {
            let run = run.clone();
            let (base, topic, stop, created, published, failed, slowest_failure) = (
                base.to_owned(),
                topic.to_owned(),
                stop.clone(),
                created.clone(),
                published.clone(),
                failed.clone(),
                slowest_failure.clone(),
            );
            workers.spawn(async move {
                let client = http();
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let title = format!("w{worker}-{n}");
                    let (path, body) = if n.is_multiple_of(2) {
                        ("events", json!({"userId": "kill-writes", "title": title}))
                    } else {
                        (
                            "publish",
                            json!({"topic": topic, "userId": "kill-writes", "title": title}),
                        )
                    };
                    let mut request = client.post(format!("{base}/{path}")).json(&body);
                    if worker % 2 == 0 {
                        request = request.header("idempotency-key", format!("{run}-w{worker}-{n}"));
                    }
                    let sent = std::time::Instant::now();
                    let answer = request.send().await;
                    if !answer.as_ref().is_ok_and(|r| r.status().is_success()) {
                        let mut slowest = slowest_failure.lock().unwrap();
                        *slowest = (*slowest).max(sent.elapsed());
                    }
                    match answer {
                        Ok(r) if r.status().is_success() => {
                            let body: Value = r.json().await.unwrap();
                            created
                                .lock()
                                .unwrap()
                                .push(body["id"].as_str().unwrap().to_owned());
                            if let Some(seq) = body["seq"].as_u64() {
                                published.lock().unwrap().push(seq);
                            }
                        }
                        Ok(r) => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            failed
                                .lock()
                                .unwrap()
                                .push(format!("{path} {status} {text}"));
                        }
                        Err(err) => failed.lock().unwrap().push(format!("{path}: {err}")),
                    }
                }
            });
        }
        MixedLoad {
            stop,
            created,
            published,
            failed,
            slowest_failure,
            workers,
        }
    }

    /// Runs the load through `kill`: `before` writes answered before it, `after` more after
    /// it, then stops; none may have failed.
    pub(crate) async fn through_a_kill(
        base: &str,
        topic: &str,
        counts: (usize, usize),
        kill: impl FnOnce(),
    ) -> Answered {
        let answered = MixedLoad::answered_through_a_kill(base, topic, counts, kill).await;
        none_failed(&answered.created, &answered.failed);
        answered
    }

    /// `through_a_kill`, failures left to the caller to judge.
    pub(crate) async fn answered_through_a_kill(
        base: &str,
        topic: &str,
        (before, after): (usize, usize),
        kill: impl FnOnce(),
    ) -> Answered {
        let load = MixedLoad::start(base, topic);
        until_answered("writes before the kill", before, || load.answered()).await;
        kill();
        let at_kill = load.answered();
        until_answered("writes after the kill", at_kill + after, || load.answered()).await;
        load.stop().await
    }

    /// Writes answered so far, failures included.
    pub(crate) fn answered(&self) -> usize {
        self.created.lock().unwrap().len() + self.failed.lock().unwrap().len()
    }

    /// Stops the clients once their writes in flight are answered.
    pub(crate) async fn stop(mut self) -> Answered {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        while self.workers.join_next().await.is_some() {}
        let mut published = self.published.lock().unwrap().clone();
        published.sort_unstable();
        Answered {
            created: self.created.lock().unwrap().clone(),
            published,
            failed: self.failed.lock().unwrap().clone(),
            slowest_failure: *self.slowest_failure.lock().unwrap(),
        }
    }
}
