//! The workloads: `mix` (the old test client's create/update/get/delete cycle per user),
//! `closed` (fixed concurrency), `rate` (fixed arrival rate) and `fanout` (SSE subscribers,
//! publish-to-delivery latency, and a check that every subscriber got every event once); the
//! long run under faults is `soak`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{
    report::{Outcome, Recorder, Report},
    target::Target,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Endpoint {
    /// GET one event.
    Get,
    /// POST a new event.
    Post,
    /// GET a user's events.
    List,
}

/// When a closed or rate run stops.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    Requests(u64),
    Duration(Duration),
}

/// A run identifier, so runs never read each other's events.
pub(crate) fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

pub(crate) fn micros_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

pub(crate) async fn mix(
    target: Arc<Target>,
    recorder: Arc<Recorder>,
    users: u32,
    iterations: u32,
) -> Duration {
    let run = run_id();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for u in 0..users {
        let (target, recorder) = (target.clone(), recorder.clone());
        let user = format!("bench-{run}-{u}");
        tasks.spawn(async move {
            for i in 0..iterations {
                let (created, id) = target.create(&user, &format!("event {i}")).await;
                recorder.record(created);
                if let Some(id) = id {
                    recorder.record(target.update(&id, &user).await);
                    recorder.record(target.get(&id, &user).await);
                    recorder.record(target.delete(&id, &user).await);
                }
                recorder.record(target.list(&user).await);
            }
        });
    }
    tasks.join_all().await;
    started.elapsed()
}

/// One request of `endpoint` (reads use `id`, created beforehand).
async fn one(target: &Target, endpoint: Endpoint, id: &str, user: &str) -> Outcome {
    match endpoint {
        Endpoint::Get => target.get(id, user).await,
        Endpoint::Post => target.create(user, "bench").await.0,
        Endpoint::List => target.list(user).await,
    }
}

async fn fixture(target: &Target, user: &str) -> Result<String, String> {
    match target.create(user, "read by the benchmark").await {
        (_, Some(id)) => Ok(id),
        (outcome, None) => Err(format!(
            "cannot create the event to read: {}",
            outcome.error.unwrap_or_default()
        )),
    }
}

pub(crate) async fn closed(
    target: Arc<Target>,
    recorder: Arc<Recorder>,
    endpoint: Endpoint,
    concurrency: u32,
    limit: Limit,
    id: Option<String>,
) -> Result<Duration, String> {
    let user = format!("bench-{}", run_id());
    let id = match (endpoint, id) {
        (Endpoint::Get, None) => fixture(&target, &user).await?,
        (_, id) => id.unwrap_or_default(),
    };
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (target, recorder, issued, id, user) = (
            target.clone(),
            recorder.clone(),
            issued.clone(),
            id.clone(),
            user.clone(),
        );
        tasks.spawn(async move {
            loop {
                let more = match limit {
                    Limit::Requests(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
                    Limit::Duration(d) => started.elapsed() < d,
                };
                if !more {
                    return;
                }
                recorder.record(one(&target, endpoint, &id, &user).await);
            }
        });
    }
    tasks.join_all().await;
    Ok(started.elapsed())
}

/// Open loop: requests start on schedule whether or not earlier ones have finished.
pub(crate) async fn rate(
    target: Arc<Target>,
    recorder: Arc<Recorder>,
    endpoint: Endpoint,
    per_second: u32,
    limit: Limit,
) -> Result<Duration, String> {
    let user = format!("bench-{}", run_id());
    let id = match endpoint {
        Endpoint::Get => fixture(&target, &user).await?,
        _ => String::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut issued = 0u64;
    loop {
        let more = match limit {
            Limit::Requests(n) => issued < n,
            Limit::Duration(d) => started.elapsed() < d,
        };
        if !more {
            break;
        }
        tick.tick().await;
        issued += 1;
        let (target, recorder, id, user) =
            (target.clone(), recorder.clone(), id.clone(), user.clone());
        tasks.spawn(async move { recorder.record(one(&target, endpoint, &id, &user).await) });
        while tasks.try_join_next().is_some() {}
    }
    tasks.join_all().await;
    Ok(started.elapsed())
}

/// How many events `topic` holds, asked of the gateway (retried: it may be busy).
pub(crate) async fn stored(
    client: &reqwest::Client,
    base: &str,
    topic: &str,
) -> Result<u32, String> {
    let mut last_error = String::new();
    for _ in 0..10 {
        match client
            .get(format!("{base}/topic-events/{topic}"))
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                let events: Vec<Value> = response.json().await.map_err(|e| e.to_string())?;
                return Ok(events.len() as u32);
            }
            Ok(response) => last_error = format!("HTTP {}", response.status()),
            Err(err) => last_error = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("cannot count the topic's events: {last_error}"))
}

