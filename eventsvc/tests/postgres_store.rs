//! What only the PostgreSQL store has to show, against a real server (Debian's, a cluster of
//! this test's own): TLS as the URI asks for it, libpq's `sslmode` rules, against a server that
//! refuses unencrypted connections. The shared contract is `store_conformance.rs`.

use std::path::Path;

use eventsvc::store::{EventStore, NewEvent, PostgresStore};
use futures::StreamExt;
use testdb::{PostgresServer, PostgresSetup};

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
    assert_eq!(fed.map_err(|e| e.to_string())?.id, published.id);
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
