//! `presence`: S SSE subscribers of one topic through two gateways (subjects minted with the
//! deployment's HMAC secret, or anonymous without one); at steady state, the presence query's
//! latency (full and `?count=1`) and the store writes presence costs per second (the gateways'
//! reports: one transaction each); then subjects joining and leaving one at a time, timed from
//! their stream opening (closing) to the `join` (`leave`) frame on `$presence.<topic>`.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use eventsys::auth::{Claims, EventsClaim, sign_hs256};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::{
    fanout::{find, round},
    modes::run_id,
    report::{Outcome, Recorder, Report, histogram},
};

#[derive(Debug, Clone)]
pub(crate) struct PresenceSettings {
    pub(crate) gateways: Vec<String>,
    pub(crate) subscribers: u32,
    /// Distinct subjects the subscribers are spread over (token mode).
    pub(crate) subjects: u32,
    pub(crate) secret: Option<PathBuf>,
    pub(crate) queries: u32,
    pub(crate) changes: u32,
    pub(crate) steady: Duration,
    /// The gateways' `--presence-debounce`, taken off the leaves' delay.
    pub(crate) debounce: Duration,
}

/// Mints tokens of the deployment's secret.
struct Minter(Vec<u8>);

impl Minter {
    fn token(&self, sub: &str, admin: bool) -> Result<String, String> {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3600;
        let claims = Claims {
            sub: sub.to_owned(),
            exp,
            nbf: None,
            iss: None,
            aud: None,
            events: EventsClaim {
                subscribe: vec!["*".into()],
                admin,
                ..Default::default()
            },
        };
        sign_hs256(&self.0, &claims).map_err(|e| e.to_string())
    }
}

fn with_token(url: String, token: Option<&str>) -> String {
    match token {
        Some(token) => format!("{url}?access_token={token}"),
        None => url,
    }
}

async fn json(client: &reqwest::Client, url: &str, token: Option<&str>) -> Result<Value, String> {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    response.json().await.map_err(|e| e.to_string())
}

