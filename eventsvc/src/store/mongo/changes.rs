//! Updates and deletes in batches on MongoDB: each batch of `store::changes`'s queue in one
//! transaction (read the batch's events, one `update` command, one `delete` command, their
//! entries in the owners' change feeds, commit), so they share one journal commit. A lone
//! change is a transaction too (its feed entry commits with it; no timer). The read tells each
//! change its answer (its event as now stored, NOT_FOUND: no such id, or another owner's, or
//! FAILED_PRECONDITION: not at its `If-Match` revision) and the transaction keeps that answer
//! true: a write of another process to the same events conflicts, and the driver runs the
//! transaction again. A batch that fails for a reason of its own (a refused statement aborts
//! a transaction) is applied again a change at a time, so such a change fails alone; a lost
//! connection or a full disk fails each change, with nothing of the batch applied.
//!
//! Transactions need a replica set; on a standalone server each change goes alone, as one
//! command (`update_alone`, `delete_alone`), and there are no change feeds.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{FutureExt, TryStreamExt};
use mongodb::{
    ClientSession, Collection, Database,
    bson::{Document, doc},
    options::{ReturnDocument, TransactionOptions},
};
use uuid::Uuid;

use super::{
    changelog::{self, Feeds},
    document::{at_revision, revision_of},
    from_document, in_scope, mongo_error, scope,
    sessions::Owned,
};
use crate::store::{
    ChangeKind, Event, EventPatch, Precondition, Result, StoreError,
    changes::{Change, Changes},
};

/// The most a batch spends in its transaction, conflicts and the driver's retries included,
/// before its changes fail as unavailable. A change may wait for the batch ahead of it and
/// then its own, so twice this stays inside the gateway's request deadline (10 s); the driver
/// would retry a transaction that cannot reach its server for 120 s.
const DEADLINE: Duration = Duration::from_secs(3);

/// Where a batch is applied.
#[derive(Clone)]
pub(super) struct Changing {
    pub(super) database: Database,
    pub(super) events: Collection<Document>,
    /// The transaction's write concern: journaled, on a majority.
    pub(super) transaction: TransactionOptions,
    /// Where each change is recorded, in its batch's transaction.
    pub(super) feeds: Feeds,
    /// The session the transactions run in, this task's own (`sessions`).
    pub(super) session: Arc<Owned>,
}

/// Starts the task that applies this process's updates and deletes.
pub(super) fn start(changing: Changing) -> Changes {
    Changes::start(move |batch| apply(changing.clone(), batch))
}

/// The fields an update sets, as a `$set` of an update pipeline (values `$literal`: a title
/// that starts with `$` is text, not a field path), the revision one more than stored.
fn patched(patch: EventPatch) -> Document {
    let EventPatch {
        title,
        description,
        completed,
    } = patch;
    doc! {
        "title": {"$literal": title},
        "description": {"$literal": description},
        "completed": {"$literal": completed},
        "revision": {"$add": [{"$ifNull": ["$revision", 1_i64]}, 1_i64]},
    }
}

/// `scope`, narrowed to the revision `when` names.
fn scope_at(id: Uuid, owner: Option<String>, when: Precondition) -> Document {
    let mut filter = scope(id, owner);
    if let Some(revision) = when.revision() {
        filter.insert("revision", at_revision(revision));
    }
    filter
}

/// `patch` applied to the event `id` (of `owner`'s when given) by one command, if `when`
/// holds.
pub(super) async fn update_alone(
    events: &Collection<Document>,
    id: Uuid,
    owner: Option<String>,
    patch: EventPatch,
    when: Precondition,
) -> Result<Event> {
    let updated = events
        .find_one_and_update(
            scope_at(id, owner.clone(), when),
            vec![doc! {"$set": patched(patch.clone())}],
        )
        .return_document(ReturnDocument::After)
        .await
        .map_err(|e| mongo_error("update", e))?;
    match updated {
        Some(updated) => from_document(&updated),
        // The condition was checked by the command; this read only says why it failed.
        None => when.refused(current(events, "update", id, owner).await?, &patch),
    }
}

