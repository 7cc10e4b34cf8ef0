//! Presence at a gateway: who has a stream of which topic open here. Each SSE stream of a topic
//! holds a `Here` for its life; what changed is reported to the backends once per interval
//! (one write per gateway per interval, never one per client), which also renews this gateway
//! there. A subject whose last stream here closed is reported gone only after the debounce, so
//! a reconnect is not a leave. Anonymous streams are counted under an empty subject, never
//! named. A gateway keeps at most `MAX_MEMBERS` (topic, subject) members, so that a full report
//! is one the backends take; past it a subject's streams are counted anonymously when their
//! topic has anonymous ones, else not at all.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use eventsys::{auth::ServiceSigner, v1};
use tokio::time::Instant;

use crate::{http::AppState, upstream::Bearer};

/// (topic, subject) members one gateway keeps: what one report may carry.
const MAX_MEMBERS: usize = 20_000;

/// This gateway's members, by (topic, subject).
pub(crate) struct Presences {
    /// This gateway process's id (new at every start).
    pub(crate) gateway: String,
    /// A std mutex: held to count a stream in or out, or to take a report, never across an
    /// `.await`.
    members: Mutex<Members>,
}

#[derive(Default)]
struct Members {
    by_key: HashMap<(String, String), Local>,
    /// The next report must list every member (the first, after a failure, or asked for).
    full: bool,
}

struct Local {
    connections: u64,
    since: DateTime<Utc>,
    /// What the backends were last told.
    reported: u64,
    /// Its last stream here closed then (reported gone after the debounce).
    empty_since: Option<Instant>,
}

/// A stream's place in its gateway's presence: counted until dropped (`key` none: past the
/// bound, not counted).
pub(crate) struct Here {
    presences: Arc<Presences>,
    key: Option<(String, String)>,
}

impl Drop for Here {
    fn drop(&mut self) {
        let Some(key) = &self.key else { return };
        let mut members = self.presences.members();
        if let Some(local) = members.by_key.get_mut(key) {
            local.connections = local.connections.saturating_sub(1);
            if local.connections == 0 {
                local.empty_since = Some(Instant::now());
            }
        }
    }
}

impl Presences {
    pub(crate) fn new() -> Arc<Presences> {
        Arc::new(Presences {
            gateway: uuid::Uuid::new_v4().to_string(),
            members: Mutex::new(Members {
                full: true,
                ..Members::default()
            }),
        })
    }

    fn members(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a stream of `topic` by `subject` (empty: anonymous) in, until the guard drops.
    pub(crate) fn enter(self: &Arc<Self>, topic: &str, subject: &str) -> Here {
        let mut members = self.members();
        let mut key = (topic.to_owned(), subject.to_owned());
        if !members.by_key.contains_key(&key) && members.by_key.len() >= MAX_MEMBERS {
            key.1 = String::new();
            if !members.by_key.contains_key(&key) {
                return Here {
                    presences: self.clone(),
                    key: None,
                };
            }
        }
        let local = members.by_key.entry(key.clone()).or_insert_with(|| Local {
            connections: 0,
            since: Utc::now(),
            reported: 0,
            empty_since: None,
        });
        local.connections += 1;
        local.empty_since = None;
        Here {
            presences: self.clone(),
            key: Some(key),
        }
    }

    /// What to report now: every member (`full`) or what changed, members gone longer than
    /// `debounce` as 0 (and forgotten).
    fn report(&self, debounce: Duration) -> v1::ReportPresenceRequest {
        let now = Instant::now();
        let mut members = self.members();
        let full = std::mem::take(&mut members.full);
        let mut listed = Vec::new();
        let mut forgotten = Vec::new();
        for (key, local) in members.by_key.iter_mut() {
            let gone = local
                .empty_since
                .is_some_and(|since| now.duration_since(since) >= debounce);
            // Inside the debounce a member stays as it was last reported.
            let connections = match (local.connections, gone) {
                (0, true) => 0,
                (0, false) => local.reported,
                (n, _) => n,
            };
            if gone {
                forgotten.push(key.clone());
            }
            if full && connections == 0 || !full && connections == local.reported {
                continue;
            }
            local.reported = connections;
            listed.push(v1::PresenceMember {
                topic: key.0.clone(),
                user_id: key.1.clone(),
                connections,
                since: Some(prost_types::Timestamp {
                    seconds: local.since.timestamp(),
                    nanos: local.since.timestamp_subsec_nanos() as i32,
                }),
            });
        }
        for key in forgotten {
            members.by_key.remove(&key);
        }
        v1::ReportPresenceRequest {
            gateway: self.gateway.clone(),
            full,
            members: listed,
        }
    }

    /// The next report lists every member.
    fn resync(&self) {
        self.members().full = true;
    }
}

/// What this gateway's own calls (presence reports) carry in token mode: a token read from a
/// file (re-read every time, so it can be rotated), or one minted with the deployment's HMAC
/// secret. Anonymous mode: none.
#[derive(Debug, Clone, Default)]
pub(crate) enum ServiceToken {
    #[default]
    None,
    File(std::path::PathBuf),
    Signed(ServiceSigner),
}

/// Minted tokens' life; one is minted again when less than a minute of it is left.
const MINTED_FOR: Duration = Duration::from_secs(600);

/// The service token's source and the last one minted.
pub(crate) struct ServiceTokens {
    source: ServiceToken,
    /// A std mutex: held to copy or replace the cached token.
    minted: Mutex<Option<(Bearer, u64)>>,
}

impl ServiceTokens {
    pub(crate) fn new(source: ServiceToken) -> ServiceTokens {
        ServiceTokens {
            source,
            minted: Mutex::new(None),
        }
    }

