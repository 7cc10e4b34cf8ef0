//! The request workloads: `mix` (the old test client's create/update/get/delete cycle per
//! user), `closed` (fixed concurrency) and `rate` (fixed arrival rate); SSE subscribers are
//! `fanout`'s, the long run under faults is `soak`'s.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{
    report::{Outcome, Recorder},
    tail::Tail,
    target::Target,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Endpoint {
    /// GET one event.
    Get,
    /// POST a new event.
    Post,
    /// POST /publish, every client on one topic (`bench`): its `seq` is what they contend for.
    Publish,
    /// GET a user's events.
    List,
    /// PUT one event (each client updates one of its own, created first, so the clients do
    /// not queue behind one another's changes of one event).
    Put,
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

/// `mix`'s end-of-run checks (with `--publish`): extra report figures, and whether all held.
pub(crate) type Checked = (BTreeMap<String, Value>, bool);

/// The old client's cycle per user; with `publish`, each round also publishes on the run's
/// topic while one live subscriber follows it, and at the end the run checks that every
/// publish was stored and delivered once, in order, and that no create was stored twice (every
/// user's list is empty again, as each user deleted what it created).
pub(crate) async fn mix(
    target: Arc<Target>,
    recorder: Arc<Recorder>,
    users: u32,
    iterations: u32,
    publish: bool,
) -> Result<(Duration, Option<Checked>), String> {
    let run = run_id();
    let topic = format!("bench-{run}-mix");
    let tail = match (publish, target.client().zip(target.base())) {
        (false, _) => None,
        (true, Some((client, base))) => Some((Tail::open(base, &topic).await?, client, base)),
        (true, None) => return Err("mix --publish needs the gateway (--gateway)".into()),
    };
    let acknowledged = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for u in 0..users {
        let (target, recorder) = (target.clone(), recorder.clone());
        let (topic, acknowledged) = (topic.clone(), acknowledged.clone());
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
                if publish {
                    let published = target.publish(&topic, micros_now()).await;
                    if published.error.is_none() {
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    recorder.record(published);
                }
            }
            user
        });
    }
    let users = tasks.join_all().await;
    let elapsed = started.elapsed();
    let Some((tail, client, base)) = tail else {
        return Ok((elapsed, None));
    };
    let stored = u64::from(stored(client, base, &topic).await?);
    let seen = tail.until(stored).await;
    let order = seen.order;
    let mut left_behind = 0;
    for user in &users {
        left_behind += target.listed(user).await?;
    }
    let acknowledged = acknowledged.load(Ordering::Relaxed);
    let whole = acknowledged == stored
        && order.received == stored
        && order.duplicates == 0
        && order.missing == 0
        && !seen.broken
        && left_behind == 0;
    let extra = BTreeMap::from([
        ("publishes_acknowledged".to_owned(), json!(acknowledged)),
        ("publishes_stored".to_owned(), json!(stored)),
        ("delivered_once".to_owned(), json!(order.received)),
        ("delivered_twice".to_owned(), json!(order.duplicates)),
        ("seqs_missing".to_owned(), json!(order.missing)),
        ("stream_broken".to_owned(), json!(seen.broken)),
        ("events_left_behind".to_owned(), json!(left_behind)),
    ]);
    Ok((elapsed, Some((extra, whole))))
}

/// One request of `endpoint` (reads use `id`, created beforehand).
async fn one(target: &Target, endpoint: Endpoint, id: &str, user: &str) -> Outcome {
    match endpoint {
        Endpoint::Get => target.get(id, user).await,
        Endpoint::Post => target.create(user, "bench").await.0,
        Endpoint::Publish => {
            let sent = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            target.publish("bench", sent).await
        }
        Endpoint::List => target.list(user).await,
        Endpoint::Put => target.update(id, user).await,
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
            let id = match endpoint {
                Endpoint::Put => match fixture(&target, &user).await {
                    Ok(own) => own,
                    Err(err) => {
                        eprintln!("{err}");
                        return;
                    }
                },
                _ => id,
            };
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
        Endpoint::Get | Endpoint::Put => fixture(&target, &user).await?,
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
