//! The whole system on MongoDB as a user runs it: `eventsys up` with `MONGO_URI`, two backends
//! and the gateway as real processes, over SecantusDB (a MongoDB wire-protocol server the tests
//! start; `EVENTSVC_TEST_MONGO_URI` points them at a real replica set instead). The REST contract
//! runs here through `gateway_contract`'s `mongo::` cases; this file has what MongoDB changes:
//! streams across backends, a backend's and the database's `kill -9`, retention, keys, token
//! mode and the old Go service's documents.

mod access;
mod legacy;
mod outage;
mod streams;

use std::time::Duration;

use mongodb::bson::{Document, doc};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;
use uuid::Uuid;

use crate::support::{Front, Launcher, http};

/// `eventsys up` with two backends on one MongoDB database, the gateway holding both.
pub(crate) struct MongoSystem {
    pub(crate) launcher: Launcher,
    /// The database's URI, for a plain MongoDB client.
    uri: String,
    _dir: tempfile::TempDir,
}

impl MongoSystem {
    /// On a fresh database of the shared server; `None` after saying SKIPPED (naming `what`)
    /// when there is no MongoDB here. `env` reaches every child (`RETENTION_MAX_EVENTS`, …).
    pub(crate) async fn up(what: &str, env: &[(&str, &str)]) -> Option<MongoSystem> {
        let database = format!("e2e_{}", Uuid::new_v4().simple());
        let uri = testdb::mongo_uri(what, &database)?;
        Some(MongoSystem::up_on(uri, &[], env).await)
    }

    /// On the database `uri` names, with `flags` for `eventsys up`.
    pub(crate) async fn up_on(uri: String, flags: &[&str], env: &[(&str, &str)]) -> MongoSystem {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut all = vec![("MONGO_URI", uri.as_str())];
        all.extend_from_slice(env);
        let launcher = Launcher::start_backends(dir.path(), 2, flags, &all).await;
        MongoSystem {
            launcher,
            uri,
            _dir: dir,
        }
    }

    /// Waits until the gateway holds both backends (`/readyz` counts them).
    pub(crate) async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let response = http().get(self.url("/readyz")).send().await.unwrap();
            let body: Value = response.json().await.unwrap_or_default();
            if body["backends"]["healthy"] == 2 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not both backends: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `events` collection, through a plain MongoDB client.
    pub(crate) async fn events(&self) -> mongodb::Collection<Document> {
        let client = mongodb::Client::with_uri_str(&self.uri).await.unwrap();
        client
            .default_database()
            .expect("the URI names the database")
            .collection("events")
    }

    pub(crate) fn kill_backend(&self, addr: &str) {
        let pid = self.launcher.backend_pid(addr);
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    }
}

impl Front for MongoSystem {
    fn url(&self, path: &str) -> String {
        self.launcher.url(path)
    }

    fn backends(&self) -> usize {
        self.launcher.backends.len()
    }
}

/// Every id stored for user `kill-writes`, read back with a plain client.
pub(crate) async fn stored_ids(system: &MongoSystem) -> Vec<String> {
    use futures::TryStreamExt;
    let found: Vec<Document> = system
        .events()
        .await
        .find(doc! {"userId": "kill-writes"})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    found
        .iter()
        .map(|d| d.get_str("id").unwrap().to_owned())
        .collect()
}
