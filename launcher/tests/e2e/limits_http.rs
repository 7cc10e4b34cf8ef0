//! What a hostile client can hold of the gateway at the connection level, against the real
//! gateway (a process where its log, its open-file limit or every connection it holds counts): a request head sent slowly, a body that never comes, more connections than the
//! cap or than the open-file limit would allow, foreign `Host` names, cross-origin writes that
//! skip the CORS preflight, undecodable paths and unknown methods.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::support::{EXCLUSIVE, Launch, Local, Scrape, Server, http, metric, raw_http};

/// Whether the server closes `socket` within `wait` (a read sees EOF or a reset).
async fn closed_within(socket: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The status code and JSON body of a raw HTTP/1.1 answer.
fn parse(answer: &str) -> (u16, Value) {
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    (status, body)
}

/// Where no backend listens: these checks happen before any backend is asked.
const NOWHERE: &str = "127.0.0.1:9";

/// A gateway with nothing behind it, in this process.
async fn gateway(extra: &[&str]) -> Local {
    let nowhere: SocketAddr = NOWHERE.parse().unwrap();
    Local::gateway(&[nowhere], extra).await
}

#[tokio::test]
async fn slow_heads_idle_connections_and_endless_bodies_are_cut_off() {
    let _exclusive = EXCLUSIVE.lock().await;
    let gateway = gateway(&["--header-timeout", "1s", "--request-timeout", "2s"]).await;
    let addr = gateway.addr;

    // Half a request head, then nothing: closed at the header timeout, not minutes later.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET /load HTTP/1.1\r\nHost: 127.0")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "half-sent head held open"
    );

    // A connection that never sends anything holds no more than that.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "idle connection held open"
    );

    // 10 GiB declared, 2 bytes sent: refused before anything of it is read. A gateway that
    // waited for the body would answer 504 at the request deadline instead.
    let answer = raw_http(
        addr,
        b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n{}",
        Duration::from_secs(5),
    )
    .await;
    let (status, body) = parse(&answer);
    assert_eq!(status, 413, "{answer}");
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED", "{answer}");

    // A body that stops coming: answered at the request deadline, not held for ever.
    let answer = raw_http(
        addr,
        b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"",
        Duration::from_secs(6),
    )
    .await;
    let (status, body) = parse(&answer);
    assert_eq!(status, 504, "{answer}");
    assert_eq!(body["code"], "DEADLINE_EXCEEDED", "{answer}");
}

