//! Group commit for updates and deletes: one task per process applies every update and delete
//! queued while its last batch was under way in one transaction (one `UPDATE … FROM unnest`,
//! one `DELETE … USING unnest`), so they share one commit. A lone change goes at once (no
//! timer). A batch holds each event id at most once (a second change of an id waits for the
//! next batch), so applying its changes together is applying them one after another. Each
//! change is answered as alone: the event as now stored, or NOT_FOUND (no such id, or another
//! owner's); a batch that fails (a lost connection, a full disk) fails each of its changes,
//! and nothing of it is applied.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{batch::Failure, rows::to_event};
use crate::store::{Event, EventPatch, Result, StoreError, batching};

/// The columns of an updated event, as `to_event` reads them, and its place in the batch.
const RETURNED: &str = "u.idx, e.pk, e.id, e.user_id, e.title, e.description, e.completed, \
     e.created_at, e.topic, e.data, e.time, e.seq";

/// An update or a delete of the event `id`, scoped to `owner`'s events when given.
pub(super) enum Change {
    Update {
        id: Uuid,
        owner: Option<String>,
        patch: EventPatch,
        answer: oneshot::Sender<Result<Event>>,
    },
    Delete {
        id: Uuid,
        owner: Option<String>,
        answer: oneshot::Sender<Result<()>>,
    },
}

impl Change {
    fn id(&self) -> Uuid {
        match self {
            Change::Update { id, .. } | Change::Delete { id, .. } => *id,
        }
    }

    /// Answers it with `err` (its batch failed).
    fn fail(self, err: impl Fn(&'static str) -> StoreError) {
        match self {
            Change::Update { answer, .. } => {
                let _ = answer.send(Err(err("update")));
            }
            Change::Delete { answer, .. } => {
                let _ = answer.send(Err(err("delete")));
            }
        }
    }
}

/// The queue to this process's changing task.
pub(super) struct Changes {
    queue: mpsc::Sender<Change>,
}

impl Changes {
    /// Starts the task, which changes events over `pool` until this is dropped.
    pub(super) fn start(pool: Pool) -> Changes {
        let (queue, changes) = mpsc::channel(batching::QUEUE);
        tokio::spawn(run(pool, changes));
        Changes { queue }
    }

    pub(super) async fn update(
        &self,
        id: Uuid,
        owner: Option<String>,
        patch: EventPatch,
    ) -> Result<Event> {
        let (answer, answered) = oneshot::channel();
        let change = Change::Update {
            id,
            owner,
            patch,
            answer,
        };
        self.queue
            .send(change)
            .await
            .map_err(|_| stopped("update"))?;
        answered.await.map_err(|_| stopped("update"))?
    }

