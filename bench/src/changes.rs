//! `changes`: users' change feeds under write load. W watchers per user follow `/changes`
//! while creates, updates and deletes of the users' events go through the gateway (at a fixed
//! rate, or as fast as C concurrent writers go); every created or updated event is timed from
//! its write being sent (its title carries the time) to its watcher, and each watcher is
//! checked to see every change its user's feed recorded once, in position order. With no
//! watcher it measures what the writes cost alone.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{
    fanout::{Item, find, gateway_process, read_frames, round},
    modes::{micros_now, run_id},
    report::{Outcome, Recorder, Report},
    target::Target,
};

/// How writes are sent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Writing {
    /// `per_second` writes whatever the answers' pace (open loop).
    Open { per_second: u32 },
    /// `writers` concurrent writers, each sending its next write when the last is answered.
    Closed { writers: u32 },
}

/// Which writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Writes {
    /// Per user, in turn: create, create, update, delete (of their oldest live event).
    Mixed,
    /// Creates only.
    Creates,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ChangesSettings {
    pub(crate) users: u32,
    /// Per user.
    pub(crate) watchers: u32,
    pub(crate) writing: Writing,
    pub(crate) writes: Writes,
    pub(crate) duration: Duration,
}

/// A user's events that are not deleted, oldest first (what updates and deletes pick), and
/// those with an update in flight (never deleted meanwhile: its update would find nothing).
#[derive(Default)]
struct UserEvents {
    live: VecDeque<String>,
    updating: HashSet<String>,
}

type Live = Arc<Vec<Mutex<UserEvents>>>;

