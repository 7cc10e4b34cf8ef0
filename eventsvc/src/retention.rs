//! The retention task: while a policy is set, drops what it no longer keeps every second, in
//! batches that each hold the store's write lock only briefly, so publishers never wait long.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    stats::Stats,
    store::{EventStore, Retention},
};

/// Events dropped per write transaction.
const BATCH: usize = 500;
const INTERVAL: Duration = Duration::from_secs(1);

/// Runs until `stop` is cancelled; returns at once when retention is off.
pub(crate) async fn run(
    store: Arc<dyn EventStore>,
    retention: Retention,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    if retention.is_off() {
        return;
    }
    tracing::info!(max_events = ?retention.max_events, max_age = ?retention.max_age, "retention on");
    loop {
        let mut dropped = 0;
        loop {
            let batch = match store.compact(retention, BATCH).await {
                Ok(n) => n,
                Err(err) => {
                    tracing::warn!(error = %err, "retention pass failed");
                    break;
                }
            };
            dropped += batch;
            // Only a full batch means more may be due.
            if batch < BATCH || stop.is_cancelled() {
                break;
            }
            // Let waiting publishers take the lock between batches.
            tokio::task::yield_now().await;
        }
        if dropped > 0 {
            stats.dropped_by_retention(dropped);
            tracing::info!(dropped, "retention: dropped events");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
