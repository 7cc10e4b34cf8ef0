//! The database itself killed with `kill -9` under load and started again on its data.

use std::{collections::HashSet, time::Duration};

use reqwest::StatusCode;

use crate::{
    lists::walk,
    pubsub::{in_order, read, subscribe},
    support::{Engine, Front, UpSystem, publish_refused_with_503, readyz_becomes, until_answered},
    writes::{Answered, MixedLoad},
};

/// The database itself killed with `kill -9` under writes, then started again on its data:
/// meanwhile every answer is a quick 503 with the contract's body and `/readyz` says why; then
/// writes succeed again without restarting anything, and the subscriber resumes from its last
/// `seq` with nothing missed or repeated, nothing acknowledged lost.
pub(super) async fn the_database_killed_under_load_gives_503s_and_everything_recovers(
    engine: Engine,
) {
    let Some(mut server) = engine.own_server("the database's kill -9 under load") else {
        return;
    };
    let system = UpSystem::up_on(server.fresh("outage"), &[], &[]).await;
    system.ready().await;
    let topic = "outage";
    let (mut frames, _) = subscribe(system.url(&format!("/subscribe/{topic}")), None).await;
    let load = MixedLoad::start(&system.url(""), topic);
    until_answered("writes before the outage", 100, || load.answered()).await;

    server.kill();
    let (_, not_ready) = readyz_becomes(
        &system.url(""),
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(10),
    )
    .await;
    let why = not_ready["message"].as_str().unwrap();
    assert!(why.contains("2 NOT_SERVING"), "{not_ready}");
    assert!(why.contains("store does not answer"), "{not_ready}");
    // A write now: a 503 with the contract's body, well inside the 10 s request deadline.
    let took = publish_refused_with_503(&system.url(""), topic).await;
    assert!(took < Duration::from_secs(5), "503 after {took:?}");
    println!("{engine:?} down: /readyz 503 ({why}); a write 503 after {took:?}");

    server.restart();
    readyz_becomes(&system.url(""), StatusCode::OK, Duration::from_secs(30)).await;
    let at_return = load.answered();
    until_answered(
        "writes after the database returned",
        at_return + 100,
        || load.answered(),
    )
    .await;
    let Answered {
        created,
        published,
        failed,
        slowest_failure,
    } = load.stop().await;
    // What failed failed as the contract says: 503 (a write cut off mid-commit may also have
    // been stored, and is then delivered; it was never acknowledged), inside the deadline.
    for failure in &failed {
        assert!(failure.contains(" 503 "), "{failure}");
    }
    assert!(
        slowest_failure < Duration::from_secs(10),
        "a write failed only after {slowest_failure:?}"
    );
    let stored: HashSet<_> = system.stored_ids("kill-writes").await.into_iter().collect();
    for id in &created {
        assert!(stored.contains(id), "acknowledged {id} lost");
    }
    // The subscriber: 1..=newest, each once, in order, every acknowledged publish among them.
    let (history, _) = walk(
        &system.url(""),
        &format!("/topic-events/{topic}?limit=1000"),
    )
    .await;
    let newest = history.last().copied().unwrap_or(0);
    let delivered = read(&mut frames, newest as usize).await;
    in_order(&delivered, 1);
    for seq in &published {
        assert!(
            delivered.contains(seq),
            "acknowledged seq {seq} not delivered"
        );
    }
    println!(
        "{engine:?} kill -9 under load: {} acknowledged before and after, {} refused with 503 \
         while down (the slowest after {slowest_failure:?}), none lost; the subscriber got \
         1..={newest} once each",
        created.len(),
        failed.len()
    );
}
