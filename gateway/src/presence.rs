//! Presence at a gateway: who has a stream of which topic open here. Each SSE stream of a topic
//! holds a `Here` for its life; what changed is reported to the backends once per interval
//! (one write per gateway per interval, never one per client), which also renews this gateway
//! there. A subject whose last stream here closed is reported gone only after the debounce, so
//! a reconnect is not a leave. Anonymous streams are counted under an empty subject, never
//! named; past `MAX_NAMED` named members, more are counted the same way.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use eventsys::{auth::ServiceSigner, v1};
use tokio::time::Instant;

use crate::{http::AppState, upstream::Bearer};

/// Named (topic, subject) members one gateway keeps; past it, streams are counted anonymous.
const MAX_NAMED: usize = 20_000;

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
    named: usize,
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

/// A stream's place in its gateway's presence: counted until dropped.
pub(crate) struct Here {
    presences: Arc<Presences>,
    key: (String, String),
}

impl Drop for Here {
    fn drop(&mut self) {
        let mut members = self.presences.members();
        if let Some(local) = members.by_key.get_mut(&self.key) {
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
        if !subject.is_empty() && !members.by_key.contains_key(&key) && members.named >= MAX_NAMED {
            key.1 = String::new();
        }
        let members = &mut *members;
        let local = members.by_key.entry(key.clone()).or_insert_with(|| {
            if !key.1.is_empty() {
                members.named += 1;
            }
            Local {
                connections: 0,
                since: Utc::now(),
                reported: 0,
                empty_since: None,
            }
        });
        local.connections += 1;
        local.empty_since = None;
        Here {
            presences: self.clone(),
            key,
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
            if !key.1.is_empty() {
                members.named -= 1;
            }
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
        let request = presences.report(debounce);
        let bearer = state.service.bearer(&presences.gateway);
        match state.upstream.call(request, bearer.as_ref()).await {
            Ok(answer) if answer.message.resync => presences.resync(),
            Ok(_) => {}
            Err(err) => {
                // What it carried may be lost: the next report says everything.
                presences.resync();
                tracing::warn!(error = %crate::api::ApiError::from(err).message, "presence report failed");
            }
        }
    }
}
