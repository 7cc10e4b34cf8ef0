//! The queue of updates and deletes that a store commits in batches (group commit), shared by
//! the engines that batch them in their own task (PostgreSQL, MongoDB). A batch follows
//! `batching`'s bounds and holds each event id at most once: a second change of an id waits
//! for the next batch, so applying a batch's changes together is applying them one after
//! another, and an engine need not order changes within one.

use std::{collections::HashSet, future::Future};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Event, EventPatch, Precondition, Result, StoreError, batching};

/// An update or a delete of the event `id`, scoped to `owner`'s events when given, if `when`
/// holds, with where its answer goes.
pub(crate) enum Change {
    Update {
        id: Uuid,
        owner: Option<String>,
        patch: EventPatch,
        when: Precondition,
        answer: oneshot::Sender<Result<Event>>,
    },
    Delete {
        id: Uuid,
        owner: Option<String>,
        when: Precondition,
        answer: oneshot::Sender<Result<()>>,
    },
}

impl Change {
    pub(crate) fn id(&self) -> Uuid {
        match self {
            Change::Update { id, .. } | Change::Delete { id, .. } => *id,
        }
    }

    /// Its free text in bytes, for `batching::MAX_BYTES`.
    fn size(&self) -> usize {
        match self {
            Change::Update { owner, patch, .. } => {
                let EventPatch {
                    title,
                    description,
                    completed: _,
                } = patch;
                owner.as_ref().map_or(0, String::len) + title.len() + description.len()
            }
            Change::Delete { owner, .. } => owner.as_ref().map_or(0, String::len),
        }
    }

    /// Answers it with `err` (its batch failed as a whole).
    pub(crate) fn fail(self, err: impl Fn(&'static str) -> StoreError) {
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

/// The queue to a store's changing task.
pub(crate) struct Changes {
    queue: mpsc::Sender<Change>,
}

impl Changes {
    /// Starts the task, which hands each batch to `apply` (which answers every change in it)
    /// until this is dropped.
    pub(crate) fn start<F, Fut>(apply: F) -> Changes
    where
        F: FnMut(Vec<Change>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (queue, changes) = mpsc::channel(batching::QUEUE);
        tokio::spawn(run(changes, apply));
        Changes { queue }
    }

    pub(crate) async fn update(
        &self,
        id: Uuid,
        owner: Option<String>,
        patch: EventPatch,
        when: Precondition,
    ) -> Result<Event> {
        let (answer, answered) = oneshot::channel();
        let change = Change::Update {
            id,
            owner,
            patch,
            when,
            answer,
        };
        self.queue
            .send(change)
            .await
            .map_err(|_| stopped("update"))?;
        answered.await.map_err(|_| stopped("update"))?
    }

    pub(crate) async fn delete(
        &self,
        id: Uuid,
        owner: Option<String>,
        when: Precondition,
    ) -> Result<()> {
        let (answer, answered) = oneshot::channel();
        let change = Change::Delete {
            id,
            owner,
            when,
            answer,
        };
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
async fn run<F, Fut>(mut changes: mpsc::Receiver<Change>, mut apply: F)
where
    F: FnMut(Vec<Change>) -> Fut,
    Fut: Future<Output = ()>,
{
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
        let (batch, next) = batching::fill_while(first, &mut changes, Change::size, |next| {
            ids.insert(next.id())
        });
        held = next;
        apply(batch).await;
    }
}
