//! On PostgreSQL, on a host of its own: three backends on three hosts reach it over the network
//! with a password (in their environment, never on a command line or in a log), the gateway on
//! a fourth host. Under creates and publishes, reads, updates and deletes, and with two live
//! SSE subscribers, in turn:
//! 1. the database host's link goes down for several seconds: requests fail fast with 503
//!    inside their deadline, `/readyz` says why, nothing acknowledged is lost, and everything
//!    recovers by itself when the link returns, the subscribers resuming from their last `seq`;
//! 2. a backend host's link goes down: nothing fails;
//! 3. a backend is killed with `kill -9`: nothing fails.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use testdb::{PostgresServer, PostgresSetup};

use super::net::{Net, Tally, backend, events, gateway, load, until_healthy};
use crate::{
    pubsub::{Frames, in_order, read, subscribe},
    support::{EXCLUSIVE, publish_refused_with_503, readyz_becomes, stored_ids_at, until_answered},
    writes::{Answered, MixedLoad},
};

/// The GET/PUT/DELETE clients of a phase, beside a `MixedLoad`.
struct Reads {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    task: tokio::task::JoinHandle<()>,
}

impl Reads {
    fn start(base: &str, events: &Arc<Vec<String>>, doomed: &Arc<Mutex<Vec<String>>>) -> Reads {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let task = tokio::spawn(load(
            base.to_owned(),
            8,
            events.clone(),
            doomed.clone(),
            stop.clone(),
            tally.clone(),
        ));
        Reads { stop, tally, task }
    }

    /// Stops them; (answered, what failed).
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let failed = self.tally.failed.lock().unwrap().clone();
        (self.tally.ok.load(Ordering::Relaxed), failed)
    }
}

