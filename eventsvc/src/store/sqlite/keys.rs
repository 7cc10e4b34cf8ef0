//! Idempotency keys on SQLite: a claim is one short write transaction; the keyed write records
//! its outcome in its own transaction, so a key is never left claimed by a write that committed.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

use super::{Event, Result, StoreError, sql_error};
use crate::store::{Claim, KeyClaim, later, now_ms, outcome};

/// Schema of the keys: one row per (caller, key); `outcome` set once answered, `lease_until`
/// while not.
pub(super) const MIGRATION: &str = "CREATE TABLE idempotency_keys (
         scope       TEXT    NOT NULL,
         key         TEXT    NOT NULL,
         fingerprint BLOB    NOT NULL,
         event_id    TEXT    NOT NULL,
         lease_until INTEGER,
         outcome     TEXT,
         expires_at  INTEGER NOT NULL,
         PRIMARY KEY (scope, key)
     ) WITHOUT ROWID;
     CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);";

/// A key's row as `claim` reads it.
struct Held {
    fingerprint: Vec<u8>,
    event_id: String,
    lease_until: Option<i64>,
    outcome: Option<String>,
    expires_at: i64,
}

/// A claim commits without waiting for the disk: it needs to be seen by other processes at once
/// (it is, through the WAL's shared memory), not to outlive the machine. The keyed write that
/// follows syncs the WAL, the claim's frames with it; a claim lost to a power cut is one whose
/// write never committed, and its request was never answered.
pub(super) fn claim(conn: &mut Connection, claim: &KeyClaim, id: Uuid) -> Result<Claim> {
    let fail = |e| sql_error("claim", &e);
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(fail)?;
    let claimed = claim_in(conn, claim, id);
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(fail)?;
    claimed
}

fn claim_in(conn: &mut Connection, claim: &KeyClaim, id: Uuid) -> Result<Claim> {
    let fail = |e| sql_error("claim", &e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let held = tx
        .prepare_cached(
            "SELECT fingerprint, event_id, lease_until, outcome, expires_at
             FROM idempotency_keys WHERE scope = ?1 AND key = ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![claim.scope, claim.key], |row| {
                Ok(Held {
                    fingerprint: row.get(0)?,
                    event_id: row.get(1)?,
                    lease_until: row.get(2)?,
                    outcome: row.get(3)?,
                    expires_at: row.get(4)?,
                })
            })
            .optional()
        })
        .map_err(fail)?;
    let now = now_ms();
    let id = id.to_string();
    match held {
        Some(held) if held.expires_at > now => {
            if held.fingerprint != claim.fingerprint {
                return Err(StoreError::KeyReused);
            }
            if let Some(answered) = held.outcome {
                return outcome::decode(&answered).map(|event| Claim::Done(Box::new(event)));
            }
            let abandoned = held.lease_until.is_none_or(|until| until <= now);
            if held.event_id != id && !abandoned {
                return Err(StoreError::KeyInFlight);
            }
        }
        // Unused, or its time is up: a new request.
        _ => {}
    }
    tx.prepare_cached(
        "INSERT OR REPLACE INTO idempotency_keys
             (scope, key, fingerprint, event_id, lease_until, outcome, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            claim.scope,
            claim.key,
            &claim.fingerprint[..],
            id,
            later(now, claim.lease),
            later(now, claim.ttl),
        ])
    })
    .map_err(fail)?;
    tx.commit().map_err(fail)?;
    Ok(Claim::Fresh)
}

/// Records `event` as the answer to `claim`, inside the write's transaction; `KeyInFlight` (and
/// the caller rolls back) when the claim is no longer this write's.
pub(super) fn answer(
    tx: &Connection,
    op: &'static str,
    claim: &KeyClaim,
    event: &Event,
) -> Result<()> {
    // An outcome already there is this event's (the claim names it): the write is a repeat of
    // one that committed (sent again after the process committing it died), and the first
    // answer stands.
    let recorded = tx
        .prepare_cached(
            "UPDATE idempotency_keys SET outcome = coalesce(outcome, ?4), lease_until = NULL
             WHERE scope = ?1 AND key = ?2 AND event_id = ?3",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                claim.scope,
                claim.key,
                event.id.to_string(),
                outcome::encode(event)
            ])
        })
        .map_err(|e| sql_error(op, &e))?;
    if recorded == 0 {
        return Err(StoreError::KeyInFlight);
    }
    Ok(())
}

pub(super) fn purge(conn: &Connection, batch: usize) -> Result<usize> {
    conn.prepare_cached(
        "DELETE FROM idempotency_keys WHERE (scope, key) IN (
             SELECT scope, key FROM idempotency_keys WHERE expires_at <= ?1 LIMIT ?2)",
    )
    .and_then(|mut stmt| stmt.execute(params![now_ms(), batch]))
    .map_err(|e| sql_error("purge_keys", &e))
}
