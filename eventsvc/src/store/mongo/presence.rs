//! Presence on MongoDB (a replica set: it needs transactions). Gateways and their members in
//! two collections, and each subject's connections over all gateways in a third
//! (`presence_subjects`): the document every report of that subject changes, so two gateways'
//! reports of one subject conflict and one is run again, never both finding it absent. A report
//! or an expiry is one transaction in this backend's own session; its joins and leaves are
//! inserted in it with the presence topic's next seqs (only these transactions write presence
//! topics).

use std::{collections::HashSet, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures::{FutureExt, TryStreamExt};
use mongodb::{
    ClientSession, Collection, Database,
    bson::{Document, doc},
    options::{ReturnDocument, TransactionOptions},
};

use super::{counter_id, document::to_document, mongo_error, sessions::Owned};
use crate::store::{
    Event, Result, StoreError,
    presence::{Change, Member, Presence, PresenceReport, Present, Reported},
};

pub(super) const GATEWAYS: &str = "presence_gateways";
pub(super) const MEMBERS: &str = "presence_members";
pub(super) const SUBJECTS: &str = "presence_subjects";

/// Longest a report or an expiry may take before it fails as unavailable (its transaction
/// aborted with the session).
const DEADLINE: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub(super) struct Presences {
    pub(super) gateways: Collection<Document>,
    pub(super) members: Collection<Document>,
    pub(super) subjects: Collection<Document>,
    pub(super) events: Collection<Document>,
    pub(super) counters: Collection<Document>,
    pub(super) session: Arc<Owned>,
    pub(super) transaction: TransactionOptions,
}

impl Presences {
    pub(super) fn new(
        database: &Database,
        events: Collection<Document>,
        counters: Collection<Document>,
        session: Arc<Owned>,
        transaction: TransactionOptions,
    ) -> Presences {
        Presences {
            gateways: database.collection(GATEWAYS),
            members: database.collection(MEMBERS),
            subjects: database.collection(SUBJECTS),
            events,
            counters,
            session,
            transaction,
        }
    }
}

fn member_id(topic: &str, subject: &str, gateway: &str) -> String {
    format!("{topic}\n{subject}\n{gateway}")
}

fn subject_id(topic: &str, subject: &str) -> String {
    format!("{topic}\n{subject}")
}

/// Runs `work` in a transaction of the presence session, within `DEADLINE`.
async fn in_transaction<T, F>(presences: &Presences, op: &'static str, work: F) -> Result<T>
where
    F: for<'s> FnMut(
        &'s mut ClientSession,
        &'s mut Presences,
    ) -> futures::future::BoxFuture<'s, mongodb::error::Result<T>>,
{
    let run = async {
        let mut session = presences.session.begin().await?;
        let outcome = session
            .start_transaction()
            .with_options(presences.transaction.clone())
            .and_run(presences.clone(), work)
            .await?;
        session.ended();
        Ok::<_, mongodb::error::Error>(outcome)
    };
    match tokio::time::timeout(DEADLINE, run).await {
        Ok(outcome) => outcome.map_err(|e| mongo_error(op, e)),
        Err(_) => Err(StoreError::Unavailable {
            op,
            reason: format!("not done within {DEADLINE:?}"),
        }),
    }
}

/// Sets one member of `gateway` in the transaction; the subject's join or leave, stored, when
/// its connections over every gateway crossed zero.
async fn apply(
    session: &mut ClientSession,
    to: &Presences,
    gateway: &str,
    member: &Member,
) -> mongodb::error::Result<Option<Document>> {
    let Member {
        topic,
        subject,
        connections,
        since,
    } = member;
    let id = member_id(topic, subject, gateway);
    let had = to
        .members
        .find_one(doc! {"_id": &id})
        .session(&mut *session)
        .await?
        .and_then(|d| d.get_i64("connections").ok())
        .unwrap_or(0);
    let now = i64::try_from(*connections).unwrap_or(i64::MAX);
    if now == 0 {
        to.members
            .delete_one(doc! {"_id": &id})
            .session(&mut *session)
            .await?;
    } else {
        to.members
            .update_one(
                doc! {"_id": &id},
                doc! {
                    "$set": {"connections": now},
                    "$setOnInsert": {
                        "topic": topic, "subject": subject, "gateway": gateway,
                        "since": since.timestamp_millis(),
                    },
                },
            )
            .upsert(true)
            .session(&mut *session)
            .await?;
    }
    // The subject's total: written by every report of it, so concurrent ones conflict.
    let key = subject_id(topic, subject);
    let total = to
        .subjects
        .find_one_and_update(doc! {"_id": &key}, doc! {"$inc": {"total": now - had}})
        .upsert(true)
        .return_document(ReturnDocument::After)
        .session(&mut *session)
        .await?
        .and_then(|d| d.get_i64("total").ok())
        .unwrap_or(0);
    if total <= 0 {
        to.subjects
            .delete_one(doc! {"_id": &key})
            .session(&mut *session)
            .await?;
    }
    let before = (total - (now - had)).max(0) as u64;
    let Some(change) = Change::of(subject, before, total.max(0) as u64) else {
        return Ok(None);
    };
    let new = change.event(topic, subject);
    let counter = to
        .counters
        .find_one_and_update(
            doc! {"_id": counter_id(&new.topic)},
            doc! {"$inc": {"seq": 1_i64}},
        )
        .upsert(true)
        .return_document(ReturnDocument::After)
        .session(&mut *session)
        .await?;
    let seq = counter
        .and_then(|c| c.get_i64("seq").ok())
        .unwrap_or(1)
        .max(1) as u64;
    let event = new.into_event(Some(seq));
    let document = to_document(&event)
        .map_err(|e| mongodb::error::Error::custom(format!("presence event: {e}")))?;
    to.events
        .insert_one(document.clone())
        .session(&mut *session)
        .await?;
    Ok(Some(document))
}

/// The members `gateway` has, as reports of none.
async fn members_of(
    session: &mut ClientSession,
    to: &Presences,
    gateway: &str,
    at: DateTime<Utc>,
) -> mongodb::error::Result<Vec<Member>> {
    let found: Vec<Document> = to
        .members
        .find(doc! {"gateway": gateway})
        .session(&mut *session)
        .await?
        .stream(&mut *session)
        .try_collect()
        .await?;
    Ok(found
        .iter()
        .filter_map(|d| {
            Some(Member {
                topic: d.get_str("topic").ok()?.to_owned(),
                subject: d.get_str("subject").ok()?.to_owned(),
                connections: 0,
                since: at,
            })
        })
        .collect())
}

fn events_of(documents: Vec<Document>) -> Result<Vec<Event>> {
    documents
        .iter()
        .map(super::document::from_document)
        .collect()
}

pub(super) async fn report(presences: &Presences, report: PresenceReport) -> Result<Reported> {
    let (known, documents) = in_transaction(presences, "report_presence", |session, to| {
        let report = report.clone();
        async move {
            let PresenceReport {
                gateway,
                at,
                full,
                members,
            } = report;
            let known = to
                .gateways
                .find_one(doc! {"_id": &gateway})
                .session(&mut *session)
                .await?
                .is_some();
            to.gateways
                .update_one(
                    doc! {"_id": &gateway},
                    doc! {"$max": {"renewedAt": at.timestamp_millis()}},
                )
                .upsert(true)
                .session(&mut *session)
                .await?;
            let mut changes = Vec::new();
            if full {
                let listed: HashSet<(&str, &str)> = members
                    .iter()
                    .map(|m| (m.topic.as_str(), m.subject.as_str()))
                    .collect();
                let stored = members_of(session, to, &gateway, at).await?;
                changes.extend(
                    stored
                        .into_iter()
                        .filter(|m| !listed.contains(&(m.topic.as_str(), m.subject.as_str()))),
                );
            }
            changes.extend(members.iter().cloned());
            let mut documents = Vec::new();
            for member in &changes {
                documents.extend(apply(session, to, &gateway, member).await?);
            }
            Ok((known || full, documents))
        }
        .boxed()
    })
    .await?;
    Ok(Reported {
        events: events_of(documents)?,
        resync: !known,
    })
}

pub(super) async fn expire(
    presences: &Presences,
    cutoff: DateTime<Utc>,
    batch: usize,
) -> Result<Vec<Event>> {
    let documents = in_transaction(presences, "expire_presence", |session, to| {
        async move {
            let cut = cutoff.timestamp_millis();
            let silent: Vec<Document> = to
                .gateways
                .find(doc! {"renewedAt": {"$lt": cut}})
                .limit(i64::try_from(batch).unwrap_or(i64::MAX))
                .session(&mut *session)
                .await?
                .stream(&mut *session)
                .try_collect()
                .await?;
            let mut documents = Vec::new();
            for gateway in silent {
                let (Ok(id), Ok(renewed)) = (gateway.get_str("_id"), gateway.get_i64("renewedAt"))
                else {
                    continue;
                };
                // Taken out in this transaction: a concurrent expiry of it conflicts, and one
                // of the two runs again and finds it gone.
                let gone = to
                    .gateways
                    .delete_one(doc! {"_id": id, "renewedAt": {"$lt": cut}})
                    .session(&mut *session)
                    .await?;
                if gone.deleted_count == 0 {
                    continue;
                }
                let at = DateTime::from_timestamp_millis(renewed).unwrap_or(cutoff);
                for member in members_of(session, to, id, at).await? {
                    documents.extend(apply(session, to, id, &member).await?);
                }
            }
            Ok(documents)
        }
        .boxed()
    })
    .await?;
    events_of(documents)
}

pub(super) async fn presence(
    presences: &Presences,
    topic: &str,
    alive_since: DateTime<Utc>,
    subjects: bool,
) -> Result<Presence> {
    let fail = |e| mongo_error("presence", e);
    let alive: Vec<String> = presences
        .gateways
        .find(doc! {"renewedAt": {"$gte": alive_since.timestamp_millis()}})
        .projection(doc! {"_id": 1})
        .await
        .map_err(fail)?
        .try_collect::<Vec<Document>>()
        .await
        .map_err(fail)?
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
        .collect();
    let members: Vec<Document> = presences
        .members
        .find(doc! {"topic": topic, "gateway": {"$in": &alive}})
        .projection(doc! {"subject": 1, "gateway": 1, "connections": 1, "since": 1})
        .await
        .map_err(fail)?
        .try_collect()
        .await
        .map_err(fail)?;
    let mut count = 0;
    let mut gateways = HashSet::new();
    let mut named: std::collections::BTreeMap<String, (u64, i64)> = Default::default();
    for member in &members {
        let connections = member.get_i64("connections").unwrap_or(0).max(0) as u64;
        count += connections;
        if let Ok(gateway) = member.get_str("gateway") {
            gateways.insert(gateway.to_owned());
        }
        let subject = member.get_str("subject").unwrap_or_default();
        if subjects && !subject.is_empty() {
            let since = member.get_i64("since").unwrap_or(0);
            let entry = named.entry(subject.to_owned()).or_insert((0, since));
            entry.0 += connections;
            entry.1 = entry.1.min(since);
        }
    }
    Ok(Presence {
        count,
        subjects: named
            .into_iter()
            .map(|(user_id, (connections, since))| Present {
                user_id,
                connections,
                since: DateTime::from_timestamp_millis(since).unwrap_or_default(),
            })
            .collect(),
        gateways: gateways.len() as u64,
    })
}
