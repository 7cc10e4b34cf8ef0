//! `fanout`: SSE subscribers spread over topics, events published through the gateway (a
//! fixed number by concurrent publishers, or at a fixed rate for a while); every delivery is
//! timed from its publish, every subscriber checked to get its topic's events once, in order.
//! With the gateway's process figures in `/metrics`, its RSS per open stream and CPU per
//! delivery are reported too. With `pattern`, every subscriber follows all the topics on one
//! stream (`/subscribe?topic=<run>.*`) and is checked per topic.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::json;
use tokio::task::JoinSet;

use crate::{
    modes::{micros_now, run_id, stored},
    report::{Recorder, Report, histogram},
    target::Target,
};

/// How events are published.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Publishing {
    /// `count` events by `publishers` concurrent publishers, each as soon as the last is done.
    Closed { count: u32, publishers: u32 },
    /// `per_second` events for `duration`, whatever the answers' pace.
    Open { per_second: u32, duration: Duration },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct FanoutSettings {
    pub(crate) subscribers: u32,
    pub(crate) topics: u32,
    pub(crate) publishing: Publishing,
    /// Every subscriber on one stream of every topic, by a wildcard.
    pub(crate) pattern: bool,
    /// The peer instead: nginx with nchan at the base URL (`/pub/<topic>`, `/sub/<topic>`).
    pub(crate) nchan: bool,
}

/// Where publishes go: the gateway (`Target`), or nchan's publisher location, which answers
/// each with 2xx (what it acknowledged is what its subscribers must get: it keeps no history
/// to ask).
#[derive(Clone)]
enum Publisher {
    Target(Arc<Target>),
    Nchan {
        client: reqwest::Client,
        base: String,
        acked: Arc<Vec<AtomicU64>>,
    },
}

impl Publisher {
    /// Publishes the `n`-th event (from 1) of topic `index`, named `topic`.
    async fn send(&self, topic: &str, index: usize, n: u64) -> crate::report::Outcome {
        match self {
            Publisher::Target(target) => target.publish(topic, micros_now()).await,
            Publisher::Nchan {
                client,
                base,
                acked,
            } => {
                let sent = Instant::now();
                let body = json!({"n": n, "sentAtMicros": micros_now() as u64}).to_string();
                let answer = client
                    .post(format!("{base}/pub/{topic}"))
                    .body(body)
                    .send()
                    .await;
                let error = match answer {
                    Ok(response) if response.status().is_success() => {
                        acked[index].fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    Ok(response) => Some(response.status().as_u16().to_string()),
                    Err(err) => Some(err.to_string()),
                };
                crate::report::Outcome {
                    latency: sent.elapsed(),
                    error,
                    backend: None,
                }
            }
        }
    }
}

/// Publishes in flight at once at a fixed rate; beyond it the rate is not kept (and the
/// report's throughput says so).
const MAX_IN_FLIGHT: usize = 4096;

/// The gateway's own process figures, from `/metrics`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GatewayProcess {
    pub(crate) rss: f64,
    pub(crate) cpu_seconds: f64,
}

pub(crate) async fn gateway_process(
    client: &reqwest::Client,
    base: &str,
) -> Option<GatewayProcess> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    Some(GatewayProcess {
        rss: value("process_resident_memory_bytes")?,
        cpu_seconds: value("process_cpu_seconds_total")?,
    })
}