/// `subscribers` SSE streams on a fresh topic, `publishes` events published through the
/// gateway; every delivery is timed from its publish. Returns the delivery report and whether
/// every stream got every event, once, in order.
pub(crate) async fn fanout(
    target: Arc<Target>,
    recorder: Arc<Recorder>,
    subscribers: u32,
    publishes: u32,
    publishers: u32,
) -> Result<(Duration, Report, bool), String> {
    let base = target
        .base()
        .ok_or("fanout needs the gateway (--gateway)")?
        .to_owned();
    let topic = format!("bench-{}", run_id());
    let delivery = Arc::new(Recorder::default());
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let mut streams = Vec::new();
    for _ in 0..subscribers {
        let response = client
            .get(format!("{base}/subscribe/{topic}"))
            .send()
            .await
            .map_err(|e| format!("cannot subscribe: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("cannot subscribe: HTTP {}", response.status()));
        }
        streams.push(response);
    }
    // How many events the topic holds once publishing is over: every subscriber must get
    // exactly those. (Not the acknowledged count: a publish whose response was lost may still
    // have been stored.)
    let (acked_tx, acked) = tokio::sync::watch::channel(None::<u32>);
    let mut readers = JoinSet::new();
    for response in streams {
        let delivery = delivery.clone();
        let mut acked = acked.clone();
        readers.spawn(async move {
            let mut events = response.bytes_stream().eventsource();
            let (mut last, mut received, mut disorder) = (0u64, 0u32, 0u32);
            loop {
                if acked.borrow().is_some_and(|n| received >= n) {
                    break;
                }
                let next = tokio::select! {
                    next = tokio::time::timeout(Duration::from_secs(30), events.next()) => next,
                    _ = acked.changed() => continue,
                };
                let Ok(Some(Ok(frame))) = next else { break };
                let Ok(body) = serde_json::from_str::<Value>(&frame.data) else {
                    continue;
                };
                let seq = body["seq"].as_u64().unwrap_or(0);
                if seq <= last {
                    disorder += 1;
                    continue;
                }
                last = seq;
                received += 1;
                let sent = body["data"]["sentAtMicros"].as_u64().unwrap_or(0) as u128;
                let micros = micros_now().saturating_sub(sent) as u64;
                delivery.record(Outcome {
                    latency: Duration::from_micros(micros),
                    error: None,
                    backend: None,
                });
            }
            (received, disorder)
        });
    }

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut publishing = JoinSet::new();
    for _ in 0..publishers.max(1) {
        let (target, recorder, next, topic) = (
            target.clone(),
            recorder.clone(),
            next.clone(),
            topic.clone(),
        );
        publishing.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < u64::from(publishes) {
                recorder.record(target.publish(&topic, micros_now()).await);
            }
        });
    }
    publishing.join_all().await;
    let elapsed = started.elapsed();
    let published = stored(&client, &base, &topic).await?;
    let _ = acked_tx.send(Some(published));
    let results = readers.join_all().await;

    let complete = results.iter().filter(|(got, _)| *got == published).count();
    let delivered: u64 = results.iter().map(|(got, _)| u64::from(*got)).sum();
    let disorder: u64 = results.iter().map(|(_, d)| u64::from(*d)).sum();
    let report = delivery.report("fanout delivery", started.elapsed());
    let mut extra = report.extra;
    extra.insert("subscribers".into(), json!(subscribers));
    extra.insert(
        "complete".into(),
        json!(format!(
            "{complete} of {subscribers} got all {published} stored events"
        )),
    );
    extra.insert("delivered".into(), json!(delivered));
    extra.insert("out_of_order".into(), json!(disorder));
    extra.insert(
        "delivery_ms".into(),
        json!({
            "p50": report.latency_ms.p50, "p90": report.latency_ms.p90,
            "p99": report.latency_ms.p99, "max": report.latency_ms.max,
        }),
    );
    let whole = complete == subscribers as usize && disorder == 0;
    Ok((elapsed, Report { extra, ..report }, whole))
}
