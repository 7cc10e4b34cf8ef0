//! Presence on PostgreSQL: gateways and their members in two tables. A report or an expiry is
//! one transaction; its members are applied server-side by `presence_apply`, which locks each
//! (topic, subject) for the transaction (an advisory lock: two gateways' reports of one subject
//! cannot both find it absent) and publishes a join or leave through `publish_event`.

use chrono::{DateTime, Utc};
use deadpool_postgres::Object;
use uuid::Uuid;

use super::{CHANNEL, COLUMNS, pg_error, to_event};
use crate::store::{
    Event, Result,
    presence::{Member, Presence, PresenceReport, Present, Reported},
};

pub(super) const MIGRATION: &str = "CREATE TABLE presence_gateways (
         gateway    TEXT   PRIMARY KEY,
         renewed_at BIGINT NOT NULL
     );
     CREATE INDEX presence_gateways_by_renewal ON presence_gateways (renewed_at);
     CREATE TABLE presence_members (
         topic       TEXT   NOT NULL,
         subject     BYTEA  NOT NULL,
         gateway     TEXT   NOT NULL,
         connections BIGINT NOT NULL,
         since       BIGINT NOT NULL,
         PRIMARY KEY (topic, subject, gateway)
     );
     CREATE INDEX presence_members_by_gateway ON presence_members (gateway);
     -- A time-ordered id (UUID v7) for an event written server-side.
     CREATE FUNCTION presence_uuid(p_now BIGINT) RETURNS UUID LANGUAGE sql VOLATILE AS $$
         SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
             PLACING substring(int8send(p_now) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
     $$;
     -- Sets each member of a gateway (0 connections: removed); returns the ids of the joins
     -- and leaves it published.
     CREATE FUNCTION presence_apply(
         p_gateway TEXT, p_topics TEXT[], p_subjects BYTEA[], p_connections BIGINT[],
         p_since BIGINT[], p_now BIGINT, p_channel TEXT
     ) RETURNS SETOF UUID LANGUAGE plpgsql AS $$
     DECLARE
         before BIGINT;
         after  BIGINT;
         kind   TEXT;
         new_id UUID;
     BEGIN
         FOR i IN 1 .. coalesce(array_length(p_topics, 1), 0) LOOP
             PERFORM pg_advisory_xact_lock(hashtext(p_topics[i]), hashtext(encode(p_subjects[i], 'hex')));
             SELECT coalesce(sum(connections), 0) INTO before FROM presence_members
                 WHERE topic = p_topics[i] AND subject = p_subjects[i];
             IF p_connections[i] = 0 THEN
                 DELETE FROM presence_members
                     WHERE topic = p_topics[i] AND subject = p_subjects[i] AND gateway = p_gateway;
             ELSE
                 INSERT INTO presence_members (topic, subject, gateway, connections, since)
                     VALUES (p_topics[i], p_subjects[i], p_gateway, p_connections[i], p_since[i])
                     ON CONFLICT (topic, subject, gateway)
                     DO UPDATE SET connections = EXCLUDED.connections;
             END IF;
             SELECT coalesce(sum(connections), 0) INTO after FROM presence_members
                 WHERE topic = p_topics[i] AND subject = p_subjects[i];
             kind := NULL;
             IF p_subjects[i] <> ''::bytea AND before = 0 AND after > 0 THEN
                 kind := 'join';
             ELSIF p_subjects[i] <> ''::bytea AND before > 0 AND after = 0 THEN
                 kind := 'leave';
             END IF;
             IF kind IS NOT NULL THEN
                 new_id := presence_uuid(p_now);
                 PERFORM publish_event(new_id, p_subjects[i], convert_to(kind, 'UTF8'),
                     ''::bytea, false, p_now, '$presence.' || p_topics[i],
                     json_build_object('topic', p_topics[i])::text, p_now, NULL, NULL, NULL,
                     p_channel);
                 RETURN NEXT new_id;
             END IF;
         END LOOP;
     END $$;";

/// Applies `members` of `gateway` in the transaction; the events published, as stored.
async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    op: &'static str,
    gateway: &str,
    members: &[Member],
    now: DateTime<Utc>,
) -> Result<Vec<Event>> {
    let topics: Vec<&str> = members.iter().map(|m| m.topic.as_str()).collect();
    let subjects: Vec<&[u8]> = members.iter().map(|m| m.subject.as_bytes()).collect();
    let connections: Vec<i64> = members
        .iter()
        .map(|m| i64::try_from(m.connections).unwrap_or(i64::MAX))
        .collect();
    let since: Vec<i64> = members.iter().map(|m| m.since.timestamp_millis()).collect();
    let ids: Vec<Uuid> = tx
        .query(
            "SELECT presence_apply($1, $2, $3, $4, $5, $6, $7)",
            &[
                &gateway,
                &topics,
                &subjects,
                &connections,
                &since,
                &now.timestamp_millis(),
                &CHANNEL,
            ],
        )
        .await
        .map_err(|e| pg_error(op, e))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!("SELECT {COLUMNS} FROM events WHERE id = ANY($1) ORDER BY pk");
    tx.query(&sql, &[&ids])
        .await
        .map_err(|e| pg_error(op, e))?
        .iter()
        .map(to_event)
        .collect()
}

