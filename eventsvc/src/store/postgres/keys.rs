//! Idempotency keys on PostgreSQL, as on SQLite: a claim is one short transaction (an advisory
//! lock on the key serialises claims of one key across backends, even before its row exists);
//! the keyed write records its outcome in its own transaction, so a key is never left claimed
//! by a write that committed.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::pg_error;
use crate::store::{Claim, Event, KeyClaim, Result, StoreError, later, now_ms, outcome};

/// The advisory lock's name for a caller's key (the scope's length says where it ends).
fn lock_name(claim: &KeyClaim) -> String {
    format!("{}:{}/{}", claim.scope.len(), claim.scope, claim.key)
}

pub(super) async fn claim(
    client: &mut deadpool_postgres::Object,
    claim: &KeyClaim,
    id: Uuid,
) -> Result<Claim> {
    let fail = |e| pg_error("claim", e);
    let tx = client.transaction().await.map_err(fail)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&lock_name(claim)],
    )
    .await
    .map_err(fail)?;
    let held = tx
        .query_opt(
            "SELECT fingerprint, event_id, lease_until, outcome, expires_at
             FROM idempotency_keys WHERE scope = $1 AND key = $2",
            &[&claim.scope.as_bytes(), &claim.key],
        )
        .await
        .map_err(fail)?;
    let now = now_ms();
    let id = id.to_string();
    if let Some(held) = held
        && held.get::<_, i64>("expires_at") > now
    {
        if held.get::<_, Vec<u8>>("fingerprint") != claim.fingerprint {
            return Err(StoreError::KeyReused);
        }
        if let Some(answered) = held.get::<_, Option<String>>("outcome") {
            return outcome::decode(&answered).map(|event| Claim::Done(Box::new(event)));
        }
        let abandoned = held
            .get::<_, Option<i64>>("lease_until")
            .is_none_or(|until| until <= now);
        if held.get::<_, String>("event_id") != id && !abandoned {
            return Err(StoreError::KeyInFlight);
        }
    }
    // Unused, its time up, abandoned, or this write's own: a new request.
    tx.execute(
        "INSERT INTO idempotency_keys
             (scope, key, fingerprint, event_id, lease_until, outcome, expires_at)
         VALUES ($1, $2, $3, $4, $5, NULL, $6)
         ON CONFLICT (scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,
             event_id = EXCLUDED.event_id, lease_until = EXCLUDED.lease_until, outcome = NULL,
             expires_at = EXCLUDED.expires_at",
        &[
            &claim.scope.as_bytes(),
            &claim.key,
            &&claim.fingerprint[..],
            &id,
            &later(now, claim.lease),
            &later(now, claim.ttl),
        ],
    )
    .await
    .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    Ok(Claim::Fresh)
}

/// Records `event` as the answer to `claim`, inside the write's transaction; `KeyInFlight` (and
/// the caller rolls back) when the claim is no longer this write's.
pub(super) async fn answer(
    tx: &impl GenericClient,
    op: &'static str,
    claim: &KeyClaim,
    event: &Event,
) -> Result<()> {
    let recorded = tx
        .execute(
            "UPDATE idempotency_keys SET outcome = $4, lease_until = NULL
             WHERE scope = $1 AND key = $2 AND event_id = $3 AND outcome IS NULL",
            &[
                &claim.scope.as_bytes(),
                &claim.key,
                &event.id.to_string(),
                &outcome::encode(event),
            ],
        )
        .await
        .map_err(|e| pg_error(op, e))?;
    if recorded == 0 {
        return Err(StoreError::KeyInFlight);
    }
    Ok(())
}

pub(super) async fn purge(client: &impl GenericClient, batch: usize) -> Result<usize> {
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let purged = client
        .execute(
            "DELETE FROM idempotency_keys WHERE (scope, key) IN (
                 SELECT scope, key FROM idempotency_keys WHERE expires_at <= $1 LIMIT $2)",
            &[&now_ms(), &limit],
        )
        .await
        .map_err(|e| pg_error("purge_keys", e))?;
    Ok(usize::try_from(purged).unwrap_or(usize::MAX))
}
