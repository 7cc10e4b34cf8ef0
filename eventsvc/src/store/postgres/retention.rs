//! Retention on PostgreSQL: a stream's oldest items beyond its count or age (a topic's
//! published events, a user's change feed entries) are dropped in batches, each one
//! transaction that also records the newest `seq` (position) dropped, so a reader never finds
//! items gone without being told of the gap. One mechanism for both; a `Trimmed` says which
//! tables it works on.

use std::time::{SystemTime, UNIX_EPOCH};

use deadpool_postgres::GenericClient;
use tokio_postgres::types::{FromSqlOwned, ToSql};

use super::pg_error;
use crate::store::{Result, Retention};

/// The statements that differ between the streams retention trims. `$1` is always the
/// stream's key (a topic, a user).
pub(super) struct Trimmed {
    /// Deletes up to `$3` of the stream's items at or below `$2`, oldest first, returning
    /// their places.
    pub(super) delete: &'static str,
    /// Records `$2` as the newest place dropped (never moving it back).
    pub(super) bound: &'static str,
    /// A stream with over `$1` items past its bound, and its newest place to drop.
    pub(super) over_count: &'static str,
    /// A stream with items older than `$1` (ms) past its bound, and its newest such place.
    pub(super) over_age: &'static str,
    /// The stream's newest place dropped.
    pub(super) dropped: &'static str,
}

/// Topics' published events, by `seq` (the per-topic counter row in `topics`).
pub(super) const TOPICS: Trimmed = Trimmed {
    delete: "DELETE FROM events WHERE pk IN (
                 SELECT pk FROM events WHERE topic = $1 AND seq IS NOT NULL AND seq <= $2
                 ORDER BY seq LIMIT $3)
             RETURNING seq",
    bound: "UPDATE topics SET dropped_through = GREATEST(dropped_through, $2) WHERE topic = $1",
    over_count: "SELECT topic, last_seq - $1 FROM topics WHERE last_seq - $1 > dropped_through
                 LIMIT 1",
    over_age: "SELECT e.topic, max(e.seq) FROM events e JOIN topics t ON t.topic = e.topic
               WHERE e.seq IS NOT NULL AND e.time < $1
               GROUP BY e.topic HAVING max(e.seq) > max(t.dropped_through) LIMIT 1",
    dropped: "SELECT dropped_through FROM topics WHERE topic = $1",
};

/// One batch: the first stream with items due is trimmed by up to `batch` items. `K` is the
/// streams' key as the tables hold it (a topic's text, a user's bytes).
pub(super) async fn compact<K: FromSqlOwned + ToSql + Sync>(
    client: &mut deadpool_postgres::Object,
    trimmed: &Trimmed,
    retention: Retention,
    batch: usize,
) -> Result<usize> {
    let fail = |e| pg_error("compact", e);
    let Some((key, through)) = due::<K>(&*client, trimmed, retention).await.map_err(fail)? else {
        return Ok(0);
    };
    let tx = client.transaction().await.map_err(fail)?;
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let dropped: Vec<i64> = tx
        .query(trimmed.delete, &[&key, &through, &limit])
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
    tx.execute(trimmed.bound, &[&key, &newest])
        .await
        .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    Ok(dropped.len())
}

/// A stream with items retention no longer keeps, and the newest place to drop.
async fn due<K: FromSqlOwned>(
    client: &impl GenericClient,
    trimmed: &Trimmed,
    retention: Retention,
) -> std::result::Result<Option<(K, i64)>, tokio_postgres::Error> {
    if let Some(max) = retention.max_events {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        if let Some(row) = client.query_opt(trimmed.over_count, &[&max]).await? {
            return Ok(Some((row.get(0), row.get(1))));
        }
    }
    if let Some(age) = retention.max_age {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let cutoff = i64::try_from(now.saturating_sub(age).as_millis()).unwrap_or(i64::MAX);
        let found = client.query_opt(trimmed.over_age, &[&cutoff]).await?;
        return Ok(found.map(|row| (row.get(0), row.get(1))));
    }
    Ok(None)
}

/// The newest place retention dropped from the stream `key`; 0 when none.
pub(super) async fn dropped_through(
    client: &impl GenericClient,
    trimmed: &Trimmed,
    key: &(dyn ToSql + Sync),
) -> Result<u64> {
    let through: Option<i64> = client
        .query_opt(trimmed.dropped, &[key])
        .await
        .map_err(|e| pg_error("dropped_through", e))?
        .map(|row| row.get(0));
    Ok(through.unwrap_or(0).max(0) as u64)
}