/// The members `gateway` has in the store, as reports of none.
async fn members_of(
    tx: &deadpool_postgres::Transaction<'_>,
    op: &'static str,
    gateway: &str,
    at: DateTime<Utc>,
) -> Result<Vec<Member>> {
    Ok(tx
        .query(
            "SELECT topic, subject FROM presence_members WHERE gateway = $1",
            &[&gateway],
        )
        .await
        .map_err(|e| pg_error(op, e))?
        .iter()
        .map(|row| Member {
            topic: row.get(0),
            subject: String::from_utf8_lossy(row.get::<_, &[u8]>(1)).into_owned(),
            connections: 0,
            since: at,
        })
        .collect())
}

pub(super) async fn report(client: &mut Object, report: PresenceReport) -> Result<Reported> {
    const OP: &str = "report_presence";
    let PresenceReport {
        gateway,
        at,
        full,
        members,
    } = report;
    let tx = client.transaction().await.map_err(|e| pg_error(OP, e))?;
    let known = tx
        .query_opt(
            "SELECT 1 FROM presence_gateways WHERE gateway = $1 FOR UPDATE",
            &[&gateway],
        )
        .await
        .map_err(|e| pg_error(OP, e))?
        .is_some();
    tx.execute(
        "INSERT INTO presence_gateways (gateway, renewed_at) VALUES ($1, $2)
         ON CONFLICT (gateway) DO UPDATE
         SET renewed_at = greatest(presence_gateways.renewed_at, EXCLUDED.renewed_at)",
        &[&gateway, &at.timestamp_millis()],
    )
    .await
    .map_err(|e| pg_error(OP, e))?;
    let mut changes = Vec::new();
    if full {
        // Members not in a full report are gone.
        let listed: std::collections::HashSet<(&str, &str)> = members
            .iter()
            .map(|m| (m.topic.as_str(), m.subject.as_str()))
            .collect();
        changes.extend(
            members_of(&tx, OP, &gateway, at)
                .await?
                .into_iter()
                .filter(|m| !listed.contains(&(m.topic.as_str(), m.subject.as_str()))),
        );
    }
    changes.extend(members);
    let events = apply(&tx, OP, &gateway, &changes, Utc::now()).await?;
    tx.commit().await.map_err(|e| pg_error(OP, e))?;
    Ok(Reported {
        events,
        resync: !known && !full,
    })
}

pub(super) async fn expire(
    client: &mut Object,
    cutoff: DateTime<Utc>,
    batch: usize,
) -> Result<Vec<Event>> {
    const OP: &str = "expire_presence";
    let tx = client.transaction().await.map_err(|e| pg_error(OP, e))?;
    // Taken out first, in this transaction: a gateway is expired by one backend, once.
    let silent = tx
        .query(
            "DELETE FROM presence_gateways WHERE gateway IN (
                 SELECT gateway FROM presence_gateways WHERE renewed_at < $1
                 ORDER BY renewed_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING gateway, renewed_at",
            &[&cutoff.timestamp_millis(), &(batch as i64)],
        )
        .await
        .map_err(|e| pg_error(OP, e))?;
    let mut events = Vec::new();
    for row in silent {
        let gateway: String = row.get(0);
        let at = DateTime::from_timestamp_millis(row.get(1)).unwrap_or(cutoff);
        let gone = members_of(&tx, OP, &gateway, at).await?;
        events.extend(apply(&tx, OP, &gateway, &gone, Utc::now()).await?);
    }
    tx.commit().await.map_err(|e| pg_error(OP, e))?;
    Ok(events)
}

pub(super) async fn presence(
    client: &Object,
    topic: &str,
    alive_since: DateTime<Utc>,
    subjects: bool,
) -> Result<Presence> {
    const OP: &str = "presence";
    let alive = alive_since.timestamp_millis();
    let row = client
        .query_one(
            "SELECT coalesce(sum(m.connections), 0)::BIGINT, count(DISTINCT m.gateway)
             FROM presence_members m JOIN presence_gateways g ON g.gateway = m.gateway
             WHERE m.topic = $1 AND g.renewed_at >= $2",
            &[&topic, &alive],
        )
        .await
        .map_err(|e| pg_error(OP, e))?;
    let (count, gateways): (i64, i64) = (row.get(0), row.get(1));
    let subjects = if subjects {
        client
            .query(
                "SELECT m.subject, sum(m.connections)::BIGINT, min(m.since)
                 FROM presence_members m JOIN presence_gateways g ON g.gateway = m.gateway
                 WHERE m.topic = $1 AND g.renewed_at >= $2 AND m.subject <> ''::bytea
                 GROUP BY m.subject ORDER BY m.subject",
                &[&topic, &alive],
            )
            .await
            .map_err(|e| pg_error(OP, e))?
            .iter()
            .map(|row| Present {
                user_id: String::from_utf8_lossy(row.get::<_, &[u8]>(0)).into_owned(),
                connections: row.get::<_, i64>(1).max(0) as u64,
                since: DateTime::from_timestamp_millis(row.get(2)).unwrap_or_default(),
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Presence {
        count: count.max(0) as u64,
        subjects,
        gateways: gateways.max(0) as u64,
    })
}
