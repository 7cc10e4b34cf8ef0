//! Retention on PostgreSQL: a topic's oldest published events beyond its count or age are
//! dropped in batches, each one transaction that also records the newest `seq` dropped, so a
//! reader never finds events gone without being told of the gap.

use std::time::{SystemTime, UNIX_EPOCH};

use deadpool_postgres::GenericClient;

use super::pg_error;
use crate::store::{Result, Retention};

/// One batch: the first topic with events due is trimmed by up to `batch` events.
pub(super) async fn compact(
    client: &mut deadpool_postgres::Object,
    retention: Retention,
    batch: usize,
) -> Result<usize> {
    let fail = |e| pg_error("compact", e);
    let Some((topic, through)) = due(&*client, retention).await.map_err(fail)? else {
        return Ok(0);
    };
    let tx = client.transaction().await.map_err(fail)?;
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let dropped: Vec<i64> = tx
        .query(
            "DELETE FROM events WHERE pk IN (
                 SELECT pk FROM events WHERE topic = $1 AND seq IS NOT NULL AND seq <= $2
                 ORDER BY seq LIMIT $3)
             RETURNING seq",
            &[&topic, &through, &limit],
        )
        .await
        .map_err(fail)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    // When nothing is left to delete (users deleted them), the bound still moves to `through`.
    let newest = if dropped.len() < batch {
        through
    } else {
        dropped.iter().copied().max().unwrap_or(through)
    };
    tx.execute(
        "UPDATE topics SET dropped_through = GREATEST(dropped_through, $2) WHERE topic = $1",
        &[&topic, &newest],
    )
    .await
    .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    Ok(dropped.len())
}

/// A topic with events retention no longer keeps, and the newest seq to drop.
async fn due(
    client: &impl GenericClient,
    retention: Retention,
) -> std::result::Result<Option<(String, i64)>, tokio_postgres::Error> {
    if let Some(max) = retention.max_events {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let found = client
            .query_opt(
                "SELECT topic, last_seq - $1 FROM topics WHERE last_seq - $1 > dropped_through
                 LIMIT 1",
                &[&max],
            )
            .await?;
        if let Some(row) = found {
            return Ok(Some((row.get(0), row.get(1))));
        }
    }
    if let Some(age) = retention.max_age {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let cutoff = i64::try_from(now.saturating_sub(age).as_millis()).unwrap_or(i64::MAX);
        let found = client
            .query_opt(
                "SELECT e.topic, max(e.seq) FROM events e JOIN topics t ON t.topic = e.topic
                 WHERE e.seq IS NOT NULL AND e.time < $1
                 GROUP BY e.topic HAVING max(e.seq) > max(t.dropped_through) LIMIT 1",
                &[&cutoff],
            )
            .await?;
        return Ok(found.map(|row| (row.get(0), row.get(1))));
    }
    Ok(None)
}

pub(super) async fn dropped_through(client: &impl GenericClient, topic: &str) -> Result<u64> {
    let through: Option<i64> = client
        .query_opt(
            "SELECT dropped_through FROM topics WHERE topic = $1",
            &[&topic],
        )
        .await
        .map_err(|e| pg_error("dropped_through", e))?
        .map(|row| row.get(0));
    Ok(through.unwrap_or(0).max(0) as u64)
}
