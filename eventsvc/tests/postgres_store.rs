//! What only the PostgreSQL store has to show, against a real server (Debian's, a cluster of
//! this test's own): TLS as the URI asks for it, libpq's `sslmode` rules, against a server that
//! refuses unencrypted connections; publishes sent in batches, a repeated id in one stored once.
//! The shared contract is `store_conformance.rs`.

use std::{path::Path, sync::Arc, time::Duration};

use eventsvc::store::{EventPatch, EventStore, NewEvent, PostgresStore, Precondition, StoreError};
use futures::StreamExt;
use testdb::{PostgresServer, PostgresSetup};
use uuid::Uuid;

/// A cluster that speaks TLS with a certificate for 127.0.0.1 and `localhost` (signed by the CA
/// in `certs`) and accepts TCP connections only over TLS.
fn tls_server(certs: &Path) -> Option<PostgresServer> {
    testdb::certificates(certs);
    PostgresServer::start_with(
        "the PostgreSQL store over TLS",
        PostgresSetup {
            settings: vec![
                "ssl=on".into(),
                "ssl_cert_file=server.pem".into(),
                "ssl_key_file=server.key".into(),
            ],
            // No `host` or `hostnossl` line: a connection without TLS is refused.
            hba: Some("local all all trust\nhostssl all all 127.0.0.1/32 trust\n".into()),
            files: vec![
                ("server.pem", certs.join("server.pem")),
                ("server.key", certs.join("server.key")),
            ],
            ..PostgresSetup::default()
        },
    )
}

