//! The API description against the real gateway: `/openapi.json` passes
//! `openapi-spec-validator`, schemathesis exercises every operation of it against a live
//! gateway and backend with a fixed seed and finds nothing, and `/docs` renders in headless
//! Chromium with no console error and no request that leaves the gateway.

use std::{path::Path, process::Stdio, time::Duration};

use serde_json::Value;

use crate::{
    cdp::Browser,
    support::{EXCLUSIVE, Local, http, readyz_becomes},
};

/// A backend and a gateway, in this process, whose limits stay out of the fuzzer's way:
/// schemathesis sends hundreds of requests a second from one address, and a stream it opens
/// must end for it to read the answer (EventSource would reconnect with `Last-Event-ID`), soon:
/// it opens streams by the dozen.
async fn system(db: &Path, auth: &[&str]) -> (Local, Local) {
    let backend = Local::backend(db, auth).await;
    let mut flags = vec!["--rate-limit", "100000", "--sse-max-duration", "100ms"];
    flags.extend_from_slice(auth);
    let gateway = Local::gateway(&[backend.addr], &flags).await;
    let ready = reqwest::StatusCode::OK;
    readyz_becomes(&gateway.url(), ready, Duration::from_secs(10)).await;
    (backend, gateway)
}

async fn run(program: &str, args: &[&str], dir: &Path) -> (bool, String) {
    let output = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program} (.ci/run installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Fetches the gateway's document, checks it with `openapi-spec-validator`, and runs
/// schemathesis's every check on every operation of it (fixed seed, bounded examples, its
/// stateful phase following the document's links), with `headers` on every request.
async fn schemathesis_finds_nothing(gateway: &Local, dir: &Path, headers: &[&str]) {
    let url = format!("{}/openapi.json", gateway.url());
    let response = http().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let operations: usize = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    let file = dir.join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&document).unwrap()).unwrap();
    let (valid, said) = run(
        "python3",
        &["-m", "openapi_spec_validator", &file.display().to_string()],
        dir,
    )
    .await;
    assert!(valid, "openapi-spec-validator: {said}");

    // 413 is how this API rejects a body over its limit, which a schema-violating string can
    // be. 412 answers a schema-valid `If-Match` naming a revision the event is not at (or an
    // event that is not there). 422 answers schema-valid data when schemathesis sends an `Idempotency-Key` it
    // already sent with another body: a refusal the API must make. Everything else is
    // schemathesis's default, but one check is left out: a create repeated with its `Idempotency-Key`
    // answers what the first got, 201 and the event as it was, even when the event has been
    // deleted since (as the key's contract says), and the stateful phase's
    // `ensure_resource_availability` takes that for a created event that cannot be found
    // (ST302). Reading what was created is covered by the end-to-end tests. A `filter` is a
    // language no schema can spell (and patterns may match more topics than a stream
    // follows): on the operations that take one, a schema-valid request may be a 400, and
    // one of 1024 four-byte characters, percent-encoded, passes the 8 KiB request line (414).
    std::fs::write(
        dir.join("schemathesis.toml"),
        "[checks.negative_data_rejection]\n\
         expected-statuses = [400, 401, 403, 404, 405, 406, 409, 412, 413, 414, 415, 422, 428, 429, 431, \"5XX\"]\n\
         [checks.positive_data_acceptance]\n\
         expected-statuses = [\"2XX\", \"3XX\", 401, 403, 404, 409, 412, 422, 429, \"5XX\"]\n\
         [[operations]]\n\
         include-path = [\"/subscribe\", \"/subscribe/{topic}\", \"/topic-events/{topic}\"]\n\
         checks.positive_data_acceptance.expected-statuses = \
         [\"2XX\", \"3XX\", 400, 401, 403, 404, 409, 412, 414, 422, 429, 431, \"5XX\"]\n",
    )
    .unwrap();
    let mut args = vec![
        "--config-file",
        "schemathesis.toml",
        "run",
        &url,
        "--checks",
        "all",
        "--exclude-checks",
        "ensure_resource_availability",
        "--seed",
        "1",
        "--max-examples",
        "25",
        "--request-timeout",
        "10",
    ];
    for header in headers {
        args.extend(["--header", header]);
    }
    let (passed, said) = run("schemathesis", &args, dir).await;
    assert!(passed, "schemathesis found failures:\n{said}");
    let selected = format!("Selected: {operations}/{operations}");
    let tested = format!("Tested: {operations}");
    assert!(
        said.contains(&selected) && said.contains(&tested),
        "not every one of the {operations} operations was exercised:\n{said}"
    );
    let summary = said
        .lines()
        .rev()
        .find(|l| l.contains("generated"))
        .unwrap_or("");
    println!(
        "schemathesis: {operations} operations, no failures ({})",
        summary.trim()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_validates_and_schemathesis_finds_nothing_in_any_operation() {
    if !testdb::needs(
        "the_document_validates_and_schemathesis_finds_nothing_in_any_operation",
        &[testdb::Tool::Schemathesis],
    ) {
        return;
    }
    let _exclusive = EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (_backend, gateway) = system(&dir.path().join("events.db"), &[]).await;
    schemathesis_finds_nothing(&gateway, dir.path(), &[]).await;
}

/// The same in token mode, as a caller with every right: the token schemes, 401 and 403 are
/// part of what is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_in_token_mode_either() {
    if !testdb::needs(
        "schemathesis_finds_nothing_in_token_mode_either",
        &[testdb::Tool::Schemathesis],
    ) {
        return;
    }
    let _exclusive = EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let token_mode = crate::support::TokenMode::new(dir.path());
    let (secret, auth) = (&token_mode.secret, token_mode.flags());
    let (_backend, gateway) = system(&dir.path().join("events.db"), &auth).await;
    let token = crate::token::mint(
        secret,
        &[
            "--sub",
            "alice",
            "--publish",
            "*",
            "--subscribe",
            "*",
            "--admin",
        ],
    );
    let header = format!("Authorization: Bearer {token}");
    schemathesis_finds_nothing(&gateway, dir.path(), &[&header]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_renders_offline_in_chromium() {
    if !testdb::needs(
        "the_docs_page_renders_offline_in_chromium",
        &[testdb::Tool::Chromium],
    ) {
        return;
    }
    let _exclusive = EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (_backend, gateway) = system(&dir.path().join("events.db"), &[]).await;
    let base = gateway.url();
    let browser = Browser::launch(dir.path()).await;
    let mut page = browser.page().await;
    page.navigate(&format!("{base}/docs")).await;

    // Swagger UI fetches /openapi.json and draws one block per operation.
    let operations = page
        .wait_for(
            "document.querySelectorAll('.opblock').length",
            |n| n.as_u64().unwrap_or(0) >= 14,
            Duration::from_secs(30),
        )
        .await;
    let title = page
        .eval("document.querySelector('.title')?.textContent")
        .await;
    assert!(
        title.as_str().unwrap_or("").starts_with("events"),
        "{title}"
    );
    let shot = dir.path().join("docs.png");
    page.screenshot(&shot).await;
    println!(
        "/docs rendered {operations} operations; screenshot {}",
        shot.display()
    );
    // Kept for a person to look at: the temp dir goes when the test ends.
    if let Ok(keep) = std::env::var("EVENTSYS_TEST_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }

    let report = page.report();
    report.assert_clean(&base);
    for wanted in ["/docs", "/docs/swagger-ui-bundle.js", "/openapi.json"] {
        let url = format!("{base}{wanted}");
        assert!(
            report.requests.contains(&url),
            "{url} not requested: {:?}",
            report.requests
        );
    }
}