/// Asserts that nothing of a phase failed.
fn none_failed(phase: &str, writes: &Answered, reads: &(u64, Vec<String>)) {
    let failed: Vec<_> = writes.failed.iter().chain(&reads.1).collect();
    assert!(
        failed.is_empty(),
        "{phase}: {} of {} requests failed: {:?}",
        failed.len(),
        writes.created.len() as u64 + reads.0 + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
}

/// Reads `frames` up to `newest`: 1..=newest once each, in order.
async fn all_through(frames: &mut Frames, from: u64, newest: u64) {
    let delivered = read(frames, (newest + 1 - from) as usize).await;
    in_order(&delivered, from);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn across_hosts_on_postgresql_a_lost_database_gives_503s_and_recovers_and_lost_backends_fail_nothing()
 {
    let _exclusive = EXCLUSIVE.lock().await;
    let Some(mut net) = Net::create_or_skip("multi-host test on PostgreSQL") else {
        return;
    };
    let db_addr = net.add_host("db", 20).unwrap();
    let hosts = ["b1", "b2", "b3"];
    let (addrs, gateway_addr) = net.backends_and_gateway(&hosts);
    // The test's own port may administer it; every other host logs in with a password.
    let hba = format!(
        "local all all trust\nhost all postgres {}/32 trust\nhost all all {}/24 scram-sha-256\n",
        net.addr(1),
        net.addr(0),
    );
    let Some(server) = PostgresServer::start_with(
        "multi-host test on PostgreSQL",
        PostgresSetup {
            host: db_addr.into(),
            netns: Some(net.namespace("db")),
            hba: Some(hba),
            ..PostgresSetup::default()
        },
    ) else {
        return;
    };
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    server.sql(
        "postgres",
        &format!("CREATE ROLE events LOGIN PASSWORD '{password}'"),
    );
    server.sql("postgres", "CREATE DATABASE events OWNER events");
    let store_uri = format!("postgres://events:{password}@{}/events", server.address());
    let mut backends = Vec::new();
    for (host, addr) in hosts.iter().zip(&addrs) {
        backends.push(backend(&net, host, *addr, &store_uri).await);
    }
    // The default request deadline (10 s), which every request keeps through the outages below.
    let (gateway, base) = gateway(&net, "gw", gateway_addr, 3, &["--resolve-interval", "1s"]).await;

    // Events to read and update, and to delete one each.
    let (events, doomed) = events(&base, 50, 250).await;
    let topic = "multihost.pg";
    let (mut one, _) = subscribe(format!("{base}/subscribe/{topic}"), None).await;
    let (mut two, _) = subscribe(format!("{base}/subscribe/{topic}"), None).await;
    let mut acknowledged = Vec::new();

    // 1. The database host cut off.
    let writes = MixedLoad::start(&base, topic);
    until_answered("writes before the cut", 100, || writes.answered()).await;
    net.link("db", false);
    let cut = Instant::now();
    let (not_ready_after, not_ready) = readyz_becomes(
        &base,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(15),
    )
    .await;
    let why = not_ready["message"].as_str().unwrap().to_owned();
    assert!(why.contains("3 NOT_SERVING"), "{not_ready}");
    assert!(why.contains("store does not answer"), "{not_ready}");
    let refused_after = publish_refused_with_503(&base, topic).await;
    assert!(
        refused_after < Duration::from_secs(2),
        "503 after {refused_after:?}"
    );
    // Several seconds without the database, as a network partition would last.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(cut.elapsed())).await;
    net.link("db", true);
    let back = Instant::now();
    let (ready_after, _) = readyz_becomes(&base, StatusCode::OK, Duration::from_secs(30)).await;
    let at_return = writes.answered();
    until_answered("writes after the link returned", at_return + 200, || {
        writes.answered()
    })
    .await;
    let recovered_after = back.elapsed();
    let cut_off = writes.stop().await;
    for failure in &cut_off.failed {
        assert!(failure.contains(" 503 "), "{failure}");
    }
    assert!(
        cut_off.slowest_failure < Duration::from_secs(10),
        "a request failed only after {:?}, past its deadline",
        cut_off.slowest_failure
    );
    acknowledged.extend(cut_off.created.iter().cloned());

    // 2. A backend host cut off, then back (all three serving again first).
    until_healthy(&base, 3, &gateway).await;
    let writes = MixedLoad::start(&base, topic);
    let reads = Reads::start(&base, &events, &doomed);
    until_answered("writes before the backend's cut", 100, || writes.answered()).await;
    let victim = hosts[1];
    let removed = format!("backend={}:5000", addrs[1]);
    let removed = ["backend unhealthy: removed", &removed];
    let removals = gateway.lines_with(&removed);
    net.link(victim, false);
    gateway
        .more_lines_with(&removed, removals, Duration::from_secs(10))
        .await;
    let at_removal = writes.answered();
    until_answered(
        "writes while a backend is cut off",
        at_removal + 200,
        || writes.answered(),
    )
    .await;
    net.link(victim, true);
    let at_return = writes.answered();
    until_answered("writes after the backend returned", at_return + 100, || {
        writes.answered()
    })
    .await;
    let host_lost = writes.stop().await;
    let host_lost_reads = reads.stop().await;
    none_failed("a backend host cut off", &host_lost, &host_lost_reads);
    acknowledged.extend(host_lost.created.iter().cloned());

    // 3. kill -9 of the backend feeding a new subscriber (all three serving again first).
    until_healthy(&base, 3, &gateway).await;
    let newest = newest_seq(&server, topic).await;
    let (mut three, feeding) = subscribe(format!("{base}/subscribe/{topic}"), Some(newest)).await;
    let writes = MixedLoad::start(&base, topic);
    let reads = Reads::start(&base, &events, &doomed);
    until_answered("writes before the kill", 100, || writes.answered()).await;
    let killed = addrs
        .iter()
        .position(|a| feeding == format!("{a}:5000"))
        .unwrap_or_else(|| panic!("the stream's backend {feeding} is none of {addrs:?}"));
    backends[killed].kill();
    let at_kill = writes.answered();
    until_answered("writes after the kill", at_kill + 300, || writes.answered()).await;
    let killed_load = writes.stop().await;
    let killed_reads = reads.stop().await;
    none_failed("a backend killed", &killed_load, &killed_reads);
    acknowledged.extend(killed_load.created.iter().cloned());

    // Nothing acknowledged lost: every event acknowledged is in the database.
    let stored: HashSet<_> = stored_ids_at(&server.uri("events"), "kill-writes")
        .await
        .into_iter()
        .collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged {id} lost");
    }
    // Every subscriber, across all three: every event once, in order.
    let last = newest_seq(&server, topic).await;
    all_through(&mut one, 1, last).await;
    all_through(&mut two, 1, last).await;
    all_through(&mut three, newest + 1, last).await;

    // The password: in no log, on no command line.
    for remote in backends.iter().chain([&gateway]) {
        assert!(!remote.logs().contains(&password), "a log has the password");
    }
    for remote in &backends[..] {
        if let Some(cmdline) = remote.cmdline() {
            assert!(!cmdline.contains(&password), "a command line has it");
        }
    }
    println!(
        "multi-host on PostgreSQL: database cut off for 6 s: /readyz 503 after {not_ready_after:?} \
         ({why}); a publish refused with 503 in {refused_after:?}; {} writes failed, all 503, the \
         slowest in {:?}; ready again {ready_after:?} after the link returned, 200 writes more \
         within {recovered_after:?}. A backend host cut off: {} writes and {} reads, 0 failed. \
         kill -9 of a backend: {} writes and {} reads, 0 failed. {} acknowledged, none lost; 3 \
         subscribers got every event through seq {last} once, in order",
        cut_off.failed.len(),
        cut_off.slowest_failure,
        host_lost.created.len(),
        host_lost_reads.0,
        killed_load.created.len(),
        killed_reads.0,
        acknowledged.len(),
    );
    drop((backends, gateway));
}

/// The newest `seq` of `topic`, from the database.
async fn newest_seq(server: &PostgresServer, topic: &str) -> u64 {
    server
        .sql(
            "events",
            &format!("SELECT COALESCE(MAX(seq), 0) FROM events WHERE topic = '{topic}'"),
        )
        .parse()
        .unwrap()
}
