//! One live SSE subscriber that must see a topic's every event once, in `seq` order, on a single
//! connection (it never reconnects, so a stream the gateway let break shows): what `mix
//! --publish` checks while the operator kills backends.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;
use tokio::{sync::watch, task::JoinHandle};

/// A topic's events as one subscriber received them, checked against `seq` order.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Order {
    /// Events received, each counted once.
    pub(crate) received: u64,
    /// Events received again (a `seq` at or below one already seen).
    pub(crate) duplicates: u64,
    /// Seqs skipped over.
    pub(crate) missing: u64,
    /// The newest `seq` received.
    pub(crate) last: u64,
}

impl Order {
    /// Counts one SSE frame: an event (`message`) by the `seq` in its JSON; others are not events.
    pub(crate) fn record(&mut self, frame: &eventsource_stream::Event) {
        if frame.event != "message" {
            return;
        }
        let seq = serde_json::from_str::<Value>(&frame.data)
            .ok()
            .and_then(|body| body["seq"].as_u64())
            .unwrap_or(0);
        if seq <= self.last {
            self.duplicates += 1;
            return;
        }
        self.missing += seq - self.last - 1;
        self.last = seq;
        self.received += 1;
    }
}

/// What the subscriber saw.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) order: Order,
    /// The stream ended (or fell silent for `SILENCE`) before the last event.
    pub(crate) broken: bool,
}

/// `topic`'s SSE stream through the gateway at `base`, opened; a refusal is an error.
pub(crate) async fn subscribe(
    client: &reqwest::Client,
    base: &str,
    topic: &str,
) -> Result<reqwest::Response, String> {
    open(client, &format!("{base}/subscribe/{topic}")).await
}

/// Opens an SSE stream at `url`.
pub(crate) async fn open(client: &reqwest::Client, url: &str) -> Result<reqwest::Response, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot subscribe: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("cannot subscribe: HTTP {}", response.status()));
    }
    Ok(response)
}

/// How long the stream may stay silent before the subscriber gives up on it.
const SILENCE: Duration = Duration::from_secs(30);

pub(crate) struct Tail {
    reader: JoinHandle<Seen>,
    total: watch::Sender<Option<u64>>,
}

impl Tail {
    /// Subscribes to `topic` through the gateway at `base`.
    pub(crate) async fn open(base: &str, topic: &str) -> Result<Tail, String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let response = subscribe(&client, base, topic).await?;
        let (total, mut told) = watch::channel(None::<u64>);
        let reader = tokio::spawn(async move {
            let mut frames = response.bytes_stream().eventsource();
            let mut seen = Seen::default();
            loop {
                if told.borrow().is_some_and(|n| seen.order.last >= n) {
                    return seen;
                }
                let next = tokio::select! {
                    next = tokio::time::timeout(SILENCE, frames.next()) => next,
                    _ = told.changed() => continue,
                };
                let frame = match next {
                    Ok(Some(Ok(frame))) => frame,
                    _ => {
                        seen.broken = true;
                        return seen;
                    }
                };
                seen.order.record(&frame);
            }
        });
        Ok(Tail { reader, total })
    }

    /// Waits until the subscriber has the `total`th event (or gives up); what it saw.
    pub(crate) async fn until(self, total: u64) -> Seen {
        let _ = self.total.send(Some(total));
        self.reader.await.unwrap_or(Seen {
            broken: true,
            ..Seen::default()
        })
    }
}