/// Opens the store at `uri` and shows it serves: a publish, read back and seen by the feed.
async fn serves(uri: &str) -> Result<(), String> {
    let store = PostgresStore::open(uri).await.map_err(|e| e.to_string())?;
    store.ping().await.map_err(|e| e.to_string())?;
    let mut feed = store.follow().await.map_err(|e| e.to_string())?;
    let new = NewEvent {
        topic: "tls".into(),
        title: "over TLS".into(),
        user_id: "u".into(),
        ..NewEvent::default()
    };
    let published = store.publish(new).await.map_err(|e| e.to_string())?;
    let fed = feed.next().await.expect("the feed is open");
    assert_eq!(
        fed.map_err(|e| e.to_string())?,
        eventsvc::store::Followed::Published(published.clone())
    );
    let read = store
        .get(published.id, None)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(read.title, "over TLS");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_used_as_the_uri_asks_and_a_wrong_certificate_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let Some(server) = tls_server(certs.path()) else {
        return;
    };
    let uri = server.database("tls");
    let port = server.address().rsplit_once(':').unwrap().1.to_owned();
    let ca = certs.path().join("ca.pem").display().to_string();
    // Another CA (the same name, another key), which signed nothing the server has.
    let other = tempfile::tempdir().unwrap();
    testdb::certificates(other.path());
    let other_ca = other.path().join("ca.pem").display().to_string();
    // Reaches 127.0.0.1 but names a host the certificate is not for.
    let misnamed = format!("postgres://postgres@db.example:{port}/tls?hostaddr=127.0.0.1");

    // Encrypted, so accepted: libpq's default, `require`, and both checks with the right CA.
    for ok in [
        uri.clone(),
        format!("{uri}?sslmode=require"),
        format!("{uri}?sslmode=verify-ca&sslrootcert={ca}"),
        format!("{uri}?sslmode=verify-full&sslrootcert={ca}"),
        // `verify-ca` checks the chain, not the name.
        format!("{misnamed}&sslmode=verify-ca&sslrootcert={ca}"),
    ] {
        serves(&ok).await.unwrap_or_else(|e| panic!("{ok}: {e}"));
    }

    // Refused: no TLS (by the server), an unknown CA, a name the certificate is not for.
    for (refused, why) in [
        (format!("{uri}?sslmode=disable"), "no encryption"),
        (
            format!("{uri}?sslmode=verify-full&sslrootcert={other_ca}"),
            "invalid peer certificate",
        ),
        (
            format!("{uri}?sslmode=require&sslrootcert={other_ca}"),
            "invalid peer certificate",
        ),
        (
            format!("{misnamed}&sslmode=verify-full&sslrootcert={ca}"),
            "not valid for name \"db.example\"",
        ),
    ] {
        let err = serves(&refused)
            .await
            .err()
            .unwrap_or_else(|| panic!("{refused}: served, but should have been refused ({why})"));
        assert!(err.contains(why), "{refused}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_uri_never_reaches_an_error() {
    let Some(server) = PostgresServer::shared("the PostgreSQL store's errors") else {
        return;
    };
    server.sql(
        "postgres",
        "DO $$ BEGIN CREATE ROLE secretive LOGIN PASSWORD 'right-horse'; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );
    let uri = server.database("secretive");
    // The shared cluster trusts loopback, so a wrong password is not what fails here: a
    // database that does not exist is, and its error must not carry the URI.
    let wrong = uri
        .replace("postgres@", "secretive:wrong-battery-staple@")
        .replace("/secretive", "/missing");
    let err = match PostgresStore::open(&wrong).await {
        Ok(_) => panic!("opened a database that does not exist"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("does not exist"), "{err}");
    assert!(!err.contains("wrong-battery-staple"), "{err}");
}

/// Waits until some session waits for a lock (the server's own word, `pg_stat_activity`).
async fn until_a_session_waits_for_a_lock(holder: &tokio_postgres::Client) {
    loop {
        let waiting: i64 = holder
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_queued_together_commit_together_and_a_repeated_id_is_stored_once() {
    let Some(server) = PostgresServer::shared("the PostgreSQL store's publish batches") else {
        return;
    };
    let uri = server.database(&format!("batch_{}", Uuid::new_v4().simple()));
    let store = Arc::new(PostgresStore::open(&uri).await.unwrap());
    let first = NewEvent {
        topic: "t".into(),
        title: "first".into(),
        ..NewEvent::default()
    };
    assert_eq!(store.publish(first).await.unwrap().seq, 1);
    // Another session holds the topic's counter row, so the publishes below queue behind the
    // first batch, which waits for it.
    let (holder, connection) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    holder
        .batch_execute("BEGIN; SELECT last_seq FROM topics WHERE topic = 't' FOR UPDATE")
        .await
        .unwrap();
    // Every tenth publishes one new id with the same content: the first stores it, the others
    // find it taken in the batch and answer with it (exactly once).
    let dup = Uuid::new_v4();
    let publishes: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let new = NewEvent {
                    id: (i % 10 == 3).then_some(dup),
                    topic: "t".into(),
                    title: if i % 10 == 3 {
                        "dup".into()
                    } else {
                        format!("p{i}")
                    },
                    ..NewEvent::default()
                };
                store.publish(new).await
            })
        })
        .collect();
    // The first batch waits for the lock (the server says so); the rest are queued behind it
    // by then or soon after (no signal of that leaves the store: a moment for them).
    until_a_session_waits_for_a_lock(&holder).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let mut seqs = Vec::new();
    let mut dup_seqs = Vec::new();
    for (i, publish) in publishes.into_iter().enumerate() {
        let event = publish
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("publish {i}: {e}"));
        if i % 10 == 3 {
            assert_eq!(event.id, dup);
            dup_seqs.push(event.seq);
        } else {
            seqs.push(event.seq);
        }
    }
    dup_seqs.dedup();
    assert_eq!(dup_seqs.len(), 1, "one event for the one id: {dup_seqs:?}");
    // One seq each, none skipped: a publish that failed in the batch spent none.
    seqs.extend(dup_seqs);
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=38).collect::<Vec<_>>());
    let history = store.events_after("t", 0, 100).await.unwrap();
    assert_eq!(history.len(), 38);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn updates_and_deletes_queued_together_are_each_answered_as_alone() {
    let Some(server) = PostgresServer::shared("the PostgreSQL store's change batches") else {
        return;
    };
    let uri = server.database(&format!("changes_{}", Uuid::new_v4().simple()));
    let store = Arc::new(PostgresStore::open(&uri).await.unwrap());
    let mut ids = Vec::new();
    for i in 0..16 {
        let new = NewEvent {
            user_id: "u".into(),
            title: format!("e{i}"),
            ..NewEvent::default()
        };
        ids.push(store.create(new).await.unwrap().id);
    }
    // Another session holds e0's row: the first batch (its update) waits, and the changes
    // below queue behind it.
    let (holder, connection) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM events WHERE id = '{}' FOR UPDATE",
            ids[0]
        ))
        .await
        .unwrap();
    let patch = |title: &str| EventPatch {
        title: title.into(),
        description: "d".into(),
        completed: true,
    };
    let update = |id: Uuid, owner: &str, title: &str| {
        let (store, owner, patch) = (store.clone(), owner.to_owned(), patch(title));
        tokio::spawn(async move {
            store
                .update(id, Some(owner), patch, Precondition::None)
                .await
                .map(|e| e.title)
        })
    };
    let delete = |id: Uuid, owner: &str| {
        let (store, owner) = (store.clone(), owner.to_owned());
        tokio::spawn(async move {
            store
                .delete(id, Some(owner), Precondition::None)
                .await
                .map(|()| String::new())
        })
    };
    let first = update(ids[0], "u", "first");
    until_a_session_waits_for_a_lock(&holder).await;
    let mut changes = Vec::new();
    for &id in &ids[1..8] {
        changes.push(("updated", update(id, "u", "updated")));
    }
    for &id in &ids[8..12] {
        changes.push(("deleted", delete(id, "u")));
    }
    // Another owner's, and ids never stored: NOT_FOUND, alone.
    changes.push(("not found", update(ids[12], "other", "stolen")));
    changes.push(("not found", delete(ids[13], "other")));
    changes.push(("not found", update(Uuid::new_v4(), "u", "nothing")));
    changes.push(("not found", delete(Uuid::new_v4(), "u")));
    // No signal of the queue leaves the store: a moment for the changes to reach it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(first.await.unwrap().unwrap(), "first");
    for (i, (expected, change)) in changes.into_iter().enumerate() {
        let answer = change.await.unwrap();
        match (expected, answer) {
            ("updated", Ok(title)) => assert_eq!(title, "updated"),
            ("deleted", Ok(_)) => {}
            ("not found", Err(StoreError::NotFound)) => {}
            (expected, other) => panic!("change {i}: {expected} expected, {other:?}"),
        }
    }
    for (i, &id) in ids.iter().enumerate() {
        let stored = store.get(id, None).await;
        match i {
            0 => assert_eq!(stored.unwrap().title, "first"),
            1..8 => assert_eq!(stored.unwrap().title, "updated"),
            8..12 => assert!(
                matches!(stored, Err(StoreError::NotFound)),
                "{i}: {stored:?}"
            ),
            _ => assert_eq!(stored.unwrap().title, format!("e{i}")),
        }
    }
    // Two changes of one id in one queue: applied one after the other.
    let renamed = update(ids[14], "u", "renamed");
    let gone = delete(ids[14], "u");
    let (renamed, gone) = (renamed.await.unwrap(), gone.await.unwrap());
    assert!(
        matches!(
            (&renamed, &gone),
            (Ok(_), Ok(_)) | (Err(StoreError::NotFound), Ok(_))
        ),
        "{renamed:?} {gone:?}"
    );
    assert!(matches!(
        store.get(ids[14], None).await,
        Err(StoreError::NotFound)
    ));
}
