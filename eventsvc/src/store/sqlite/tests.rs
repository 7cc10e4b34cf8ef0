//! The SQLite store on real files: reopening, concurrent openers, schema versions, rows it
//! cannot read, and group commit (writes queued behind another process's lock).

use super::*;

#[tokio::test]
async fn reopening_keeps_schema_and_rejects_newer_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/events.db");
    let store = SqliteStore::open(path.clone()).await.unwrap();
    let created = store.create(NewEvent::default()).await.unwrap();
    drop(store);

    let store = SqliteStore::open(path.clone()).await.unwrap();
    assert_eq!(store.get(created.id, None).await.unwrap(), created);
    drop(store);

    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(path).await.err().unwrap().to_string();
    assert!(err.contains("schema version 99 is newer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backends_opening_a_new_file_together_all_succeed() {
    // Several backends starting at once on a fresh file race to switch it to WAL.
    let dir = tempfile::tempdir().unwrap();
    for round in 0..25 {
        let path = dir.path().join(format!("fresh-{round}.db"));
        let opens = (0..4).map(|_| SqliteStore::open(path.clone()));
        for opened in futures::future::join_all(opens).await {
            opened.unwrap();
        }
    }
}

#[tokio::test]
async fn unreadable_rows_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(path.clone()).await.unwrap();
    let created = store.create(NewEvent::default()).await.unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE events SET data = '[1,2' WHERE id = ?1",
        [created.id.to_string()],
    )
    .unwrap();
    let err = store.get(created.id, None).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn malformed_cursor_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("e.db")).await.unwrap();
    for bad in [
        "x",
        "-3",
        "",
        "7",
        "00000000000000000000000A",
        "0000000000000000000000001",
    ] {
        let err = store.list(None, 10, Some(bad.into())).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidCursor), "{bad}: {err:?}");
    }
}

#[tokio::test]
async fn point_reads_run_inline_and_leave_what_would_wait_to_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    let created = store.create(NewEvent::default()).await.unwrap();
    assert_eq!(store.get(created.id, None).await.unwrap(), created);
    // A lock another process holds reaches the reader as SQLITE_BUSY, which is `Unavailable`:
    // not answered inline (the caller takes it to the blocking pool, whose connections wait).
    let busy =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    assert!(matches!(
        sql_error("get", &busy),
        StoreError::Unavailable { .. }
    ));
    let outcome = store.inline.read(|_| -> Result<()> {
        Err(StoreError::Unavailable {
            op: "get",
            reason: "database is locked".into(),
        })
    });
    assert!(outcome.is_none());
    // Anything else is the answer, given inline.
    let missing = store
        .inline
        .read(|_| -> Result<()> { Err(StoreError::NotFound) });
    assert!(matches!(missing, Some(Err(StoreError::NotFound))));
    // The reader connections are bounded; each went back to the idle list.
    assert_eq!(store.inline.idle_count(), 1);
}

#[tokio::test]
async fn expired_keys_are_purged_in_batches_and_claims_leave_writes_synced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(path.clone()).await.unwrap();
    let claim = |key: &str, ttl_ms: u64| KeyClaim {
        scope: "user:u".into(),
        key: key.into(),
        fingerprint: [1; 32],
        ttl: Duration::from_millis(ttl_ms),
        lease: Duration::from_secs(30),
    };
    for n in 0..5 {
        let expiring = claim(&format!("brief-{n}"), 1);
        store.claim(&expiring, Uuid::new_v4()).await.unwrap();
    }
    store
        .claim(&claim("kept", 3_600_000), Uuid::new_v4())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.purge_keys(3).await.unwrap(), 3);
    assert_eq!(store.purge_keys(3).await.unwrap(), 2);
    assert_eq!(store.purge_keys(3).await.unwrap(), 0);
    let conn = Connection::open(&path).unwrap();
    let left: Vec<String> = conn
        .prepare("SELECT key FROM idempotency_keys")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(left, ["kept"]);

    // A claim commits unsynced; every pooled connection is back to syncing each commit.
    let modes = store
        .run("test", |conn| {
            Ok(conn
                .pragma_query_value(None, "synchronous", |row| row.get::<_, i64>(0))
                .unwrap())
        })
        .await
        .unwrap();
    assert_eq!(modes, 2, "FULL");
}

/// 40 writes queued while another process holds the write lock: creates, publishes, and every
/// tenth a create under an id already stored with other content. Each write's answer.
async fn queued_behind_the_lock(
    release_after: Duration,
) -> (tempfile::TempDir, SqliteStore, Vec<Result<Event>>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = Arc::new(SqliteStore::open(path.clone()).await.unwrap());
    let taken = Uuid::new_v4();
    let first = NewEvent {
        id: Some(taken),
        title: "first".into(),
        ..NewEvent::default()
    };
    store.create(first).await.unwrap();
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let writes: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let new = NewEvent {
                    id: (i % 10 == 3).then_some(taken),
                    title: format!("w{i}"),
                    topic: if i % 2 == 0 {
                        "t".into()
                    } else {
                        String::new()
                    },
                    ..NewEvent::default()
                };
                if i % 2 == 0 && i % 10 != 3 {
                    store.publish(new).await
                } else {
                    store.create(new).await
                }
            })
        })
        .collect();
    // One write waits in the writer for the lock; the other 39 in its queue.
    while store.writer.queued() < 39 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(release_after).await;
    other.execute_batch("COMMIT").unwrap();
    let mut answers = Vec::new();
    for write in writes {
        answers.push(write.await.unwrap());
    }
    let store = Arc::into_inner(store).unwrap();
    (dir, store, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_queued_together_commit_together_and_one_that_fails_fails_alone() {
    let (_dir, store, answers) = queued_behind_the_lock(Duration::ZERO).await;
    let mut seqs = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            Err(StoreError::AlreadyExists) if i % 10 == 3 => {}
            Ok(event) if i % 10 != 3 => {
                assert_eq!(store.get(event.id, None).await.unwrap(), *event);
                if event.seq > 0 {
                    seqs.push(event.seq);
                }
            }
            other => panic!("write {i}: {other:?}"),
        }
    }
    // The publishes: one seq each, none skipped (a failed write spends none).
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let page = store.list(None, 100, None).await.unwrap();
    assert_eq!(
        page.events.len(),
        1 + 36,
        "the first event and every good write, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_that_cannot_have_the_lock_fails_every_write_and_applies_none() {
    // The lock held past the busy timeout: the writer gives up, and every queued write with it.
    let (_dir, store, answers) =
        queued_behind_the_lock(BUSY_TIMEOUT + Duration::from_secs(1)).await;
    for (i, answer) in answers.iter().enumerate() {
        assert!(
            matches!(answer, Err(StoreError::Unavailable { .. })),
            "write {i}: {answer:?}"
        );
    }
    let page = store.list(None, 100, None).await.unwrap();
    assert_eq!(page.events.len(), 1, "nothing of the batch applied");
}
