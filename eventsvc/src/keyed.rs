//! Creates and publishes made safe to repeat by the client's `Idempotency-Key` (gRPC metadata):
//! the key is claimed in the store before the write, scoped to the caller and bound to what the
//! request asks; the write records its answer under the key, and a repeat gets that answer back.

use std::time::Duration;

use eventsys::{
    auth::Caller,
    v1,
    write_key::{IdempotencyKey, REPLAYED_HEADER},
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::{Response, Status};
use uuid::Uuid;

use crate::{
    convert,
    store::{Claim, Event, EventStore, KeyClaim, NewEvent},
};

/// Keys forgotten per purge transaction, and how often expired ones are looked for.
const PURGE_BATCH: usize = 500;
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// The two writes a key can name; part of the fingerprint, so one key cannot name both.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Write {
    Create,
    Publish,
}

/// How keyed writes behave.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyPolicy {
    /// How long an answer is kept for repeats.
    pub(crate) ttl: Duration,
    /// How long a claim holds its key unanswered: the longest a call may run.
    pub(crate) lease: Duration,
}

/// How a write was answered.
pub(crate) enum Written {
    /// By this request (or the gateway sending it again after losing a backend).
    Stored(Event),
    /// From the answer an earlier request with the same key got.
    Replayed(Event),
}

impl Written {
    pub(crate) fn is_replay(&self) -> bool {
        matches!(self, Written::Replayed(_))
    }

    /// The reply, marked `idempotent-replayed: true` when it is a replay.
    pub(crate) fn into_response(self) -> Response<v1::Event> {
        match self {
            Written::Stored(event) => Response::new(convert::event(event)),
            Written::Replayed(event) => {
                let mut response = Response::new(convert::event(event));
                response
                    .metadata_mut()
                    .insert(REPLAYED_HEADER, "true".parse().expect("ASCII"));
                response
            }
        }
    }
}

/// Whose keys a request's belong to: the token's subject, or in anonymous mode (anyone may act
/// as anyone) the user the request is for.
pub(crate) fn scope(caller: &Caller, user_id: &str) -> String {
    match caller {
        Caller::User(identity) => format!("sub:{}", identity.user),
        Caller::Anyone => format!("user:{user_id}"),
    }
}

impl KeyPolicy {
    /// Stores `new` through `write`, once per key when `key` is given.
    pub(crate) async fn write(
        &self,
        store: &dyn EventStore,
        method: Write,
        mut new: NewEvent,
        key: Option<(IdempotencyKey, String)>,
    ) -> Result<Written, Status> {
        let store_it = |new: NewEvent| async move {
            match method {
                Write::Create => store.create(new).await,
                Write::Publish => store.publish(new).await,
            }
        };
        let Some((key, scope)) = key else {
            return Ok(Written::Stored(store_it(new).await?));
        };
        // A direct gRPC client may leave the id to us; the gateway always names it.
        let id = *new.id.get_or_insert_with(Uuid::now_v7);
        let claim = KeyClaim {
            scope,
            key: key.as_str().to_owned(),
            fingerprint: fingerprint(method, &new),
            ttl: self.ttl,
            lease: self.lease,
        };
        match store.claim(&claim, id).await? {
            Claim::Done(event) if event.id == id => Ok(Written::Stored(*event)),
            Claim::Done(event) => Ok(Written::Replayed(*event)),
            Claim::Fresh => {
                new.key = Some(claim);
                Ok(Written::Stored(store_it(new).await?))
            }
        }
    }
}

/// SHA-256 of what a write asks: the method and every client-given field but the id, each
/// length-prefixed, `data` with its keys sorted (the same object in another key order is the
/// same request).
fn fingerprint(method: Write, new: &NewEvent) -> [u8; 32] {
    // Every field named, so a field added to `NewEvent` does not compile until it is hashed
    // (or said here not to be part of the request).
    let NewEvent {
        id: _,  // the gateway's name for the event, not what the client asked
        key: _, // the claim this fingerprint goes into
        user_id,
        title,
        description,
        completed,
        topic,
        data,
    } = new;
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(match method {
        Write::Create => b"create",
        Write::Publish => b"publish",
    });
    field(user_id.as_bytes());
    field(title.as_bytes());
    field(description.as_bytes());
    field(&[u8::from(*completed)]);
    field(topic.as_bytes());
    let mut canonical_data = Vec::new();
    if let Some(object) = data {
        canonical(&Value::Object(object.clone()), &mut canonical_data);
    }
    field(&canonical_data);
    hash.finalize().into()
}

/// `value` as JSON with every object's keys in sorted order.
fn canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

/// Forgets expired keys every minute until `stop`, in short batches.
pub(crate) async fn purge(store: std::sync::Arc<dyn EventStore>, stop: CancellationToken) {
    loop {
        loop {
            match store.purge_keys(PURGE_BATCH).await {
                Ok(n) if n == PURGE_BATCH && !stop.is_cancelled() => {
                    tokio::task::yield_now().await;
                }
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "purging expired idempotency keys failed");
                    break;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PURGE_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_data(data: Value) -> NewEvent {
        NewEvent {
            title: "t".into(),
            data: data.as_object().cloned(),
            ..Default::default()
        }
    }

    #[test]
    fn fingerprints_ignore_key_order_and_the_id_but_nothing_else() {
        let a = with_data(json!({"a": 1, "b": {"x": [1, 2], "y": null}}));
        let mut b = with_data(json!({"b": {"y": null, "x": [1, 2]}, "a": 1}));
        b.id = Some(Uuid::new_v4());
        assert_eq!(
            fingerprint(Write::Create, &a),
            fingerprint(Write::Create, &b)
        );
        assert_ne!(
            fingerprint(Write::Create, &a),
            fingerprint(Write::Publish, &a)
        );
        let c = with_data(json!({"a": 1, "b": {"x": [2, 1], "y": null}}));
        assert_ne!(
            fingerprint(Write::Create, &a),
            fingerprint(Write::Create, &c)
        );
        // Field boundaries count: "ab" + "" is not "a" + "b".
        let d = NewEvent {
            title: "ab".into(),
            ..Default::default()
        };
        let e = NewEvent {
            title: "a".into(),
            description: "b".into(),
            ..Default::default()
        };
        assert_ne!(
            fingerprint(Write::Create, &d),
            fingerprint(Write::Create, &e)
        );
    }
}