/// The event `id` (of `owner`'s when given) deleted by one command, if `when` holds.
pub(super) async fn delete_alone(
    events: &Collection<Document>,
    id: Uuid,
    owner: Option<String>,
    when: Precondition,
) -> Result<()> {
    let deleted = events
        .delete_one(scope_at(id, owner.clone(), when))
        .await
        .map_err(|e| mongo_error("delete", e))?;
    if deleted.deleted_count == 0 {
        let current = current(events, "delete", id, owner).await?;
        return Err(when.unmet(current.map(|e| e.revision)));
    }
    Ok(())
}

/// The event `id` as stored now, if `owner`'s.
async fn current(
    events: &Collection<Document>,
    op: &'static str,
    id: Uuid,
    owner: Option<String>,
) -> Result<Option<Event>> {
    let found = events
        .find_one(scope(id, owner))
        .await
        .map_err(|e| mongo_error(op, e))?;
    found.as_ref().map(from_document).transpose()
}

/// A change as its transaction needs it, which the driver may run more than once.
struct Wanted {
    id: String,
    owner: Option<String>,
    when: Precondition,
    /// The fields an update sets (`EventPatch`); `None` for a delete.
    set: Option<Document>,
}

/// What a change found in its batch's transaction.
enum Outcome {
    /// The event as the update left it.
    Updated(Document),
    Deleted,
    /// Not applied: the event as found (`None`: missing) did not meet the precondition.
    Unmet(Option<Document>),
}

/// A change as its transaction reads it.
fn wanted(change: &Change) -> Wanted {
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
            } = patch.clone();
            Wanted {
                id: id.to_string(),
                owner: owner.clone(),
                when: *when,
                set: Some(doc! {
                    "title": title, "description": description, "completed": completed,
                }),
            }
        }
        Change::Delete {
            id,
            owner,
            when,
            answer: _,
        } => Wanted {
            id: id.to_string(),
            owner: owner.clone(),
            when: *when,
            set: None,
        },
    }
}

/// Why a batch's transaction did not commit.
enum Refused {
    /// Not within `DEADLINE`: whether it committed is unknown (a retry of each change finds
    /// out).
    Late,
    Mongo(mongodb::error::Error),
}

impl Refused {
    fn error(&self, op: &'static str) -> StoreError {
        match self {
            Refused::Late => StoreError::Unavailable {
                op,
                reason: format!("not applied within {DEADLINE:?}"),
            },
            Refused::Mongo(err) => mongo_error(op, err.clone()),
        }
    }
}

/// Applies `batch` and answers each change: one transaction (a lone change too, so its entry
/// in its owner's feed commits with it); a batch the server refused for a reason of its own
/// (a refused statement aborts a transaction), again a change at a time.
async fn apply(to: Changing, batch: Vec<Change>) {
    let failed = match together(&to, batch.iter().map(wanted).collect()).await {
        Ok(outcomes) => {
            for (change, outcome) in batch.into_iter().zip(outcomes) {
                answer(change, outcome);
            }
            return;
        }
        Err(failed) => failed,
    };
    let passing = matches!(
        failed.error("update"),
        StoreError::Unavailable { .. } | StoreError::Full { .. }
    );
    if passing || batch.len() == 1 {
        for change in batch {
            change.fail(|op| failed.error(op));
        }
        return;
    }
    tracing::debug!(changes = batch.len(), "batch refused; applying each alone");
    for change in batch {
        match together(&to, vec![wanted(&change)]).await {
            Ok(mut outcomes) => match outcomes.pop() {
                Some(outcome) => answer(change, outcome),
                None => change.fail(|op| StoreError::Internal {
                    op,
                    source: "a transaction answered nothing".into(),
                }),
            },
            Err(failed) => change.fail(|op| failed.error(op)),
        }
    }
}

