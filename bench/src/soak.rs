//! `soak`: a long run under faults the operator injects meanwhile (killed backends, a restarted
//! gateway). Idempotent requests (get, list, update) at a fixed concurrency, publishes at a
//! fixed rate, and SSE subscribers that reconnect with `Last-Event-ID` whenever their stream
//! breaks, as browsers do; at the end, every subscriber must hold every stored event once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::json;
use tokio::task::JoinSet;

use crate::{
    modes::{micros_now, run_id, stored},
    report::{Recorder, Report},
    tail::Order,
    target::Target,
};

/// What one subscriber saw, across its reconnects.
#[derive(Default)]
struct Seen {
    order: Order,
    reconnects: u64,
}

/// Reads the topic until `done` says how many events there are and it has them, reconnecting
/// after `last` whenever the stream ends.
async fn subscriber(base: String, topic: String, done: Arc<AtomicU64>, stop: Instant) -> Seen {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client");
    let mut seen = Seen::default();
    loop {
        let expected = done.load(Ordering::Relaxed);
        if (expected > 0 && seen.order.last >= expected) || Instant::now() > stop {
            return seen;
        }
        let mut request = client.get(format!("{base}/subscribe/{topic}"));
        if seen.order.last > 0 {
            request = request.header("Last-Event-ID", seen.order.last.to_string());
        }
        let response = match request.send().await {
            Ok(r) if r.status().is_success() => r,
            _ => {
                seen.reconnects += 1;
                let pause = 100 + u64::from(fastrand::u16(..400));
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
        };
        let mut frames = response.bytes_stream().eventsource();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), frames.next()).await;
            let frame = match next {
                // Quiet: check whether the run is over.
                Err(_) => {
                    let expected = done.load(Ordering::Relaxed);
                    if expected > 0 && seen.order.last >= expected || Instant::now() > stop {
                        return seen;
                    }
                    continue;
                }
                Ok(Some(Ok(frame))) => frame,
                Ok(_) => break,
            };
            seen.order.record(&frame);
        }
        seen.reconnects += 1;
    }
}

pub(crate) struct SoakSettings {
    pub(crate) duration: Duration,
    pub(crate) subscribers: u32,
    pub(crate) publish_rate: u32,
    pub(crate) concurrency: u32,
}

/// Runs the soak; the report's `recorder` part is the idempotent requests.
pub(crate) async fn soak(
    target: Arc<Target>,
    recorder: Arc<Recorder>,
    settings: SoakSettings,
) -> Result<(Duration, Report, bool), String> {
    let base = target
        .base()
        .ok_or("soak needs the gateway (--gateway)")?
        .to_owned();
    let run = run_id();
    let (topic, user) = (format!("soak-{run}"), format!("soak-{run}"));
    let id = loop {
        if let (_, Some(id)) = target.create(&user, "soak").await {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let started = Instant::now();
    let ends = started + settings.duration;
    let done = Arc::new(AtomicU64::new(0));
    let mut subscribers = JoinSet::new();
    for _ in 0..settings.subscribers {
        let give_up = ends + Duration::from_secs(120);
        subscribers.spawn(subscriber(
            base.clone(),
            topic.clone(),
            done.clone(),
            give_up,
        ));
    }

    let publishes = Arc::new(Recorder::default());
    let over = Arc::new(AtomicBool::new(false));
    let mut load = JoinSet::new();
    for w in 0..settings.concurrency {
        let (target, recorder, over) = (target.clone(), recorder.clone(), over.clone());
        let (id, user) = (id.clone(), user.clone());
        load.spawn(async move {
            let mut i = w;
            while !over.load(Ordering::Relaxed) {
                let outcome = match i % 3 {
                    0 => target.get(&id, &user).await,
                    1 => target.list(&user).await,
                    _ => target.update(&id, &user).await,
                };
                recorder.record(outcome);
                i += 1;
            }
        });
    }
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / settings.publish_rate.max(1));
    let mut sending = JoinSet::new();
    while Instant::now() < ends {
        ticks.tick().await;
        let (target, publishes, topic) = (target.clone(), publishes.clone(), topic.clone());
        sending.spawn(async move { publishes.record(target.publish(&topic, micros_now()).await) });
        while sending.try_join_next().is_some() {}
    }
    over.store(true, Ordering::Relaxed);
    sending.join_all().await;
    load.join_all().await;
    let elapsed = started.elapsed();

    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let count = u64::from(stored(&client, &base, &topic).await?);
    done.store(count, Ordering::Relaxed);
    let seen = subscribers.join_all().await;
    let complete = seen
        .iter()
        .filter(|s| s.order.received == count && s.order.missing == 0 && s.order.duplicates == 0)
        .count();
    let sum = |f: fn(&Seen) -> u64| seen.iter().map(f).sum::<u64>();
    let published = publishes.report("publishes", elapsed);
    let mut report = recorder.report("idempotent requests", elapsed);
    report.extra.insert("stored_events".into(), json!(count));
    report.extra.insert(
        "publishes".into(),
        json!({"acknowledged": published.ok, "failed": published.failed(), "errors": published.errors}),
    );
    report.extra.insert(
        "subscribers".into(),
        json!({
            "total": settings.subscribers,
            "complete": complete,
            "missing_events": sum(|s| s.order.missing),
            "duplicate_events": sum(|s| s.order.duplicates),
            "reconnects": sum(|s| s.reconnects),
        }),
    );
    let whole = complete == settings.subscribers as usize;
    Ok((elapsed, report, whole))
}
