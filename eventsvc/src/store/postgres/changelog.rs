//! Users' change feeds on PostgreSQL: an entry per create, update and delete of an owned event,
//! written by `record_change` inside the change's own transaction (a create in its
//! subtransaction of `write_events`, an update or delete in its batch's transaction), which
//! also notifies the followers. Entries are read by position and trimmed by retention like a
//! topic's events (`TRIMMED`).

use chrono::{SubsecRound, Utc};
use deadpool_postgres::GenericClient;

use super::{pg_error, retention::Trimmed};
use crate::store::{ChangeKind, Event, EventChange, Result, outcome};

/// The feeds' tables (as SQLite's, user ids as bytes as the events'), `record_change`, and
/// `write_events` again with each create's entry (`p_changes`: its event as
/// `outcome::encode` writes it, NULL for an event without an owner). The previous
/// `write_events` stays for backends of the version before, which record nothing.
pub(super) const MIGRATION: &str = "CREATE TABLE changes (
         pk       BIGSERIAL PRIMARY KEY,
         user_id  BYTEA    NOT NULL,
         position BIGINT   NOT NULL,
         kind     SMALLINT NOT NULL,
         time     BIGINT   NOT NULL,
         event    TEXT     NOT NULL
     );
     CREATE UNIQUE INDEX changes_by_user ON changes (user_id, position);
     CREATE INDEX changes_by_time ON changes (time);
     CREATE TABLE change_heads (
         user_id         BYTEA  PRIMARY KEY,
         last_position   BIGINT NOT NULL,
         dropped_through BIGINT NOT NULL DEFAULT 0
     );
     CREATE FUNCTION record_change(
         p_user BYTEA, p_kind SMALLINT, p_time BIGINT, p_event TEXT, p_channel TEXT
     ) RETURNS BIGINT LANGUAGE plpgsql AS $$
     DECLARE
         new_position BIGINT;
     BEGIN
         INSERT INTO change_heads (user_id, last_position) VALUES (p_user, 1)
             ON CONFLICT (user_id) DO UPDATE SET last_position = change_heads.last_position + 1
             RETURNING last_position INTO new_position;
         INSERT INTO changes (user_id, position, kind, time, event)
             VALUES (p_user, new_position, p_kind, p_time, p_event);
         PERFORM pg_notify(p_channel, 'c:' || new_position || ':' || encode(p_user, 'hex'));
         RETURN new_position;
     END $$;
     CREATE FUNCTION write_events(
         p_publish BOOLEAN[], p_ids UUID[], p_user_ids BYTEA[], p_titles BYTEA[],
         p_descriptions BYTEA[], p_completed BOOLEAN[], p_created_at BIGINT[], p_topics TEXT[],
         p_data TEXT[], p_times BIGINT[], p_key_scopes BYTEA[], p_keys TEXT[],
         p_outcome_heads TEXT[], p_changes TEXT[], p_channel TEXT
     ) RETURNS TABLE (out_seq BIGINT, out_failure TEXT) LANGUAGE plpgsql AS $$
     BEGIN
         FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
             BEGIN
                 IF p_publish[i] THEN
                     out_seq := publish_event(p_ids[i], p_user_ids[i], p_titles[i],
                         p_descriptions[i], p_completed[i], p_created_at[i], p_topics[i],
                         p_data[i], p_times[i], p_key_scopes[i], p_keys[i],
                         p_outcome_heads[i], p_channel);
                 ELSE
                     INSERT INTO events (id, user_id, title, description, completed,
                                         created_at, topic, data, time, seq)
                         VALUES (p_ids[i], p_user_ids[i], p_titles[i], p_descriptions[i],
                                 p_completed[i], p_created_at[i], p_topics[i], p_data[i],
                                 NULL, NULL);
                     IF p_keys[i] IS NOT NULL THEN
                         UPDATE idempotency_keys
                             SET outcome = p_outcome_heads[i] || '0}', lease_until = NULL
                             WHERE scope = p_key_scopes[i] AND key = p_keys[i]
                               AND event_id = p_ids[i]::TEXT AND outcome IS NULL;
                         IF NOT FOUND THEN
                             RAISE EXCEPTION 'the idempotency key is another request''s'
                                 USING ERRCODE = 'EV409';
                         END IF;
                     END IF;
                     IF p_changes[i] IS NOT NULL THEN
                         PERFORM record_change(p_user_ids[i], 1::SMALLINT, p_created_at[i],
                             p_changes[i], p_channel);
                     END IF;
                     out_seq := 0;
                 END IF;
                 out_failure := NULL;
             EXCEPTION
                 WHEN unique_violation THEN
                     out_seq := NULL;
                     out_failure := 'taken';
                 WHEN SQLSTATE 'EV409' THEN
                     out_seq := NULL;
                     out_failure := 'key';
             END;
             RETURN NEXT;
         END LOOP;
     END $$;";