fn answer(change: Change, outcome: Outcome) {
    let found = |document: Option<Document>| document.as_ref().map(from_document).transpose();
    match (change, outcome) {
        (Change::Update { answer, .. }, Outcome::Updated(document)) => {
            let _ = answer.send(from_document(&document));
        }
        (Change::Delete { answer, .. }, Outcome::Deleted) => {
            let _ = answer.send(Ok(()));
        }
        (
            Change::Update {
                patch,
                when,
                answer,
                ..
            },
            Outcome::Unmet(document),
        ) => {
            let _ = answer.send(found(document).and_then(|current| when.refused(current, &patch)));
        }
        (Change::Delete { when, answer, .. }, Outcome::Unmet(document)) => {
            let current = found(document).map(|current| current.map(|e| e.revision));
            let _ = answer.send(current.and_then(|current| Err(when.unmet(current))));
        }
        (change, _) => change.fail(|op| StoreError::Internal {
            op,
            source: "a change's outcome is of another kind".into(),
        }),
    }
}

/// `wanted`'s outcomes, committed together with their entries in the owners' feeds.
async fn together(
    to: &Changing,
    wanted: Vec<Wanted>,
) -> std::result::Result<Vec<Outcome>, Refused> {
    let run = async {
        let mut session = to.session.begin().await?;
        let context = (
            to.database.clone(),
            to.events.clone(),
            to.feeds.clone(),
            wanted,
        );
        let outcomes = session
            .start_transaction()
            .with_options(to.transaction.clone())
            .and_run(context, |session, (database, events, feeds, wanted)| {
                in_transaction(session, database, events, feeds, wanted).boxed()
            })
            .await?;
        session.ended();
        Ok(outcomes)
    };
    match tokio::time::timeout(DEADLINE, run).await {
        Ok(Ok(outcomes)) => Ok(outcomes),
        Ok(Err(err)) => Err(Refused::Mongo(err)),
        Err(_) => Err(Refused::Late),
    }
}

async fn in_transaction(
    session: &mut ClientSession,
    database: &Database,
    events: &Collection<Document>,
    feeds: &Feeds,
    wanted: &[Wanted],
) -> mongodb::error::Result<Vec<Outcome>> {
    let ids: Vec<&str> = wanted.iter().map(|w| w.id.as_str()).collect();
    let found: Vec<Document> = events
        .find(doc! {"id": {"$in": ids}})
        .session(&mut *session)
        .await?
        .stream(&mut *session)
        .try_collect()
        .await?;
    let mut found: HashMap<String, Document> = found
        .into_iter()
        .filter_map(|document| Some((document.get_str("id").ok()?.to_owned(), document)))
        .collect();
    let mut outcomes = Vec::with_capacity(wanted.len());
    let mut updates = Vec::new();
    let mut deletes = Vec::new();
    let mut entries = Vec::new();
    // A batch holds each id once, so each change finds its event as the batch began.
    for Wanted {
        id,
        owner,
        when,
        set,
    } in wanted
    {
        let Some(mut document) = found
            .remove(id)
            .filter(|document| in_scope(document, owner.as_deref()))
        else {
            outcomes.push(Outcome::Unmet(None));
            continue;
        };
        let revision = revision_of(&document);
        if !when.holds(revision) {
            outcomes.push(Outcome::Unmet(Some(document)));
            continue;
        }
        match set {
            Some(set) => {
                let mut set = set.clone();
                set.insert(
                    "revision",
                    i64::try_from(revision.saturating_add(1)).unwrap_or(i64::MAX),
                );
                // On the revision read: the transaction's snapshot holds it, and a write of
                // another process to the event conflicts (the driver runs the batch again).
                updates.push(doc! {"q": {"id": id}, "u": {"$set": set.clone()}});
                document.extend(set);
                entries.extend(changelog::recorded(ChangeKind::Updated, &document));
                outcomes.push(Outcome::Updated(document));
            }
            None => {
                deletes.push(id.as_str());
                entries.extend(changelog::recorded(ChangeKind::Deleted, &document));
                outcomes.push(Outcome::Deleted);
            }
        }
    }
    if !updates.is_empty() {
        let reply = database
            .run_command(doc! {"update": events.name(), "updates": updates, "ordered": true})
            .session(&mut *session)
            .await?;
        if reply.contains_key("writeErrors") {
            return Err(mongodb::error::Error::custom(
                "a statement of a batched update was refused",
            ));
        }
    }
    if !deletes.is_empty() {
        events
            .delete_many(doc! {"id": {"$in": deletes}})
            .session(&mut *session)
            .await?;
    }
    feeds.record(session, entries).await?;
    Ok(outcomes)
}
