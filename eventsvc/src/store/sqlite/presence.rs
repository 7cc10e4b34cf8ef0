//! Presence on SQLite: gateways and their members in two tables; a report or an expiry is one
//! `IMMEDIATE` transaction on the caller's connection (SQLite's lock orders it with every other
//! write, the elected writer's included), its joins and leaves published in it.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{publish_in, rows::millis, sql_error};
use crate::store::{
    Event, Result,
    presence::{Change, Member, Presence, PresenceReport, Present, Reported},
};

pub(super) const MIGRATION: &str = "CREATE TABLE presence_gateways (
         gateway    TEXT    PRIMARY KEY,
         renewed_at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE presence_members (
         topic       TEXT    NOT NULL,
         subject     TEXT    NOT NULL,
         gateway     TEXT    NOT NULL,
         connections INTEGER NOT NULL,
         since       INTEGER NOT NULL,
         PRIMARY KEY (topic, subject, gateway)
     ) WITHOUT ROWID;
     CREATE INDEX presence_members_by_gateway ON presence_members (gateway);
     CREATE INDEX presence_gateways_by_renewal ON presence_gateways (renewed_at);";

/// A subject's connections on a topic across every gateway.
fn total(tx: &Transaction<'_>, topic: &str, subject: &str) -> rusqlite::Result<u64> {
    tx.prepare_cached(
        "SELECT COALESCE(SUM(connections), 0) FROM presence_members
         WHERE topic = ?1 AND subject = ?2",
    )?
    .query_row(params![topic, subject], |row| row.get::<_, i64>(0))
    .map(|n| n.max(0) as u64)
}

/// Sets one member of `gateway` (removes it at 0 connections); publishes the subject's join or
/// leave when its total crossed zero.
fn apply(
    tx: &Transaction<'_>,
    gateway: &str,
    member: &Member,
    events: &mut Vec<Event>,
) -> Result<()> {
    let fail = |e| sql_error("report_presence", &e);
    let Member {
        topic,
        subject,
        connections,
        since,
    } = member;
    let before = total(tx, topic, subject).map_err(fail)?;
    if *connections == 0 {
        tx.prepare_cached(
            "DELETE FROM presence_members WHERE topic = ?1 AND subject = ?2 AND gateway = ?3",
        )
        .and_then(|mut stmt| stmt.execute(params![topic, subject, gateway]))
        .map_err(fail)?;
    } else {
        tx.prepare_cached(
            "INSERT INTO presence_members (topic, subject, gateway, connections, since)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (topic, subject, gateway) DO UPDATE SET connections = ?4",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                topic,
                subject,
                gateway,
                *connections as i64,
                millis(*since)
            ])
        })
        .map_err(fail)?;
    }
    let after = total(tx, topic, subject).map_err(fail)?;
    if let Some(change) = Change::of(subject, before, after) {
        let (event, _) = publish_in(tx, change.event(topic, subject))?;
        events.push(event);
    }
    Ok(())
}

/// The members `gateway` has in the store.
fn members_of(tx: &Transaction<'_>, gateway: &str) -> rusqlite::Result<Vec<(String, String)>> {
    tx.prepare_cached("SELECT topic, subject FROM presence_members WHERE gateway = ?1")?
        .query_map(params![gateway], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect()
}

/// Gone members, as reports of none.
fn gone(members: Vec<(String, String)>, at: DateTime<Utc>) -> impl Iterator<Item = Member> {
    members.into_iter().map(move |(topic, subject)| Member {
        topic,
        subject,
        connections: 0,
        since: at,
    })
}

pub(super) fn report(conn: &mut Connection, report: PresenceReport) -> Result<Reported> {
    let fail = |e| sql_error("report_presence", &e);
    let PresenceReport {
        gateway,
        at,
        full,
        members,
    } = report;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let known: Option<i64> = tx
        .query_row(
            "SELECT renewed_at FROM presence_gateways WHERE gateway = ?1",
            params![gateway],
            |row| row.get(0),
        )
        .optional()
        .map_err(fail)?;
    tx.execute(
        "INSERT INTO presence_gateways (gateway, renewed_at) VALUES (?1, ?2)
         ON CONFLICT (gateway) DO UPDATE SET renewed_at = max(renewed_at, ?2)",
        params![gateway, millis(at)],
    )
    .map_err(fail)?;
    let mut events = Vec::new();
    if full {
        // Members not in a full report are gone.
        let listed: std::collections::HashSet<(&str, &str)> = members
            .iter()
            .map(|m| (m.topic.as_str(), m.subject.as_str()))
            .collect();
        let stored = members_of(&tx, &gateway).map_err(fail)?;
        let unlisted: Vec<_> = stored
            .into_iter()
            .filter(|(t, s)| !listed.contains(&(t.as_str(), s.as_str())))
            .collect();
        for member in gone(unlisted, at) {
            apply(&tx, &gateway, &member, &mut events)?;
        }
    }
    for member in &members {
        apply(&tx, &gateway, member, &mut events)?;
    }
    tx.commit().map_err(fail)?;
    Ok(Reported {
        events,
        resync: known.is_none() && !full,
    })
}

pub(super) fn expire(
    conn: &mut Connection,
    cutoff: DateTime<Utc>,
    batch: usize,
) -> Result<Vec<Event>> {
    let fail = |e| sql_error("expire_presence", &e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let silent: Vec<(String, i64)> = tx
        .prepare_cached(
            "SELECT gateway, renewed_at FROM presence_gateways WHERE renewed_at < ?1 LIMIT ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![millis(cutoff), batch as i64], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect()
        })
        .map_err(fail)?;
    let mut events = Vec::new();
    for (gateway, renewed_at) in silent {
        let at = DateTime::from_timestamp_millis(renewed_at).unwrap_or(cutoff);
        for member in gone(members_of(&tx, &gateway).map_err(fail)?, at) {
            apply(&tx, &gateway, &member, &mut events)?;
        }
        tx.execute(
            "DELETE FROM presence_gateways WHERE gateway = ?1",
            params![gateway],
        )
        .map_err(fail)?;
    }
    tx.commit().map_err(fail)?;
    Ok(events)
}

pub(super) fn presence(
    conn: &Connection,
    topic: &str,
    alive_since: DateTime<Utc>,
    subjects: bool,
) -> Result<Presence> {
    let fail = |e| sql_error("presence", &e);
    let (count, gateways): (i64, i64) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(m.connections), 0), COUNT(DISTINCT m.gateway)
             FROM presence_members m JOIN presence_gateways g ON g.gateway = m.gateway
             WHERE m.topic = ?1 AND g.renewed_at >= ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![topic, millis(alive_since)], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
        })
        .map_err(fail)?;
    let subjects = if subjects {
        conn.prepare_cached(
            "SELECT m.subject, SUM(m.connections), MIN(m.since)
             FROM presence_members m JOIN presence_gateways g ON g.gateway = m.gateway
             WHERE m.topic = ?1 AND g.renewed_at >= ?2 AND m.subject <> ''
             GROUP BY m.subject ORDER BY m.subject",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![topic, millis(alive_since)], |row| {
                Ok(Present {
                    user_id: row.get(0)?,
                    connections: row.get::<_, i64>(1)?.max(0) as u64,
                    since: DateTime::from_timestamp_millis(row.get(2)?).unwrap_or_default(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(fail)?
    } else {
        Vec::new()
    };
    Ok(Presence {
        count: count.max(0) as u64,
        subjects,
        gateways: gateways.max(0) as u64,
    })
}
