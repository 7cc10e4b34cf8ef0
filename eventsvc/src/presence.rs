//! Presence at a backend: the `Presence` and `ReportPresence` calls' rules (who may ask,
//! what a report may hold), and the expiry task that removes the members of gateways that
//! stopped reporting, with their leaves. Every backend runs it; the store's transaction makes
//! each gateway's expiry happen once, whichever backend gets there first.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use eventsys::v1;
use tokio_util::sync::CancellationToken;

use crate::{
    convert,
    store::{
        EventStore,
        presence::{Member, PresenceReport},
    },
    validate::{self, FieldError},
};

/// How long a gateway's members outlive its last report, unless configured.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// Gateways expired per transaction.
const BATCH: usize = 16;
/// Members one report may carry: every member of a gateway (gateways keep at most as many).
pub(crate) const MAX_MEMBERS: usize = 20_000;
/// Longest gateway id, in bytes.
const MAX_GATEWAY: usize = 128;

/// What presence calls are told about time.
#[derive(Debug, Clone, Copy)]
pub struct PresencePolicy {
    /// Members of a gateway whose last report is older are gone.
    pub ttl: Duration,
}

impl Default for PresencePolicy {
    fn default() -> Self {
        Self { ttl: DEFAULT_TTL }
    }
}

/// A `ReportPresence` request, checked.
pub(crate) fn report(req: v1::ReportPresenceRequest) -> Result<PresenceReport, FieldError> {
    let v1::ReportPresenceRequest {
        gateway,
        full,
        members,
    } = req;
    if gateway.is_empty() || gateway.len() > MAX_GATEWAY {
        return Err(FieldError(format!(
            "gateway must be 1 to {MAX_GATEWAY} bytes"
        )));
    }
    if members.len() > MAX_MEMBERS {
        return Err(FieldError(format!(
            "a report carries at most {MAX_MEMBERS} members"
        )));
    }
    let at = Utc::now();
    let members = members
        .into_iter()
        .map(|m| {
            let v1::PresenceMember {
                topic,
                user_id,
                connections,
                since,
            } = m;
            validate::topic(&topic)?;
            validate::owner(user_id.clone())?;
            Ok(Member {
                topic,
                subject: user_id,
                connections,
                since: since.and_then(convert::from_timestamp).unwrap_or(at),
            })
        })
        .collect::<Result<_, FieldError>>()?;
    Ok(PresenceReport {
        gateway,
        at,
        full,
        members,
    })
}

/// Expires silent gateways every third of the TTL until `stop`.
pub(crate) async fn expire(
    store: Arc<dyn EventStore>,
    policy: PresencePolicy,
    stop: CancellationToken,
) {
    let every = policy.ttl / 3;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let cutoff = Utc::now() - policy.ttl;
        loop {
            match store.expire_presence(cutoff, BATCH).await {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    tracing::info!(
                        leaves = events.len(),
                        "presence: expired a silent gateway's members"
                    );
                }
                Err(crate::store::StoreError::Unsupported(_)) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "presence expiry failed");
                    break;
                }
            }
        }
    }
}