    pub(super) async fn delete(&self, id: Uuid, owner: Option<String>) -> Result<()> {
        let (answer, answered) = oneshot::channel();
        let change = Change::Delete { id, owner, answer };
        self.queue
            .send(change)
            .await
            .map_err(|_| stopped("delete"))?;
        answered.await.map_err(|_| stopped("delete"))?
    }
}

fn stopped(op: &'static str) -> StoreError {
    StoreError::Unavailable {
        op,
        reason: "the store's writer stopped".into(),
    }
}

/// Until the queue's sender is dropped: a batch of what is queued (each id once), applied.
async fn run(pool: Pool, mut changes: mpsc::Receiver<Change>) {
    // A change of an id the last batch already held: the first of the next one.
    let mut held: Option<Change> = None;
    loop {
        let first = match held.take() {
            Some(first) => first,
            None => match changes.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut ids = HashSet::from([first.id()]);
        let mut batch = vec![first];
        while batch.len() < batching::MAX_WRITES {
            let Ok(next) = changes.try_recv() else { break };
            if !ids.insert(next.id()) {
                held = Some(next);
                break;
            }
            batch.push(next);
        }
        apply(&pool, batch).await;
    }
}

/// Applies `batch` in one transaction and answers each change.
async fn apply(pool: &Pool, batch: Vec<Change>) {
    let mut updates = Updates::default();
    let mut deletes = Deletes::default();
    for (idx, change) in (0i32..).zip(&batch) {
        match change {
            Change::Update {
                id, owner, patch, ..
            } => {
                let EventPatch {
                    title,
                    description,
                    completed,
                } = patch;
                updates.ids.push(*id);
                updates
                    .owners
                    .push(owner.as_ref().map(|o| o.as_bytes().to_vec()));
                updates.titles.push(title.as_bytes().to_vec());
                updates.descriptions.push(description.as_bytes().to_vec());
                updates.completed.push(*completed);
                updates.idx.push(idx);
            }
            Change::Delete { id, owner, .. } => {
                deletes.ids.push(*id);
                deletes
                    .owners
                    .push(owner.as_ref().map(|o| o.as_bytes().to_vec()));
                deletes.idx.push(idx);
            }
        }
    }
    match applied(pool, &updates, &deletes).await {
        Ok((updated, deleted)) => {
            let mut updated = updated;
            for (idx, change) in (0i32..).zip(batch) {
                match change {
                    Change::Update { answer, .. } => {
                        let event = updated.remove(&idx).unwrap_or(Err(StoreError::NotFound));
                        let _ = answer.send(event);
                    }
                    Change::Delete { answer, .. } => {
                        let found = deleted.contains(&idx);
                        let _ = answer.send(if found {
                            Ok(())
                        } else {
                            Err(StoreError::NotFound)
                        });
                    }
                }
            }
        }
        Err(failure) => {
            for change in batch {
                change.fail(|op| failure.error(op));
            }
        }
    }
}

/// The updates of a batch, column by column (`unnest`'s arrays).
#[derive(Default)]
struct Updates {
    ids: Vec<Uuid>,
    owners: Vec<Option<Vec<u8>>>,
    titles: Vec<Vec<u8>>,
    descriptions: Vec<Vec<u8>>,
    completed: Vec<bool>,
    idx: Vec<i32>,
}

/// The deletes of a batch, column by column.
#[derive(Default)]
struct Deletes {
    ids: Vec<Uuid>,
    owners: Vec<Option<Vec<u8>>>,
    idx: Vec<i32>,
}

/// The updated events (by their place in the batch) and the places of the deletes that found
/// their event, committed.
async fn applied(
    pool: &Pool,
    updates: &Updates,
    deletes: &Deletes,
) -> std::result::Result<(HashMap<i32, Result<Event>>, HashSet<i32>), Failure> {
    let mut client = pool.get().await.map_err(Failure::from)?;
    let tx = client.transaction().await.map_err(Failure::Pg)?;
    let mut updated = HashMap::new();
    if !updates.ids.is_empty() {
        let Updates {
            ids,
            owners,
            titles,
            descriptions,
            completed,
            idx,
        } = updates;
        let sql = format!(
            "UPDATE events AS e
             SET title = u.title, description = u.description, completed = u.completed
             FROM unnest($1::UUID[], $2::BYTEA[], $3::BYTEA[], $4::BYTEA[], $5::BOOLEAN[],
                         $6::INT[]) AS u(id, owner, title, description, completed, idx)
             WHERE e.id = u.id AND (u.owner IS NULL OR e.user_id = u.owner)
             RETURNING {RETURNED}"
        );
        let rows = tx
            .query(&sql, &[ids, owners, titles, descriptions, completed, idx])
            .await
            .map_err(Failure::Pg)?;
        updated = rows
            .iter()
            .map(|row| (row.get::<_, i32>("idx"), to_event(row)))
            .collect();
    }
    let mut deleted = HashSet::new();
    if !deletes.ids.is_empty() {
        let Deletes { ids, owners, idx } = deletes;
        let rows = tx
            .query(
                "DELETE FROM events AS e
                 USING unnest($1::UUID[], $2::BYTEA[], $3::INT[]) AS u(id, owner, idx)
                 WHERE e.id = u.id AND (u.owner IS NULL OR e.user_id = u.owner)
                 RETURNING u.idx",
                &[ids, owners, idx],
            )
            .await
            .map_err(Failure::Pg)?;
        deleted = rows.iter().map(|row| row.get::<_, i32>("idx")).collect();
    }
    tx.commit().await.map_err(Failure::Pg)?;
    Ok((updated, deleted))
}