    /// The bearer for the gateway `gateway`'s own calls now, if it has one.
    pub(crate) fn bearer(&self, gateway: &str) -> Option<Bearer> {
        match &self.source {
            ServiceToken::None => None,
            ServiceToken::File(path) => {
                let token = std::fs::read_to_string(path)
                    .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot read the service token"))
                    .ok()?;
                Bearer::new(token.trim())
            }
            ServiceToken::Signed(signer) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let mut minted = self.minted.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((bearer, exp)) = &*minted
                    && *exp > now + 60
                {
                    return Some(bearer.clone());
                }
                let (token, exp) = signer
                    .token(&format!("gateway:{gateway}"), MINTED_FOR)
                    .inspect_err(|e| tracing::warn!(error = %e, "cannot sign a service token"))
                    .ok()?;
                let bearer = Bearer::new(&token)?;
                *minted = Some((bearer.clone(), exp));
                Some(bearer)
            }
        }
    }
}

/// Reports this gateway's members every `every` until shutdown.
pub(crate) async fn report(state: AppState, every: Duration, debounce: Duration) {
    let presences = state.presences.clone();
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let bearer = state.service.bearer(&presences.gateway);
        if bearer.is_none() && state.auth.token_mode() {
            // No token to report with (said once, at start): nothing is sent.
            continue;
        }
        let request = presences.report(debounce);
        let outcome = match state.upstream.call(request, bearer.as_ref()).await {
            Ok(answer) if answer.message.resync => {
                presences.resync();
                "resync"
            }
            Ok(_) => "ok",
            Err(err) => {
                // What it carried may be lost: the next report says everything.
                presences.resync();
                tracing::warn!(error = %crate::api::ApiError::from(err).message, "presence report failed");
                "failed"
            }
        };
        state
            .metrics
            .presence_reported(outcome, presences.members().by_key.len());
    }
}

#[cfg(test)]
mod tests {
    //! The registry's reports under paused time: deltas, the debounce, full reports, the bound.

    use super::*;

    fn counts(report: &v1::ReportPresenceRequest) -> Vec<(String, String, u64)> {
        let mut counts: Vec<_> = report
            .members
            .iter()
            .map(|m| (m.topic.clone(), m.user_id.clone(), m.connections))
            .collect();
        counts.sort();
        counts
    }

    fn at(topic: &str, user: &str, n: u64) -> (String, String, u64) {
        (topic.to_owned(), user.to_owned(), n)
    }

    #[tokio::test(start_paused = true)]
    async fn reports_say_what_changed_and_a_leave_waits_for_the_debounce() {
        let debounce = Duration::from_secs(5);
        let presences = Presences::new();
        let ann = presences.enter("t", "ann");
        let anon = [presences.enter("t", ""), presences.enter("t", "")];
        let first = presences.report(debounce);
        assert!(first.full, "the first report is full");
        assert_eq!(counts(&first), [at("t", "", 2), at("t", "ann", 1)]);
        // Nothing changed: a report of nothing (it still renews the gateway).
        let quiet = presences.report(debounce);
        assert!(!quiet.full && quiet.members.is_empty());
        // Ann goes: not reported before the debounce; back within it, never reported.
        drop(ann);
        tokio::time::advance(debounce / 2).await;
        assert!(presences.report(debounce).members.is_empty());
        let ann = presences.enter("t", "ann");
        tokio::time::advance(debounce).await;
        assert!(presences.report(debounce).members.is_empty());
        // Gone for good: reported as 0 once the debounce passed.
        drop(ann);
        drop(anon);
        tokio::time::advance(debounce).await;
        assert_eq!(
            counts(&presences.report(debounce)),
            [at("t", "", 0), at("t", "ann", 0)]
        );
        assert!(presences.members().by_key.is_empty(), "forgotten");
        // Asked to resync: everything there is.
        let _bob = presences.enter("u", "bob");
        presences.resync();
        let full = presences.report(debounce);
        assert!(full.full);
        assert_eq!(counts(&full), [at("u", "bob", 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_bound_streams_count_anonymously_or_not_at_all() {
        let presences = Presences::new();
        let mut held = Vec::new();
        for i in 0..MAX_MEMBERS - 1 {
            held.push(presences.enter("t", &format!("u{i}")));
        }
        held.push(presences.enter("t", ""));
        // Full: a new subject counts under the topic's anonymous member.
        held.push(presences.enter("t", "late"));
        // Another topic has no anonymous member: not counted.
        held.push(presences.enter("other", "late"));
        let report = presences.report(Duration::from_secs(5));
        assert_eq!(report.members.len(), MAX_MEMBERS);
        let anonymous = report
            .members
            .iter()
            .find(|m| m.topic == "t" && m.user_id.is_empty())
            .unwrap();
        assert_eq!(anonymous.connections, 2);
        assert!(!report.members.iter().any(|m| m.topic == "other"));
    }
}
