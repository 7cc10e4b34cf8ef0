//! Updates and deletes in batches on PostgreSQL: each batch of `store::changes`'s queue in one
//! transaction (one `UPDATE … FROM unnest`, one `DELETE … USING unnest`), so they share one
//! commit, with their entries in the owners' change feeds. A lone change goes at once (no
//! timer). Each change is answered as alone: the event
//! as now stored, NOT_FOUND (no such id, or another owner's), or FAILED_PRECONDITION (its
//! `If-Match` revision is not the event's, checked by the statement itself); a batch that fails (a lost
//! connection, a full disk) fails each of its changes, and nothing of it is applied.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::{
    CHANNEL,
    batch::Failure,
    changelog,
    rows::{COLUMNS, to_event},
};
use crate::store::{
    ChangeKind, Event, EventPatch, Result,
    changes::{Change, Changes},
};

/// The columns of an updated event, as `to_event` reads them, and its place in the batch.
const RETURNED: &str = "u.idx, e.pk, e.id, e.user_id, e.title, e.description, e.completed, \
     e.created_at, e.topic, e.data, e.time, e.seq, e.revision";

/// Starts the task that applies this process's updates and deletes over `pool`.
pub(super) fn start(pool: Pool) -> Changes {
    Changes::start(move |batch| apply(pool.clone(), batch))
}

/// A revision as its column holds it.
fn column(revision: Option<u64>) -> Option<i64> {
    revision.map(|r| i64::try_from(r).unwrap_or(i64::MAX))
}

