//! A JWKS served at a URL (an identity provider's `jwks_uri`): fetched at start, then refreshed
//! in the background every interval and when a token names a `kid` not in the set, never more
//! than once per floor for the latter, so a flood of made-up `kid`s cannot make it fetch in a
//! loop. Verification reads the last good set and never waits for the network.

use std::{
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use tokio::sync::Notify;

/// Longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
const MAX_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
pub(super) struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    set: RwLock<JwkSet>,
    last_fetch: Mutex<Instant>,
    wake: Notify,
    /// Fetches asked for by an unknown `kid` wait at least this long after the last one.
    floor: Duration,
}

impl RemoteJwks {
    /// Fetches the set once (failing start-up if that fails) and starts refreshing it every
    /// `every`. Must be called inside a tokio runtime.
    pub(super) async fn start(
        url: String,
        every: Duration,
        floor: Duration,
    ) -> Result<Arc<RemoteJwks>, String> {
        // No redirects: an https URL must not be able to hand the fetch to a plain http one
        // (a 3xx is a failed fetch, naming its status).
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .use_rustls_tls()
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let set = fetch(&client, &url).await?;
        let jwks = Arc::new(RemoteJwks {
            url,
            client,
            set: RwLock::new(set),
            last_fetch: Mutex::new(Instant::now()),
            wake: Notify::new(),
            floor: floor.min(every),
        });
        tokio::spawn(jwks.clone().refresh_forever(every));
        Ok(jwks)
    }

    /// The key `kid` names in the last good set; an unknown one asks for a refresh.
    pub(super) fn find(&self, kid: &str) -> Option<Jwk> {
        let found = self
            .set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .find(kid)
            .cloned();
        if found.is_none() {
            self.wake.notify_one();
        }
        found
    }

    async fn refresh_forever(self: Arc<Self>, every: Duration) {
        loop {
            let asked = tokio::select! {
                () = tokio::time::sleep(every) => false,
                () = self.wake.notified() => true,
            };
            let since = self
                .last_fetch
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed();
            if asked && since < self.floor {
                continue;
            }
            *self
                .last_fetch
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
            match fetch(&self.client, &self.url).await {
                Ok(set) => *self.set.write().unwrap_or_else(PoisonError::into_inner) = set,
                // The last good set stays in use.
                Err(err) => tracing::warn!(error = %err, "cannot refresh the JWKS"),
            }
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<JwkSet, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch the JWKS: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("cannot fetch the JWKS: HTTP {}", response.status()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BYTES as u64)
    {
        return Err("the JWKS document is larger than 1 MiB".into());
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("cannot fetch the JWKS: {e}"))?;
    if body.len() > MAX_BYTES {
        return Err("the JWKS document is larger than 1 MiB".into());
    }
    serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))
}
