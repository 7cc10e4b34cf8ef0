//! Updates and deletes in batches on PostgreSQL: each batch of `store::changes`'s queue in one
//! transaction (one `UPDATE … FROM unnest`, one `DELETE … USING unnest`), so they share one
//! commit. A lone change goes at once (no timer). Each change is answered as alone: the event
//! as now stored, or NOT_FOUND (no such id, or another owner's); a batch that fails (a lost
//! connection, a full disk) fails each of its changes, and nothing of it is applied.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::{batch::Failure, rows::to_event};
use crate::store::{
    Event, EventPatch, Result, StoreError,
    changes::{Change, Changes},
};

/// The columns of an updated event, as `to_event` reads them, and its place in the batch.
const RETURNED: &str = "u.idx, e.pk, e.id, e.user_id, e.title, e.description, e.completed, \
     e.created_at, e.topic, e.data, e.time, e.seq";

/// Starts the task that applies this process's updates and deletes over `pool`.
pub(super) fn start(pool: Pool) -> Changes {
    Changes::start(move |batch| apply(pool.clone(), batch))
}

/// Applies `batch` in one transaction and answers each change.
async fn apply(pool: Pool, batch: Vec<Change>) {
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
    match applied(&pool, &updates, &deletes).await {
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
