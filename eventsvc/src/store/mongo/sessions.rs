//! The sessions a backend's transactions run in, and what happens to them when the backend
//! dies. A transaction left open by a backend killed mid-batch would keep the users' feed heads
//! (and the events) of its batch held until the server drops it (60 s): their writes would fail
//! meanwhile. So each backend runs its transactions in sessions of its own (one per writing
//! task: creates, changes), registers their ids in `backends` and beats a heartbeat there;
//! every backend ends the sessions of one whose heartbeat stopped (`killSessions`), and the
//! server aborts what it left open at once. A backend only slowed past `SILENT` loses its open
//! transactions the same way, which its driver runs again.

use std::{
    ops::{Deref, DerefMut},
    sync::{Arc, PoisonError, Weak},
    time::Duration,
};

use futures::TryStreamExt;
use mongodb::{
    Client, ClientSession, Collection, Database,
    bson::{Bson, DateTime, Document, doc},
};
use tokio::sync::{Mutex, MutexGuard};

pub(super) const BACKENDS: &str = "backends";
/// How often a backend says it lives, and looks for backends that stopped.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a backend's heartbeat may be missing before its sessions are ended: well inside
/// the time a transaction waits for a held document (`changes::DEADLINE`, 3 s).
const SILENT: Duration = Duration::from_secs(2);

/// The session ids registered, by slot (a std mutex: held to copy or replace one, never
/// across an `.await`).
type Lsids = Arc<std::sync::Mutex<Vec<Bson>>>;

/// A session one task runs its transactions in, one at a time; replaced by a fresh one (and
/// registered so) after a transaction that did not end cleanly: cut off by a deadline, refused,
/// or forgotten by a server that restarted.
pub(super) struct Owned {
    /// Its lock is held for a whole transaction (the task's own: never waited for).
    slot: Mutex<Slot>,
    client: Client,
    lsids: Lsids,
    index: usize,
}

struct Slot {
    session: ClientSession,
    /// Its last transaction ended (committed, or refused and aborted by the driver).
    clean: bool,
}

/// The session, taken for one transaction; `ended` once it did.
pub(super) struct Began<'a> {
    slot: MutexGuard<'a, Slot>,
}

impl Began<'_> {
    /// The transaction ended: the session may run the next one.
    pub(super) fn ended(mut self) {
        self.slot.clean = true;
    }
}

impl Deref for Began<'_> {
    type Target = ClientSession;

    fn deref(&self) -> &ClientSession {
        &self.slot.session
    }
}

impl DerefMut for Began<'_> {
    fn deref_mut(&mut self) -> &mut ClientSession {
        &mut self.slot.session
    }
}

impl Owned {
    /// The session for a transaction: a fresh one if the last did not end.
    pub(super) async fn begin(&self) -> mongodb::error::Result<Began<'_>> {
        let mut slot = self.slot.lock().await;
        if !slot.clean {
            // The old one is dropped: the driver aborts what it had open.
            slot.session = self.client.start_session().await?;
            let id = Bson::Document(slot.session.id().clone());
            self.lsids.lock().unwrap_or_else(PoisonError::into_inner)[self.index] = id;
        }
        slot.clean = false;
        Ok(Began { slot })
    }
}

/// This backend's entry in `backends`: its sessions, and the task that keeps the entry alive
/// and ends the sessions of backends that died.
pub(super) struct Registry {
    /// Dropped with the store: the heartbeat task then stops.
    _alive: Arc<()>,
}

impl Registry {
    /// Starts `count` sessions of `client`, registers them, and starts the heartbeat.
    pub(super) async fn start(
        client: &Client,
        database: &Database,
        count: usize,
    ) -> mongodb::error::Result<(Registry, Vec<Arc<Owned>>)> {
        let mut sessions = Vec::with_capacity(count);
        for _ in 0..count {
            sessions.push(client.start_session().await?);
        }
        let lsids: Lsids = Arc::new(std::sync::Mutex::new(
            sessions
                .iter()
                .map(|s| Bson::Document(s.id().clone()))
                .collect(),
        ));
        let backends = database.collection::<Document>(BACKENDS);
        let instance = uuid::Uuid::new_v4().to_string();
        let entry = Entry {
            backends,
            admin: client.database("admin"),
            instance,
            lsids: lsids.clone(),
        };
        entry.beat().await?;
        let alive = Arc::new(());
        tokio::spawn(entry.run(Arc::downgrade(&alive)));
        let owned = sessions
            .into_iter()
            .enumerate()
            .map(|(index, session)| {
                Arc::new(Owned {
                    slot: Mutex::new(Slot {
                        session,
                        clean: true,
                    }),
                    client: client.clone(),
                    lsids: lsids.clone(),
                    index,
                })
            })
            .collect();
        Ok((Registry { _alive: alive }, owned))
    }
}

struct Entry {
    backends: Collection<Document>,
    admin: Database,
    instance: String,
    lsids: Lsids,
}

impl Entry {
    /// Says this backend lives (its entry made again if another backend ended it: it was only
    /// slow) and keeps its sessions from expiring on the server.
    async fn beat(&self) -> mongodb::error::Result<()> {
        let lsids = self
            .lsids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.backends
            .update_one(
                doc! {"_id": &self.instance},
                doc! {"$set": {"lsids": &lsids, "at": DateTime::now()}},
            )
            .upsert(true)
            .await?;
        self.admin
            .run_command(doc! {"refreshSessions": lsids})
            .await?;
        Ok(())
    }

    /// Ends the sessions of every backend silent for longer than `SILENT`, and its entry.
    async fn reap(&self) -> mongodb::error::Result<()> {
        let silent_since =
            DateTime::from_millis(DateTime::now().timestamp_millis() - SILENT.as_millis() as i64);
        let dead: Vec<Document> = self
            .backends
            .find(doc! {"_id": {"$ne": &self.instance}, "at": {"$lt": silent_since}})
            .await?
            .try_collect()
            .await?;
        for backend in dead {
            let lsids = backend.get_array("lsids").cloned().unwrap_or_default();
            tracing::warn!(
                backend = backend.get_str("_id").unwrap_or_default(),
                sessions = lsids.len(),
                "a backend stopped beating: ending its sessions (and what it left open)"
            );
            self.admin.run_command(doc! {"killSessions": lsids}).await?;
            // Only if it is still silent: one that beat again meanwhile keeps its entry.
            self.backends
                .delete_one(doc! {"_id": backend.get("_id"), "at": backend.get("at")})
                .await?;
        }
        Ok(())
    }

    /// Until the store is dropped.
    async fn run(self, alive: Weak<()>) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if alive.strong_count() == 0 {
                let _ = self.backends.delete_one(doc! {"_id": &self.instance}).await;
                return;
            }
            // The server away: the next beat says so again; nothing to do meanwhile.
            if let Err(err) = self.beat().await {
                tracing::debug!(error = %err, "heartbeat not recorded");
                continue;
            }
            if let Err(err) = self.reap().await {
                tracing::warn!(error = %err, "cannot end the sessions of a silent backend");
            }
        }
    }
}