/// Applies `batch` in one transaction and answers each change.
async fn apply(pool: Pool, batch: Vec<Change>) {
    let mut updates = Updates::default();
    let mut deletes = Deletes::default();
    for (idx, change) in (0i32..).zip(&batch) {
        match change {
            Change::Update {
                id,
                owner,
                patch,
                when,
                answer: _,
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
                updates.revisions.push(column(when.revision()));
                updates.idx.push(idx);
            }
            Change::Delete {
                id,
                owner,
                when,
                answer: _,
            } => {
                deletes.ids.push(*id);
                deletes
                    .owners
                    .push(owner.as_ref().map(|o| o.as_bytes().to_vec()));
                deletes.revisions.push(column(when.revision()));
                deletes.idx.push(idx);
            }
        }
    }
    let Applied {
        mut updated,
        deleted,
        mut missed,
    } = match applied(&pool, &updates, &deletes).await {
        Ok(applied) => applied,
        Err(failure) => {
            for change in batch {
                change.fail(|op| failure.error(op));
            }
            return;
        }
    };
    // What a change that did not apply found, if its owner's.
    let mut found = |id: &Uuid, owner: &Option<String>| {
        missed
            .remove(id)
            .and_then(|event| event.ok())
            .filter(|event| owner.as_ref().is_none_or(|o| event.user_id == *o))
    };
    for (idx, change) in (0i32..).zip(batch) {
        match change {
            Change::Update {
                id,
                owner,
                patch,
                when,
                answer,
            } => {
                let event = match updated.remove(&idx) {
                    Some(event) => event,
                    None => when.refused(found(&id, &owner), &patch),
                };
                let _ = answer.send(event);
            }
            Change::Delete {
                id,
                owner,
                when,
                answer,
            } => {
                let done = if deleted.contains(&idx) {
                    Ok(())
                } else {
                    Err(when.unmet(found(&id, &owner).map(|e| e.revision)))
                };
                let _ = answer.send(done);
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
    /// The revision each requires (`Precondition::revision`).
    revisions: Vec<Option<i64>>,
    idx: Vec<i32>,
}

/// The deletes of a batch, column by column.
#[derive(Default)]
struct Deletes {
    ids: Vec<Uuid>,
    owners: Vec<Option<Vec<u8>>>,
    revisions: Vec<Option<i64>>,
    idx: Vec<i32>,
}

/// A batch as committed.
struct Applied {
    /// The updated events, by their place in the batch.
    updated: HashMap<i32, Result<Event>>,
    /// The places of the deletes that found their event.
    deleted: HashSet<i32>,
    /// The events of the changes that did not apply, as the transaction then found them
    /// (missing: no such event).
    missed: HashMap<Uuid, Result<Event>>,
}

async fn applied(
    pool: &Pool,
    updates: &Updates,
    deletes: &Deletes,
) -> std::result::Result<Applied, Failure> {
    let mut client = pool.get().await.map_err(Failure::from)?;
    let tx = client.transaction().await.map_err(Failure::Pg)?;
    let mut updated = HashMap::new();
    let mut applied_ids = HashSet::new();
    // What the owners' change feeds record, in this transaction.
    let mut recorded = Vec::new();
    if !updates.ids.is_empty() {
        let Updates {
            ids,
            owners,
            titles,
            descriptions,
            completed,
            revisions,
            idx,
        } = updates;
        // A row another transaction changes meanwhile is checked again as that one left it
        // (PostgreSQL re-evaluates the condition on the newest version): two updates of one
        // revision never both apply.
        let sql = format!(
            "UPDATE events AS e
             SET title = u.title, description = u.description, completed = u.completed,
                 revision = e.revision + 1
             FROM unnest($1::UUID[], $2::BYTEA[], $3::BYTEA[], $4::BYTEA[], $5::BOOLEAN[],
                         $6::BIGINT[], $7::INT[])
                  AS u(id, owner, title, description, completed, revision, idx)
             WHERE e.id = u.id AND (u.owner IS NULL OR e.user_id = u.owner)
               AND (u.revision IS NULL OR e.revision = u.revision)
             RETURNING {RETURNED}"
        );
        let rows = tx
            .query(
                &sql,
                &[ids, owners, titles, descriptions, completed, revisions, idx],
            )
            .await
            .map_err(Failure::Pg)?;
        for row in &rows {
            let event = to_event(row);
            if let Ok(event) = &event {
                applied_ids.insert(event.id);
                recorded.push((ChangeKind::Updated, event.clone()));
            }
            updated.insert(row.get::<_, i32>("idx"), event);
        }
    }
    let mut deleted = HashSet::new();
    if !deletes.ids.is_empty() {
        let Deletes {
            ids,
            owners,
            revisions,
            idx,
        } = deletes;
        let sql = format!(
            "DELETE FROM events AS e
             USING unnest($1::UUID[], $2::BYTEA[], $3::BIGINT[], $4::INT[])
                   AS u(id, owner, revision, idx)
             WHERE e.id = u.id AND (u.owner IS NULL OR e.user_id = u.owner)
               AND (u.revision IS NULL OR e.revision = u.revision)
             RETURNING {RETURNED}"
        );
        let rows = tx
            .query(&sql, &[ids, owners, revisions, idx])
            .await
            .map_err(Failure::Pg)?;
        for row in &rows {
            deleted.insert(row.get::<_, i32>("idx"));
            applied_ids.insert(row.get::<_, Uuid>("id"));
            // The event as it was: its feed's entry.
            if let Ok(event) = to_event(row) {
                recorded.push((ChangeKind::Deleted, event));
            }
        }
    }
    // The changes that did not apply: their events as they are, to tell a missing event from
    // one at another revision (read in this transaction, before it commits).
    let missing: Vec<Uuid> = updates
        .ids
        .iter()
        .chain(&deletes.ids)
        .filter(|id| !applied_ids.contains(id))
        .copied()
        .collect();
    let mut missed = HashMap::new();
    if !missing.is_empty() {
        let rows = tx
            .query(
                &format!("SELECT {COLUMNS} FROM events WHERE id = ANY($1)"),
                &[&missing],
            )
            .await
            .map_err(Failure::Pg)?;
        for row in &rows {
            missed.insert(row.get::<_, Uuid>("id"), to_event(row));
        }
    }
    changelog::record(&tx, recorded, CHANNEL)
        .await
        .map_err(Failure::Pg)?;
    tx.commit().await.map_err(Failure::Pg)?;
    Ok(Applied {
        updated,
        deleted,
        missed,
    })
}
