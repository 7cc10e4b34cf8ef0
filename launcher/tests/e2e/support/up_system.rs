//! The whole system on a database server as a user runs it: `eventsys up` with two backends and
//! the gateway as real processes, the store named the way its users name it (`MONGO_URI`; for
//! PostgreSQL a file, `STORE_URI_FILE`, as the deploy files hand over a URI with a password), on
//! a fresh database.

use eventsvc::store::{StoreLimits, StoreUri};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use uuid::Uuid;

use super::{Front, Launcher, wait_healthy};

/// Which database server a system runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    /// SecantusDB started by the tests, or the replica set `EVENTSVC_TEST_MONGO_URI` names.
    Mongo,
    /// A PostgreSQL cluster started by the tests.
    Postgres,
}

impl Engine {
    /// A fresh database on this test binary's shared server; `None` after saying SKIPPED.
    pub(crate) fn database(self, what: &str) -> Option<String> {
        let name = format!("e2e_{}", Uuid::new_v4().simple());
        match self {
            Engine::Mongo => testdb::mongo_uri(what, &name),
            Engine::Postgres => testdb::PostgresServer::shared(what).map(|s| s.database(&name)),
        }
    }

    /// A server of the test's own (for tests that kill it); `None` after saying SKIPPED.
    pub(crate) fn own_server(self, what: &str) -> Option<Box<dyn testdb::Server>> {
        match self {
            Engine::Mongo => testdb::MongoServer::start(what).map(|s| Box::new(s) as _),
            Engine::Postgres => testdb::PostgresServer::start(what).map(|s| Box::new(s) as _),
        }
    }
}

/// `eventsys up` with two backends on one database, the gateway in front.
pub(crate) struct UpSystem {
    pub(crate) launcher: Launcher,
    /// The database's URI, for a plain client.
    pub(crate) uri: String,
    _dir: tempfile::TempDir,
}

impl UpSystem {
    /// On a fresh database of `engine`'s shared server; `None` after saying SKIPPED (naming
    /// `what`). `env` reaches every child (`RETENTION_MAX_EVENTS`, …).
    pub(crate) async fn up(engine: Engine, what: &str, env: &[(&str, &str)]) -> Option<UpSystem> {
        let uri = engine.database(what)?;
        Some(UpSystem::up_on(uri, &[], env).await)
    }

    /// On the database `uri` names, with `flags` for `eventsys up`.
    pub(crate) async fn up_on(uri: String, flags: &[&str], env: &[(&str, &str)]) -> UpSystem {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("store-uri");
        let named = if uri.starts_with("mongodb") {
            ("MONGO_URI", uri.clone())
        } else {
            std::fs::write(&file, &uri).expect("write the store URI file");
            ("STORE_URI_FILE", file.display().to_string())
        };
        let mut all = vec![(named.0, named.1.as_str())];
        all.extend_from_slice(env);
        let launcher = Launcher::start_backends(dir.path(), 2, flags, &all).await;
        UpSystem {
            launcher,
            uri,
            _dir: dir,
        }
    }

    /// Waits until the gateway holds both backends in its balancer.
    pub(crate) async fn ready(&self) {
        wait_healthy(self.launcher.rest, None, 2).await;
    }

    pub(crate) fn kill_backend(&self, addr: &str) {
        let pid = self.launcher.backend_pid(addr);
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    }

    /// The ids of every event of `user`, read back through a store of this test's own.
    pub(crate) async fn stored_ids(&self, user: &str) -> Vec<String> {
        stored_ids_at(&self.uri, user).await
    }
}

/// The ids of every event `user` has in the store at `uri`, in list order.
pub(crate) async fn stored_ids_at(uri: &str, user: &str) -> Vec<String> {
    let uri: StoreUri = uri.parse().unwrap();
    let store = eventsvc::store::open(&uri, StoreLimits::default())
        .await
        .unwrap();
    let (mut ids, mut cursor) = (Vec::new(), None);
    loop {
        let page = store
            .list(Some(user.to_owned()), 1000, cursor)
            .await
            .unwrap();
        ids.extend(page.events.iter().map(|e| e.id.to_string()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
}

impl Front for UpSystem {
    fn url(&self, path: &str) -> String {
        self.launcher.url(path)
    }

    fn backends(&self) -> usize {
        self.launcher.backends.len()
    }
}