/// `gateway_presence_reports_total` over every outcome, from a gateway's `/metrics`.
async fn reports(client: &reqwest::Client, gateway: &str, admin: Option<&str>) -> f64 {
    let mut request = client.get(format!("{gateway}/metrics"));
    if let Some(token) = admin {
        request = request.bearer_auth(token);
    }
    let Ok(response) = request.send().await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("gateway_presence_reports_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(crate) async fn presence(
    recorder: Arc<Recorder>,
    settings: PresenceSettings,
) -> Result<(Duration, Report, bool), String> {
    eventsys::process::raise_open_file_limit();
    let started = Instant::now();
    let run = run_id();
    let topic = format!("presence-{run}");
    let minter = match &settings.secret {
        Some(path) => Some(Minter(
            std::fs::read(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .trim_ascii()
                .to_vec(),
        )),
        None => None,
    };
    let admin = match &minter {
        Some(m) => Some(m.token("bench-admin", true)?),
        None => None,
    };
    let tokens: Vec<Option<String>> = (0..settings.subjects.max(1))
        .map(|i| match &minter {
            Some(m) => m.token(&format!("bench-{run}-{i}"), false).map(Some),
            None => Ok(None),
        })
        .collect::<Result<_, String>>()?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let streams_client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let gateways = &settings.gateways;
    let mut streams = Vec::with_capacity(settings.subscribers as usize);
    for s in 0..settings.subscribers as usize {
        let gateway = &gateways[s % gateways.len()];
        let token = tokens[s % tokens.len()].as_deref();
        let url = with_token(format!("{gateway}/subscribe/{topic}"), token);
        streams.push(crate::tail::open(&streams_client, &url).await?);
    }
    let opened = started.elapsed();
    // Every stream counted, from either gateway.
    let counted = Instant::now();
    let presence_url = |g: &str, q: &str| format!("{g}/topics/{topic}/presence{q}");
    loop {
        let now = json(
            &client,
            &presence_url(&gateways[0], "?count=1"),
            admin.as_deref(),
        )
        .await?;
        if now["count"].as_u64() == Some(u64::from(settings.subscribers)) {
            break;
        }
        if counted.elapsed() > Duration::from_secs(60) {
            return Err(format!("presence never counted every stream: {now}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counted_after = counted.elapsed();

    // Steady state: reports per second, and the queries' latency.
    let before: f64 = {
        let mut sum = 0.0;
        for g in gateways {
            sum += reports(&client, g, admin.as_deref()).await;
        }
        sum
    };
    let window = Instant::now();
    let mut full = histogram();
    let mut count_only = histogram();
    let mut subjects_listed = 0;
    let pause = settings.steady / settings.queries.max(1);
    for q in 0..settings.queries {
        let gateway = &gateways[q as usize % gateways.len()];
        let (query, into) = if q % 2 == 0 {
            ("", &mut full)
        } else {
            ("?count=1", &mut count_only)
        };
        let sent = Instant::now();
        let answer = json(&client, &presence_url(gateway, query), admin.as_deref()).await;
        let latency = sent.elapsed();
        recorder.record(Outcome {
            latency,
            error: answer.as_ref().err().cloned(),
            backend: None,
        });
        if let Ok(answer) = answer {
            subjects_listed =
                subjects_listed.max(answer["subjects"].as_array().map_or(0, Vec::len));
        }
        into.saturating_record((latency.as_micros() as u64).clamp(1, 60_000_000));
        tokio::time::sleep(pause.saturating_sub(latency)).await;
    }
    let window = window.elapsed();
    let after: f64 = {
        let mut sum = 0.0;
        for g in gateways {
            sum += reports(&client, g, admin.as_deref()).await;
        }
        sum
    };

    // Joins and leaves, one at a time, timed to their frames.
    let mut joins = histogram();
    let mut leaves = histogram();
    if let Some(minter) = &minter {
        // From the presence topic's newest event: the joins so far are not timed.
        let history = json(
            &client,
            &format!("{}/topic-events/$presence.{topic}", gateways[0]),
            admin.as_deref(),
        )
        .await?;
        let head = history
            .as_array()
            .and_then(|events| events.last())
            .and_then(|event| event["seq"].as_u64())
            .unwrap_or(0);
        let url = format!(
            "{}/subscribe/$presence.{topic}?lastEventId={head}&access_token={}",
            gateways[0],
            admin.as_deref().unwrap_or_default()
        );
        let watcher = crate::tail::open(&streams_client, &url).await?;
        let mut frames = watcher.bytes_stream();
        let mut pending = Vec::new();
        let mut next_frame = async || -> Result<String, String> {
            loop {
                if let Some(end) = find(&pending, b"\n\n") {
                    let frame = String::from_utf8_lossy(&pending[..end]).into_owned();
                    pending.drain(..end + 2);
                    if frame.starts_with("event: join") || frame.starts_with("event: leave") {
                        return Ok(frame);
                    }
                    continue;
                }
                let chunk = tokio::time::timeout(Duration::from_secs(60), frames.next())
                    .await
                    .map_err(|_| "no presence frame within 60 s".to_owned())?
                    .ok_or("the presence stream ended")?
                    .map_err(|e| e.to_string())?;
                pending.extend_from_slice(&chunk);
            }
        };
        for k in 0..settings.changes {
            let subject = format!("bench-{run}-new-{k}");
            let token = minter.token(&subject, false)?;
            let gateway = &gateways[k as usize % gateways.len()];
            let url = with_token(format!("{gateway}/subscribe/{topic}"), Some(&token));
            let opening = Instant::now();
            let stream = crate::tail::open(&streams_client, &url).await?;
            let frame = next_frame().await?;
            if !frame.contains(&subject) {
                return Err(format!("a presence frame of another subject: {frame}"));
            }
            joins.saturating_record((opening.elapsed().as_micros() as u64).max(1));
            let closing = Instant::now();
            drop(stream);
            let frame = next_frame().await?;
            if !frame.starts_with("event: leave") || !frame.contains(&subject) {
                return Err(format!("not {subject}'s leave: {frame}"));
            }
            let late = closing.elapsed().saturating_sub(settings.debounce);
            leaves.saturating_record((late.as_micros() as u64).max(1));
        }
    }
    drop(streams);

    let report = recorder.report("presence queries", window);
    let ms =
        |h: &hdrhistogram::Histogram<u64>, q: f64| round(h.value_at_quantile(q) as f64 / 1000.0);
    let mut extra: BTreeMap<String, Value> = report.extra.clone();
    extra.insert("subscribers".into(), json!(settings.subscribers));
    extra.insert("gateways".into(), json!(gateways.len()));
    extra.insert(
        "subjects".into(),
        json!(if minter.is_some() {
            settings.subjects
        } else {
            0
        }),
    );
    extra.insert("subjects_listed".into(), json!(subjects_listed));
    extra.insert(
        "streams_opened_s".into(),
        json!(round(opened.as_secs_f64())),
    );
    extra.insert(
        "counted_after_s".into(),
        json!(round(counted_after.as_secs_f64())),
    );
    extra.insert(
        "query_ms".into(),
        json!({
            "full_p50": ms(&full, 0.5), "full_p99": ms(&full, 0.99),
            "count_p50": ms(&count_only, 0.5), "count_p99": ms(&count_only, 0.99),
        }),
    );
    extra.insert(
        "store_writes_per_s".into(),
        json!(round((after - before) / window.as_secs_f64())),
    );
    if minter.is_some() {
        extra.insert(
            "join_ms".into(),
            json!({"p50": ms(&joins, 0.5), "p99": ms(&joins, 0.99), "max": ms(&joins, 1.0)}),
        );
        extra.insert(
            "leave_after_debounce_ms".into(),
            json!({"p50": ms(&leaves, 0.5), "p99": ms(&leaves, 0.99), "max": ms(&leaves, 1.0)}),
        );
    }
    let whole = report.failed() == 0;
    Ok((started.elapsed(), Report { extra, ..report }, whole))
}