/// A create's entry for `write_events`: the event as stored, if it has an owner.
pub(super) fn created(event: &Event) -> Option<String> {
    (!event.user_id.is_empty()).then(|| outcome::encode(event))
}

/// Records `changes` (each the event after it) in their owners' feeds, in the caller's
/// transaction. In user order: each takes its user's head row lock until commit, and batches
/// of other processes take theirs in the same order, so they wait for each other rather than
/// deadlock.
pub(super) async fn record(
    tx: &impl GenericClient,
    mut changes: Vec<(ChangeKind, Event)>,
    channel: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    changes.retain(|(_, event)| !event.user_id.is_empty());
    if changes.is_empty() {
        return Ok(());
    }
    changes.sort_by(|(_, a), (_, b)| a.user_id.cmp(&b.user_id));
    let now = Utc::now().trunc_subsecs(3).timestamp_millis();
    let users: Vec<&[u8]> = changes.iter().map(|(_, e)| e.user_id.as_bytes()).collect();
    let kinds: Vec<i16> = changes
        .iter()
        .map(|(kind, _)| i16::try_from(kind.code()).unwrap_or(0))
        .collect();
    let times: Vec<i64> = vec![now; changes.len()];
    let events: Vec<String> = changes
        .iter()
        .map(|(kind, e)| outcome::encode(&EventChange::kept(*kind, e)))
        .collect();
    tx.query(
        "SELECT record_change(c.user_id, c.kind, c.time, c.event, $5)
         FROM unnest($1::BYTEA[], $2::SMALLINT[], $3::BIGINT[], $4::TEXT[])
              WITH ORDINALITY AS c(user_id, kind, time, event, n)
         ORDER BY c.n",
        &[&users, &kinds, &times, &events, &channel],
    )
    .await?;
    Ok(())
}

/// The columns an entry query reads, in `entry`'s order.
pub(super) const ENTRY: &str = "pk, position, kind, time, event";

pub(super) fn entry(row: &tokio_postgres::Row) -> Result<EventChange> {
    let kind: i16 = row.get("kind");
    outcome::change(
        row.get("pk"),
        row.get("position"),
        i64::from(kind),
        row.get("time"),
        row.get("event"),
    )
}

pub(super) async fn after(
    client: &impl GenericClient,
    user: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<EventChange>> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(
            &format!(
                "SELECT {ENTRY} FROM changes WHERE user_id = $1 AND position > $2
                 ORDER BY position LIMIT $3"
            ),
            &[&user.as_bytes(), &after, &limit],
        )
        .await
        .map_err(|e| pg_error("changes_after", e))?;
    rows.iter().map(entry).collect()
}

/// What retention trims of the feeds (`retention`): a user's entries, by position.
pub(super) const TRIMMED: Trimmed = Trimmed {
    delete: "DELETE FROM changes WHERE pk IN (
                 SELECT pk FROM changes WHERE user_id = $1 AND position <= $2
                 ORDER BY position LIMIT $3)
             RETURNING position",
    bound: "UPDATE change_heads SET dropped_through = GREATEST(dropped_through, $2)
            WHERE user_id = $1",
    over_count: "SELECT user_id, last_position - $1 FROM change_heads
                 WHERE last_position - $1 > dropped_through LIMIT 1",
    over_age: "SELECT c.user_id, max(c.position) FROM changes c
               JOIN change_heads h ON h.user_id = c.user_id
               WHERE c.time < $1
               GROUP BY c.user_id HAVING max(c.position) > max(h.dropped_through) LIMIT 1",
    dropped: "SELECT dropped_through FROM change_heads WHERE user_id = $1",
};
