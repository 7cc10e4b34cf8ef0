//! Which web pages may call a gateway, as a real browser enforces it: in anonymous mode, by
//! default, pages of this machine may and a page of another site may not (neither read nor
//! delete, even though its requests reach a loopback address); `--cors-origins '*'` opens it
//! to every page, and says so at start.

use std::net::SocketAddr;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    cdp::{Browser, Page},
    support::{EXCLUSIVE, Launch, http, wait_healthy},
};

/// Serves one blank HTML page for any request: the page a site's scripts run on. Chromium
/// resolves `*.example` to loopback (`cdp`), so `http://evil.example:PORT/` is this server
/// under another site's origin.
async fn page_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let page = "<!doctype html><title>a page</title>";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// What a script on the page gets from `fetch(url, {method})`: the status it can read, or
/// `"blocked"` when the browser withholds the answer (or never sends the request).
async fn fetch(page: &mut Page, method: &str, url: &str) -> Value {
    page.eval(&format!(
        "fetch({url:?}, {{method: {method:?}}}).then(r => r.status, () => 'blocked')"
    ))
    .await
}

/// Stores an event of alice's through the gateway; its id.
async fn alices_event(base: &str, title: &str) -> String {
    let created = http()
        .post(format!("{base}/events"))
        .json(&json!({"userId": "alice", "title": title, "description": "private"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn exists(base: &str, id: &str) -> bool {
    let got = http()
        .get(format!("{base}/events/{id}?userId=alice"))
        .send()
        .await
        .unwrap();
    got.status() == StatusCode::OK
}

#[tokio::test]
async fn another_sites_page_cannot_read_or_delete_through_a_local_gateway() {
    if !testdb::needs(
        "another_sites_page_cannot_read_or_delete_through_a_local_gateway",
        &[testdb::Tool::Chromium],
    ) {
        return;
    }
    let _exclusive = EXCLUSIVE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = Launch::backend(&dir.path().join("events.db")).start().await;
    // The defaults (anonymous mode, no --cors-origins), and one opened to every page.
    let local = Launch::gateway(&[backend.addr]).start().await;
    let open = Launch::gateway(&[backend.addr])
        .flags(&["--cors-origins", "*"])
        .start()
        .await;
    wait_healthy(local.addr, None, 1).await;
    wait_healthy(open.addr, None, 1).await;
    let base = local.url();
    let target = alices_event(&base, "evil's target").await;
    let mine = alices_event(&base, "the local page's").await;
    let site = page_server().await;

    let browser = Browser::launch(dir.path()).await;
    let mut evil = browser.page().await;
    evil.navigate(&format!("http://evil.example:{}/", site.port()))
        .await;
    assert_eq!(
        evil.eval("location.origin").await,
        json!(format!("http://evil.example:{}", site.port()))
    );
    // A page of another site: its requests reach the loopback gateway (the Host check passes),
    // but the browser lets it read nothing and send no DELETE (the preflight is refused).
    let list = format!("{base}/events");
    assert_eq!(fetch(&mut evil, "GET", &list).await, "blocked");
    let delete = format!("{base}/events/{target}?userId=alice");
    assert_eq!(fetch(&mut evil, "DELETE", &delete).await, "blocked");
    assert!(exists(&base, &target).await, "the event is still there");

    // A page served from this machine (a developer's app on localhost) may do both.
    let mut app = browser.page().await;
    app.navigate(&format!("http://localhost:{}/", site.port()))
        .await;
    assert_eq!(fetch(&mut app, "GET", &list).await, 200);
    let delete_mine = format!("{base}/events/{mine}?userId=alice");
    assert_eq!(fetch(&mut app, "DELETE", &delete_mine).await, 204);
    assert!(!exists(&base, &mine).await);

    // `*` given explicitly opens the gateway to every page, with a warning at start.
    assert_eq!(
        fetch(&mut evil, "GET", &format!("{}/events", open.url())).await,
        200
    );
    open.wait_for_log("--cors-origins '*' in anonymous mode")
        .await;
    assert!(
        !local.logs().contains("--cors-origins '*'"),
        "{}",
        local.logs()
    );
}
