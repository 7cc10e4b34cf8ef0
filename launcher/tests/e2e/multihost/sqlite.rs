//! On SQLite (one file the hosts share): a backend host's link set down under load. The
//! gateway must stop using it by its health rule, fail no idempotent request and lose no SSE
//! event; the link back up, it rejoins; a fourth host added to the name takes traffic after the
//! next re-resolve.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::net::{Net, Tally, backend, calls_to, create, events, gateway, load};
use crate::{
    pubsub::subscribe,
    support::{EXCLUSIVE, http},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn across_hosts_a_blackholed_backend_fails_nothing_and_rejoins_and_the_name_scales_out() {
    let _exclusive = EXCLUSIVE.lock().await;
    let Some(mut net) = Net::create_or_skip("multi-host test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("events.db").display());
    let hosts = ["b1", "b2", "b3"];
    let (addrs, gateway_addr) = net.backends_and_gateway(&hosts);
    let mut backends = Vec::new();
    for (host, addr) in hosts.iter().zip(&addrs) {
        backends.push(backend(&net, host, *addr, &store).await);
    }
    let (gateway, base) = gateway(
        &net,
        "gw",
        gateway_addr,
        3,
        // Shorter than the outage below: a call left waiting on the lost host would fail.
        &["--resolve-interval", "1s", "--request-timeout", "3s"],
    )
    .await;

    // Events to read and update, and to delete one each.
    let (events, doomed) = events(&base, 50, 150).await;

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
    let fourth = backend(&net, "b4", b4, &store).await;
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