/// Runs the workload; returns the delivery report and whether every watcher got every change
/// of its user's feed once, in order.
pub(crate) async fn changes(
    target: Arc<Target>,
    recorder: Arc<Recorder>,
    settings: ChangesSettings,
) -> Result<(Duration, Report, bool), String> {
    let base = target
        .base()
        .ok_or("changes needs the gateway (--gateway)")?
        .to_owned();
    let client = target.client().ok_or("changes needs the gateway")?.clone();
    eventsys::process::raise_open_file_limit();
    let ChangesSettings {
        users,
        watchers,
        writing,
        writes,
        duration,
    } = settings;
    let users = users.max(1);
    let run = run_id();
    let names: Vec<String> = (0..users).map(|u| format!("bench-{run}-{u}")).collect();
    let streams_client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let mut streams = Vec::new();
    for user in &names {
        for _ in 0..watchers {
            let response = streams_client
                .get(format!("{base}/changes?userId={user}"))
                .header("accept", "text/event-stream")
                .send()
                .await
                .map_err(|e| format!("cannot watch {user}: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("watching {user}: {}", response.status()));
            }
            streams.push((user.clone(), response));
        }
    }

    let delivery = Arc::new(Recorder::default());
    let (recorded_tx, recorded_rx) = tokio::sync::watch::channel(None::<Arc<Vec<u64>>>);
    let mut readers = JoinSet::new();
    for (s, (_, response)) in streams.into_iter().enumerate() {
        let (delivery, recorded_rx) = (delivery.clone(), recorded_rx.clone());
        let index = s / watchers.max(1) as usize;
        readers.spawn(async move {
            let (received, disorder, open) =
                read_frames(response, recorded_rx, index, parse, &delivery).await;
            (index, received, disorder, open)
        });
    }

    let idle = gateway_process(&client, &base).await;
    let live: Live = Arc::new((0..users).map(|_| Mutex::default()).collect());
    let started = Instant::now();
    write(&target, &recorder, &names, &live, writing, writes, duration).await;
    let elapsed = started.elapsed();
    let mut counts = Vec::with_capacity(names.len());
    for user in &names {
        counts.push(recorded(&client, &base, user).await?);
    }
    let counts = Arc::new(counts);
    let _ = recorded_tx.send(Some(counts.clone()));
    let results: Vec<(usize, u64, u64)> = readers
        .join_all()
        .await
        .into_iter()
        .map(|(user, received, disorder, _open)| (user, received, disorder))
        .collect();
    let done = gateway_process(&client, &base).await;

    let watching = results.len();
    let complete = results
        .iter()
        .filter(|(user, received, _)| *received == counts[*user])
        .count();
    let disorder: u64 = results.iter().map(|(_, _, d)| d).sum();
    let delivered: u64 = results.iter().map(|(_, received, _)| received).sum();
    let changes: u64 = counts.iter().sum();
    let report = delivery.report("change delivery", elapsed);
    let mut extra = report.extra;
    extra.insert("users".into(), json!(users));
    extra.insert("watchers".into(), json!(watching));
    extra.insert("changes_recorded".into(), json!(changes));
    extra.insert(
        "complete".into(),
        json!(format!(
            "{complete} of {watching} watchers got every change of their user's feed once, in order"
        )),
    );
    extra.insert("out_of_order".into(), json!(disorder));
    if watching > 0 {
        extra.insert(
            "delivery_ms".into(),
            json!({
                "from_write_sent_p50": report.latency_ms.p50,
                "from_write_sent_p90": report.latency_ms.p90,
                "from_write_sent_p99": report.latency_ms.p99,
                "max": report.latency_ms.max,
            }),
        );
    }
    if let (Some(idle), Some(done)) = (idle, done) {
        let cpu = done.cpu_seconds - idle.cpu_seconds;
        let writes = recorder.completed().max(1) as f64;
        let mut gateway = json!({"cpu_per_write_us": round(cpu * 1e6 / writes)});
        if delivered > 0 {
            gateway["cpu_per_delivery_us"] = json!(round(cpu * 1e6 / delivered as f64));
        }
        extra.insert("gateway".into(), gateway);
    }
    let whole = complete == watching && disorder == 0;
    Ok((elapsed, Report { extra, ..report }, whole))
}

/// How many changes `user`'s feed recorded.
async fn recorded(client: &reqwest::Client, base: &str, user: &str) -> Result<u64, String> {
    let listed: Value = client
        .get(format!("{base}/changes/history?userId={user}"))
        .send()
        .await
        .map_err(|e| format!("history of {user}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("history of {user}: {e}"))?;
    Ok(listed.as_array().map_or(0, |a| a.len() as u64))
}

/// A change frame's position (its `id:`) and the send time its title carries (`t=<µs>`; none
/// for a delete); `None` for comments.
fn parse(frame: &[u8]) -> Option<Item> {
    let mut position = None;
    let mut sent = None;
    for line in frame.split(|b| *b == b'\n') {
        if let Some(id) = line.strip_prefix(b"id: ") {
            position = std::str::from_utf8(id).ok()?.parse().ok();
        } else if line.starts_with(b"data: ") {
            const KEY: &[u8] = b"\"title\":\"t=";
            if let Some(at) = find(line, KEY) {
                let digits = &line[at + KEY.len()..];
                let end = digits
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .unwrap_or(digits.len());
                sent = std::str::from_utf8(&digits[..end]).ok()?.parse().ok();
            }
        }
    }
    Some(Item {
        lane: 0,
        place: position?,
        gapless: true,
        sent,
    })
}

/// Sends writes as `writing` says for `duration`.
async fn write(
    target: &Arc<Target>,
    recorder: &Arc<Recorder>,
    users: &[String],
    live: &Live,
    writing: Writing,
    writes: Writes,
    duration: Duration,
) {
    let users = Arc::new(users.to_vec());
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    match writing {
        Writing::Open { per_second } => {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            // As many as the rate makes in `duration`, however late the last ones go out.
            let total = (f64::from(per_second) * duration.as_secs_f64()).round() as u64;
            for n in 0..total {
                tick.tick().await;
                let (target, recorder, users, live) = (
                    target.clone(),
                    recorder.clone(),
                    users.clone(),
                    live.clone(),
                );
                tasks.spawn(async move {
                    recorder.record(one(&target, &users, &live, writes, n).await);
                });
                while tasks.try_join_next().is_some() {}
            }
        }
        Writing::Closed { writers } => {
            let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
            for _ in 0..writers {
                let (target, recorder, users, live, next) = (
                    target.clone(),
                    recorder.clone(),
                    users.clone(),
                    live.clone(),
                    next.clone(),
                );
                tasks.spawn(async move {
                    while started.elapsed() < duration {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        recorder.record(one(&target, &users, &live, writes, n).await);
                    }
                });
            }
        }
    }
    tasks.join_all().await;
}

/// The `n`-th write: its user in turn, then what that user's turn asks.
async fn one(target: &Target, users: &[String], live: &Live, writes: Writes, n: u64) -> Outcome {
    let index = (n % users.len() as u64) as usize;
    let user = &users[index];
    let turn = n / users.len() as u64;
    let sent = format!("t={}", micros_now());
    let events = || live[index].lock().unwrap_or_else(PoisonError::into_inner);
    let step = match writes {
        Writes::Creates => 0,
        Writes::Mixed => turn % 4,
    };
    match step {
        // The newest live event, marked while its update is in flight.
        2 => {
            let id = {
                let mut events = events();
                let id = events.live.back().cloned();
                if let Some(id) = &id {
                    events.updating.insert(id.clone());
                }
                id
            };
            if let Some(id) = id {
                let outcome = target.update_titled(&id, user, &sent).await;
                events().updating.remove(&id);
                return outcome;
            }
        }
        // The oldest live event, unless an update of it is in flight.
        3 => {
            let id = {
                let mut events = events();
                let free = events
                    .live
                    .front()
                    .is_some_and(|id| !events.updating.contains(id));
                if free { events.live.pop_front() } else { None }
            };
            if let Some(id) = id {
                return target.delete(&id, user).await;
            }
        }
        _ => {}
    }
    let (outcome, id) = target.create(user, &sent).await;
    if let Some(id) = id {
        events().live.push_back(id);
    }
    outcome
}