/// Request heads are bounded (8 KiB, which keeps each connection's read buffer at 8 KiB): a
/// large cookie passes; headers over the bound are refused with 431, a request line over it
/// (a 10 KB id or topic in the path) with 414, on a fresh connection or a kept-alive one, both
/// with the JSON error; and the gateway serves on.
#[tokio::test]
async fn request_heads_over_8_kib_get_431_and_request_lines_414() {
    let gateway = gateway(&[]).await;
    let head = |path: &str, cookie: usize| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nCookie: c={}\r\nConnection: close\r\n\r\n",
            "x".repeat(cookie)
        )
    };
    let wait = Duration::from_secs(5);
    let refused = |answer: &str, status: u16| {
        let (got, body) = parse(answer);
        assert_eq!(got, status, "{answer:.300}");
        assert_eq!(body["code"], "RESOURCE_EXHAUSTED", "{answer:.300}");
        assert!(
            body["message"].as_str().unwrap().contains("8 KiB"),
            "{answer:.300}"
        );
        assert!(!answer.contains("xxxxxxxx"), "the input is not echoed");
    };
    let fits = raw_http(gateway.addr, head("/metrics", 6 * 1024).as_bytes(), wait).await;
    assert!(fits.starts_with("HTTP/1.1 200"), "{fits:.200}");
    let over = raw_http(gateway.addr, head("/metrics", 9 * 1024).as_bytes(), wait).await;
    refused(&over, 431);
    let path = format!("/events/{}", "x".repeat(10_000));
    let long = raw_http(gateway.addr, head(&path, 0).as_bytes(), wait).await;
    refused(&long, 414);
    let path = format!("/subscribe/{}", "x".repeat(10_000));
    let long = raw_http(gateway.addr, head(&path, 0).as_bytes(), wait).await;
    refused(&long, 414);
    // The same on a connection that has had an answer already.
    {
        use tokio::io::AsyncWriteExt;
        let mut socket = TcpStream::connect(gateway.addr).await.unwrap();
        let first = b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
        socket.write_all(first).await.unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(socket.read(&mut byte).await.unwrap(), 1, "the HEAD answer");
            answer.push(byte[0]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
        let long = head(&format!("/events/{}", "x".repeat(10_000)), 0);
        socket.write_all(long.as_bytes()).await.unwrap();
        let mut second = Vec::new();
        tokio::time::timeout(wait, socket.read_to_end(&mut second))
            .await
            .expect("the answer and the close")
            .unwrap();
        refused(&String::from_utf8_lossy(&second), 414);
    }
    let after = raw_http(gateway.addr, head("/metrics", 10).as_bytes(), wait).await;
    assert!(after.starts_with("HTTP/1.1 200"), "{after:.200}");
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_and_logged() {
    // A process: its log is part of what is checked, and the cap counts every connection.
    let _exclusive = EXCLUSIVE.lock().await;
    let gateway = Launch::server(Server::Gateway)
        .flags(&[
            "--backends",
            NOWHERE,
            "--max-connections",
            "20",
            "--header-timeout",
            "30s",
        ])
        .start()
        .await;
    // 30 connections for 20 places: the ten over the cap are accepted by the kernel, then
    // closed by the gateway at once (one place may still be taken by the harness's readiness
    // probe as it closes).
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(TcpStream::connect(gateway.addr).await.unwrap());
    }
    // Each connection is given the same 300 ms to be closed, all at once.
    let closed = futures::future::join_all(
        held.iter_mut()
            .map(|socket| closed_within(socket, Duration::from_millis(300))),
    )
    .await;
    let refused = closed.into_iter().filter(|closed| *closed).count();
    assert!(
        (9..=11).contains(&refused),
        "{refused} of 30 refused with 20 places"
    );
    gateway.wait_for_log("connection limit reached").await;
    // Capacity comes back as connections close: `/metrics` answers again, and counted one
    // refusal episode.
    drop(held);
    let text = Scrape::gateway(gateway.addr)
        .until("capacity back", Duration::from_secs(10), |text| {
            !text.is_empty()
        })
        .await;
    assert!(
        text.contains("gateway_connections_refused_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn two_thousand_idle_connections_under_a_1024_file_limit_do_not_stop_the_gateway() {
    let _exclusive = EXCLUSIVE.lock().await;
    eventsys::process::raise_open_file_limit();
    let gateway = Launch::server(Server::Gateway)
        .file_limit(1024)
        .flags(&["--backends", NOWHERE, "--header-timeout", "60s"])
        .start()
        .await;
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(gateway.addr).await.expect("connect"));
    }
    let response = http()
        .get(format!("{}/metrics", gateway.url()))
        .send()
        .await
        .expect("a normal request still answers");
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let open = text
        .lines()
        .find_map(|l| l.strip_prefix("gateway_connections_open "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(open > 2000, "{open} connections open");
    gateway.wait_for_log("open-file limit raised").await;
}

#[tokio::test]
async fn foreign_hosts_and_preflight_skipping_writes_are_refused() {
    let gateway = gateway(&["--cors-origins", "https://app.example"]).await;
    let addr = gateway.addr;

    // DNS rebinding: a page on evil.example resolving to 127.0.0.1.
    let answer = raw_http(
        addr,
        b"GET /events HTTP/1.1\r\nHost: evil.example:3000\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (status, body) = parse(&answer);
    assert_eq!(status, 421, "{answer}");
    assert!(body["message"].is_string(), "{answer}");
    // Loopback names and the address itself pass the host check (and fail later: no backend).
    for host in ["localhost:3000", "127.0.0.1", "[::1]:80"] {
        let request = format!("GET /nope HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, _) = parse(&raw_http(addr, request.as_bytes(), Duration::from_secs(5)).await);
        assert_eq!(status, 404, "{host}");
    }

    // A page may send text/plain anywhere without a preflight: not a write here.
    let client = http();
    let response = client
        .post(format!("{}/publish", gateway.url()))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(r#"{"topic":"t","title":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], body["message"]);

    // Only the listed origin is told it may call.
    for (origin, allowed) in [
        ("https://app.example", true),
        ("https://evil.example", false),
    ] {
        let response = client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/events", gateway.url()),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        let granted = response.headers().get("access-control-allow-origin");
        assert_eq!(
            granted.is_some(),
            allowed,
            "{origin}: {:?}",
            response.headers()
        );
    }
}

#[tokio::test]
async fn undecodable_paths_and_unknown_methods_get_the_json_error_and_are_counted() {
    let gateway = gateway(&[]).await;
    let answer = raw_http(
        gateway.addr,
        b"GET /subscribe/%FF%FE HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (status, body) = parse(&answer);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(body["code"], "INVALID_ARGUMENT", "{answer}");

    let response = http()
        .patch(format!("{}/publish", gateway.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let series = r#"gateway_http_requests_total{method="PATCH",route="unmatched",status="405"}"#;
    assert_eq!(metric(gateway.addr, series).await, 1);
}

#[tokio::test]
async fn access_lines_nobody_reads_never_stall_the_gateway() {
    // Every request writes an access line; stderr is a pipe nobody reads (a supervisor that
    // stopped), which fills after some hundred lines. Requests must go on being answered:
    // lines beyond the writer's queue are dropped, never waited for.
    let gateway = Launch::server(Server::Gateway)
        .unread_logs()
        .flags(&["--backends", NOWHERE, "--access-log"])
        .start()
        .await;
    let client = http();
    let url = format!("{}/metrics", gateway.url());
    let answered = tokio::time::timeout(Duration::from_secs(120), async {
        for _ in 0..3000 {
            let response = client.get(&url).send().await.expect("answered");
            assert_eq!(response.status(), 200);
        }
    })
    .await;
    assert!(answered.is_ok(), "the gateway stalled on its own log");
}