/// Runs the workload; returns the delivery report and whether every subscriber got every
/// event of its topic, once, in order.
pub(crate) async fn fanout(
    target: Arc<Target>,
    recorder: Arc<Recorder>,
    settings: FanoutSettings,
) -> Result<(Duration, Report, bool), String> {
    let base = target
        .base()
        .ok_or("fanout needs the gateway (--gateway)")?
        .to_owned();
    eventsys::process::raise_open_file_limit();
    let FanoutSettings {
        subscribers,
        topics,
        publishing,
        pattern,
        nchan,
    } = settings;
    let topics = if pattern {
        topics.max(1)
    } else {
        topics.clamp(1, subscribers.max(1))
    };
    let run = run_id();
    let names: Vec<String> = (0..topics).map(|t| format!("bench-{run}.{t}")).collect();
    let delivery = Arc::new(Recorder::default());
    let client = target.client().ok_or("fanout needs the gateway")?.clone();
    // One connection per stream, none kept idle.
    let streams_client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;

    let idle = gateway_process(&client, &base).await;
    let mut streams = Vec::new();
    for s in 0..subscribers {
        // A pattern's subscriber expects every topic: the count after the topics' own.
        let (index, url) = if pattern {
            (names.len(), format!("{base}/subscribe?topic=bench-{run}.*"))
        } else if nchan {
            let index = (s % topics) as usize;
            (index, format!("{base}/sub/{}", names[index]))
        } else {
            let index = (s % topics) as usize;
            (index, format!("{base}/subscribe/{}", names[index]))
        };
        // nchan answers an EventSource only to one that says so.
        let response = streams_client
            .get(&url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| format!("cannot subscribe: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("cannot subscribe: HTTP {}", response.status()));
        }
        streams.push((index, response));
    }
    let connected = gateway_process(&client, &base).await;
    let backend_streams = backend_streams(&client, &base, &run).await;

    // Each subscriber must get exactly what its topic holds once publishing is over (not the
    // acknowledged count: a publish whose answer was lost may still have been stored).
    let (stored_tx, stored_rx) = tokio::sync::watch::channel(None::<Arc<Vec<u64>>>);
    let mut readers = JoinSet::new();
    for (index, response) in streams {
        let (delivery, stored_rx) = (delivery.clone(), stored_rx.clone());
        readers.spawn(async move {
            let parse = match (pattern, nchan) {
                (true, _) => parse_any,
                (_, true) => parse_numbered,
                _ => parse,
            };
            let (received, disorder, open) =
                read_frames(response, stored_rx, index, parse, &delivery).await;
            (index, received, disorder, open)
        });
    }

    let publisher = match nchan {
        true => Publisher::Nchan {
            client: client.clone(),
            base: base.clone(),
            acked: Arc::new(names.iter().map(|_| AtomicU64::new(0)).collect()),
        },
        false => Publisher::Target(target.clone()),
    };
    let started = Instant::now();
    publish(&publisher, &recorder, &names, publishing).await;
    let elapsed = started.elapsed();
    let mut counts = Vec::with_capacity(names.len() + 1);
    for (index, topic) in names.iter().enumerate() {
        counts.push(match &publisher {
            Publisher::Nchan { acked, .. } => acked[index].load(Ordering::Relaxed),
            Publisher::Target(_) => u64::from(stored(&client, &base, topic).await?),
        });
    }
    counts.push(counts.iter().sum());
    let counts = Arc::new(counts);
    let _ = stored_tx.send(Some(counts.clone()));
    let mut results = readers.join_all().await;
    let delivered_all = gateway_process(&client, &base).await;
    let results: Vec<(usize, u64, u64)> = results
        .drain(..)
        .map(|(topic, got, disorder, _open)| (topic, got, disorder))
        .collect();

    let complete = results
        .iter()
        .filter(|(topic, got, _)| *got == counts[*topic])
        .count();
    let delivered: u64 = results.iter().map(|(_, got, _)| got).sum();
    let disorder: u64 = results.iter().map(|(_, _, d)| d).sum();
    let published: u64 = counts[names.len()];
    let report = delivery.report("fanout delivery", started.elapsed());
    let mut extra = report.extra;
    extra.insert("subscribers".into(), json!(subscribers));
    extra.insert("topics".into(), json!(topics));
    extra.insert(
        "streams".into(),
        json!(if pattern {
            "one per subscriber, of every topic"
        } else {
            "one per subscriber, of one topic"
        }),
    );
    if let Some(hubs) = backend_streams {
        extra.insert("backend_streams_per_gateway".into(), json!(hubs));
    }
    extra.insert(
        "complete".into(),
        json!(format!(
            "{complete} of {subscribers} got every stored event of {} ({published} in all)",
            if pattern {
                "every topic"
            } else {
                "their topic"
            }
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
    if let (Some(idle), Some(connected), Some(done)) = (idle, connected, delivered_all) {
        let per_stream = (connected.rss.max(done.rss) - idle.rss) / f64::from(subscribers.max(1));
        let mut gateway = json!({
            "rss_idle_mib": round(idle.rss / 1048576.0),
            "rss_per_stream_kib": round(per_stream / 1024.0),
        });
        if delivered > 0 {
            let cpu = (done.cpu_seconds - connected.cpu_seconds) * 1e6 / delivered as f64;
            gateway["cpu_per_delivery_us"] = json!(round(cpu));
        }
        extra.insert("gateway".into(), gateway);
    }
    let whole = complete == subscribers as usize && disorder == 0;
    Ok((elapsed, Report { extra, ..report }, whole))
}

/// One item of a stream as a reader checks it: which of its sequences it is on (a multi-topic
/// stream's topic; 0 for a stream of one), its place there, and, when the frame says, the time
/// it was sent (µs since the epoch).
pub(crate) struct Item {
    pub(crate) lane: usize,
    pub(crate) place: u64,
    /// Places follow one another (`seq`): the next is the last plus one. Otherwise each is
    /// only past the last (nchan's message ids).
    pub(crate) gapless: bool,
    pub(crate) sent: Option<u64>,
}

/// Reads one SSE frame's item; `None` for what is no item (comments, other events).
pub(crate) type ParseFrame = fn(&[u8]) -> Option<Item>;

/// Lanes one reader tells apart at most (a multi-topic stream's topics).
const MAX_LANES: usize = 100_000;

/// The hubs (one backend stream each) the gateway holds for this run's topics, from `/load`.
async fn backend_streams(client: &reqwest::Client, base: &str, run: &str) -> Option<usize> {
    let load: serde_json::Value = client
        .get(format!("{base}/load"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let prefix = format!("bench-{run}.");
    Some(
        load["topics"]
            .as_array()?
            .iter()
            .filter(|hub| {
                hub["topic"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&prefix))
            })
            .count(),
    )
}

/// One SSE reader of a stream whose items are numbered 1, 2, …: reads until it has received
/// the number `expected` will say for `index` (once the load is over), or the stream falls
/// silent for 30 s; records each item's latency from the send time `parse` finds in its frame
/// (none: not timed) into `delivery`. Ten thousand readers share the machine with the
/// gateway: each parses only what it checks and keeps its own histogram. Returns the items
/// received (each once), how many came out of order, and the stream, still open: closing
/// thousands of connections is not delivering, and the gateway's figures are read first.
pub(crate) async fn read_frames(
    response: reqwest::Response,
    mut expected: tokio::sync::watch::Receiver<Option<Arc<Vec<u64>>>>,
    index: usize,
    parse: ParseFrame,
    delivery: &Recorder,
) -> (u64, u64, impl Send + use<>) {
    let mut body = response.bytes_stream();
    let mut latency = histogram();
    let mut pending = Vec::new();
    let mut last: Vec<u64> = Vec::new();
    let (mut received, mut disorder) = (0u64, 0u64);
    'read: loop {
        let count = expected.borrow().as_ref().map(|counts| counts[index]);
        if count.is_some_and(|n| received >= n) {
            break;
        }
        let next = tokio::select! {
            next = tokio::time::timeout(Duration::from_secs(30), body.next()) => next,
            _ = expected.changed() => continue,
        };
        let Ok(Some(Ok(chunk))) = next else { break };
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = find(&pending[start..], b"\n\n") {
            let frame = &pending[start..start + end];
            start += end + 2;
            let Some(Item {
                lane,
                place,
                gapless,
                sent,
            }) = parse(frame)
            else {
                continue;
            };
            if lane >= MAX_LANES {
                disorder += 1;
                continue;
            }
            if lane >= last.len() {
                last.resize(lane + 1, 0);
            }
            let next = match gapless {
                true => place == last[lane] + 1,
                false => place > last[lane],
            };
            if !next {
                disorder += 1;
                if place <= last[lane] {
                    continue;
                }
            }
            last[lane] = place;
            received += 1;
            if let Some(sent) = sent {
                let micros = micros_now().saturating_sub(u128::from(sent)) as u64;
                latency.saturating_record(micros.clamp(1, 60_000_000));
            }
            if count.is_some_and(|n| received >= n) {
                break 'read;
            }
        }
        pending.drain(..start);
    }
    delivery.absorb(&latency);
    (received, disorder, body)
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An event frame's `seq` (its `id:`) and `data.sentAtMicros`; `None` for comments and other
/// events.
fn parse(frame: &[u8]) -> Option<Item> {
    let mut seq = None;
    let mut sent = 0;
    for line in frame.split(|b| *b == b'\n') {
        if let Some(id) = line.strip_prefix(b"id: ") {
            seq = std::str::from_utf8(id).ok()?.parse().ok();
        } else if line.starts_with(b"data: ") {
            sent = number_after(line, b"\"sentAtMicros\":").unwrap_or(0);
        }
    }
    Some(Item {
        lane: 0,
        place: seq?,
        gapless: true,
        sent: Some(sent),
    })
}

/// nchan's frame of a bench publish: its place is nchan's own message id (`<time>:<index>`, in
/// the order nchan took the publishes, which overlap), and `sentAtMicros` from its data.
fn parse_numbered(frame: &[u8]) -> Option<Item> {
    let mut place = None;
    let mut sent = None;
    for line in frame.split(|b| *b == b'\n') {
        if let Some(id) = line.strip_prefix(b"id: ") {
            let (time, index) = std::str::from_utf8(id).ok()?.split_once(':')?;
            let (time, index): (u64, u64) = (time.parse().ok()?, index.parse().ok()?);
            place = Some((time << 24) + index);
        } else if line.starts_with(b"data: ") {
            sent = number_after(line, b"\"sentAtMicros\":");
        }
    }
    Some(Item {
        lane: 0,
        place: place?,
        gapless: false,
        sent,
    })
}

/// A multi-topic stream's event frame: its topic's number (`bench-<run>.<n>`), `seq` and
/// `data.sentAtMicros`, all from its data (the `id:` is a cursor).
fn parse_any(frame: &[u8]) -> Option<Item> {
    let data = frame
        .split(|b| *b == b'\n')
        .find(|line| line.starts_with(b"data: "))?;
    let at = find(data, b"\"topic\":\"bench-")?;
    let topic = &data[at..];
    let dot = topic.iter().position(|b| *b == b'.')?;
    Some(Item {
        lane: usize::try_from(number_after(&topic[dot..], b".")?).ok()?,
        place: number_after(data, b"\"seq\":")?,
        gapless: true,
        sent: number_after(data, b"\"sentAtMicros\":"),
    })
}

/// The digits right after the first `key` in `line`, as a number.
fn number_after(line: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(line, key)?;
    let digits = &line[at + key.len()..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// The topic the `n`-th publish goes to.
fn round_robin(topics: &[String], n: u64) -> &str {
    &topics[(n % topics.len() as u64) as usize]
}

pub(crate) fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The `n`-th publish (from 0) over `topics` topics: its topic's index, and its number in that
/// topic (from 1).
fn place(topics: usize, n: u64) -> (usize, u64) {
    let count = topics.max(1) as u64;
    ((n % count) as usize, n / count + 1)
}

/// Publishes as `publishing` says, round robin over `topics`.
async fn publish(
    publisher: &Publisher,
    recorder: &Arc<Recorder>,
    topics: &[String],
    publishing: Publishing,
) {
    match publishing {
        Publishing::Closed { count, publishers } => {
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = JoinSet::new();
            for _ in 0..publishers.max(1) {
                let (publisher, recorder, next) =
                    (publisher.clone(), recorder.clone(), next.clone());
                let topics = topics.to_vec();
                tasks.spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= u64::from(count) {
                            break;
                        }
                        let (index, within) = place(topics.len(), n);
                        let topic = round_robin(&topics, n);
                        recorder.record(publisher.send(topic, index, within).await);
                    }
                });
            }
            tasks.join_all().await;
        }
        Publishing::Open {
            per_second,
            duration,
        } => {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let total = u64::from(per_second) * duration.as_millis() as u64 / 1000;
            let mut tasks = JoinSet::new();
            for n in 0..total {
                tick.tick().await;
                while tasks.len() >= MAX_IN_FLIGHT {
                    tasks.join_next().await;
                }
                let (publisher, recorder) = (publisher.clone(), recorder.clone());
                let topic = round_robin(topics, n).to_owned();
                let (index, within) = place(topics.len(), n);
                tasks.spawn(
                    async move { recorder.record(publisher.send(&topic, index, within).await) },
                );
                while tasks.try_join_next().is_some() {}
            }
            tasks.join_all().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nchan's frames (as nchan 1.3 writes them) are placed by its message ids, in its order,
    /// across a second's turn; the publish number in the data plays no part.
    #[test]
    fn nchan_frames_are_placed_by_nchans_own_ids() {
        let place = |frame: &str| {
            let item = parse_numbered(frame.as_bytes()).expect("an item");
            assert!(!item.gapless);
            (item.place, item.sent)
        };
        let first = place("id: 1796632911:0\ndata: {\"n\":2,\"sentAtMicros\":7}");
        let second = place("id: 1796632911:1\ndata: {\"n\":1,\"sentAtMicros\":5}");
        let third = place("id: 1796632912:0\ndata: {\"n\":3,\"sentAtMicros\":9}");
        assert!(first.0 < second.0 && second.0 < third.0);
        assert_eq!((first.1, second.1), (Some(7), Some(5)));
        assert!(parse_numbered(b": hi").is_none());
        assert!(parse_numbered(b"id: 17:x\ndata: {}").is_none());
    }
}
