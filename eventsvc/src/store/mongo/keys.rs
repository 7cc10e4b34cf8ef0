//! Idempotency keys on MongoDB (`idempotency_keys`, one document per caller and key, expired
//! by a TTL index). Claims are single-document compare-and-set operations, so they work on a
//! standalone server too. The outcome is recorded just after the write rather than inside its
//! transaction (a create has none); a process that dies in between leaves the claim with an
//! event that exists, and the next claim after its lease finds that event and answers with it.

use chrono::Utc;
use mongodb::{
    Collection,
    bson::{Binary, Bson, DateTime, Document, doc, spec::BinarySubtype},
};
use uuid::Uuid;

use super::{from_document, is_duplicate_key, mongo_error};
use crate::store::{Claim, Event, KeyClaim, Result, StoreError, outcome};

/// Compare-and-set rounds a claim tries before calling the key busy (each lost round means
/// another request changed the key meanwhile).
const ROUNDS: usize = 3;

/// The document id of a caller's key: a plain string, so a lookup never depends on how a
/// server compares embedded documents, and no caller's key can name another's (the scope's
/// length says where it ends, whatever characters either holds).
fn key_id(claim: &KeyClaim) -> String {
    format!("{}:{}/{}", claim.scope.len(), claim.scope, claim.key)
}

fn at(from_now: std::time::Duration) -> DateTime {
    let ms = i64::try_from(from_now.as_millis()).unwrap_or(i64::MAX);
    DateTime::from_millis(Utc::now().timestamp_millis().saturating_add(ms))
}

/// The document of a fresh claim by event `id`.
fn claimed(claim: &KeyClaim, id: Uuid) -> Document {
    doc! {
        "_id": key_id(claim),
        // For whoever reads the collection; lookups use `_id`.
        "scope": &claim.scope,
        "key": &claim.key,
        "fingerprint": Binary { subtype: BinarySubtype::Generic, bytes: claim.fingerprint.to_vec() },
        "eventId": id.to_string(),
        "leaseUntil": at(claim.lease),
        "outcome": Bson::Null,
        "expiresAt": at(claim.ttl),
    }
}

pub(super) async fn claim(
    keys: &Collection<Document>,
    events: &Collection<Document>,
    claim: &KeyClaim,
    id: Uuid,
) -> Result<Claim> {
    let fail = |e| mongo_error("claim", e);
    let now = DateTime::now();
    for _ in 0..ROUNDS {
        let held = keys
            .find_one(doc! {"_id": key_id(claim)})
            .await
            .map_err(fail)?;
        let Some(held) = held else {
            match keys.insert_one(claimed(claim, id)).await {
                Ok(_) => return Ok(Claim::Fresh),
                // Another request claimed it first: look again.
                Err(err) if is_duplicate_key(&err) => continue,
                Err(err) => return Err(fail(err)),
            }
        };
        let expired = held.get_datetime("expiresAt").is_ok_and(|t| *t <= now);
        if !expired {
            let fingerprint = held.get_binary_generic("fingerprint").ok();
            if fingerprint.map(Vec::as_slice) != Some(&claim.fingerprint[..]) {
                return Err(StoreError::KeyReused);
            }
            if let Ok(answered) = held.get_str("outcome") {
                return outcome::decode(answered).map(|event| Claim::Done(Box::new(event)));
            }
        }
        let holder = held.get_str("eventId").unwrap_or_default().to_owned();
        let abandoned = held.get_datetime("leaseUntil").is_ok_and(|t| *t <= now);
        if !expired && holder != id.to_string() && !abandoned {
            return Err(StoreError::KeyInFlight);
        }
        // An abandoned claim whose event was stored: its writer died before recording the
        // outcome. That event is the answer.
        if !expired
            && abandoned
            && let Some(found) = events.find_one(doc! {"id": &holder}).await.map_err(fail)?
        {
            let event = from_document(&found)?;
            record(keys, claim, &event).await?;
            return Ok(Claim::Done(Box::new(event)));
        }
        // Take it over, unless another request changed it since it was read.
        let unchanged = if expired {
            doc! {"_id": key_id(claim), "expiresAt": held.get("expiresAt").cloned().unwrap_or(Bson::Null)}
        } else {
            doc! {"_id": key_id(claim), "eventId": &holder, "outcome": Bson::Null}
        };
        let replaced = keys
            .replace_one(unchanged, claimed(claim, id))
            .await
            .map_err(fail)?;
        if replaced.matched_count == 1 {
            return Ok(Claim::Fresh);
        }
    }
    Err(StoreError::KeyInFlight)
}

/// Records `event` as the answer to `claim`; `KeyInFlight` when the claim is no longer this
/// write's (its lease ran out and another request took the key).
pub(super) async fn record(
    keys: &Collection<Document>,
    claim: &KeyClaim,
    event: &Event,
) -> Result<()> {
    let updated = keys
        .update_one(
            doc! {"_id": key_id(claim), "eventId": event.id.to_string(), "outcome": Bson::Null},
            doc! {"$set": {"outcome": outcome::encode(event), "leaseUntil": Bson::Null}},
        )
        .await
        .map_err(|e| mongo_error("claim", e))?;
    if updated.matched_count == 0 {
        return Err(StoreError::KeyInFlight);
    }
    Ok(())
}
