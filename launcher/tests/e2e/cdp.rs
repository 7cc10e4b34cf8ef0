//! A real browser for page tests: Debian's headless Chromium driven over the DevTools protocol
//! (one WebSocket per page), recording what the page logs as errors and every URL it requests.

use std::{path::Path, process::Stdio, time::Duration};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

const CHROMIUM: &str = "chromium";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium with its own empty profile, killed when dropped.
pub(crate) struct Browser {
    _child: Child,
    port: u16,
}

impl Browser {
    /// Starts Chromium with the flags that keep it off the network by itself (no background
    /// updates, sync or QUIC probes), and waits for its DevTools endpoint.
    pub(crate) async fn launch(dir: &Path) -> Browser {
        let profile = dir.join("chromium-profile");
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1280,1600",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                // Other sites' pages for the cross-origin tests, served from loopback; nothing
                // under .example leaves the machine.
                "--host-resolver-rules=MAP *.example 127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM} (.ci/run installs it): {e}"));
        // Its readiness signal: "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…".
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                    return rest.split('/').next().unwrap().parse::<u16>().unwrap();
                }
            }
            panic!("chromium exited before its DevTools endpoint was up");
        })
        .await
        .expect("chromium's DevTools endpoint within 30 s");
        // Drain the rest of stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Browser {
            _child: child,
            port,
        }
    }

    /// A new tab, with console, log and network events on.
    pub(crate) async fn page(&self) -> Page {
        let target: Value = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .put(format!(
                "http://127.0.0.1:{}/json/new?about:blank",
                self.port
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = target["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut page = Page {
            socket,
            next_id: 0,
            report: Report::default(),
        };
        for domain in [
            "Page.enable",
            "Runtime.enable",
            "Log.enable",
            "Network.enable",
        ] {
            page.call(domain, json!({})).await;
        }
        page
    }
}

/// What a page did: its errors (console, uncaught exceptions, browser log) and the URLs it
/// requested, in order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Report {
    pub(crate) errors: Vec<String>,
    pub(crate) requests: Vec<String>,
}

impl Report {
    /// No console error, and no request outside `base` (the gateway) but `data:` URLs.
    pub(crate) fn assert_clean(&self, base: &str) {
        assert!(self.errors.is_empty(), "console errors: {:?}", self.errors);
        let outside: Vec<_> = self
            .requests
            .iter()
            .filter(|url| !url.starts_with(base) && !url.starts_with("data:"))
            .collect();
        assert!(
            outside.is_empty(),
            "requests outside the gateway: {outside:?}"
        );
    }
}

pub(crate) struct Page {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    report: Report,
}

impl Page {
    /// Sends one command and reads until its answer, recording the events that come first.
    pub(crate) async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        tokio::time::timeout(CALL_TIMEOUT, async {
            loop {
                let message = self.next_message().await;
                if message["id"] == id {
                    if let Some(error) = message.get("error") {
                        panic!("{method}: {error}");
                    }
                    return message["result"].clone();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within {CALL_TIMEOUT:?}"))
    }

    async fn next_message(&mut self) -> Value {
        loop {
            let frame = self
                .socket
                .next()
                .await
                .expect("DevTools connection open")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let message: Value = serde_json::from_str(&text).unwrap();
            self.record(&message);
            return message;
        }
    }

    fn record(&mut self, message: &Value) {
        let params = &message["params"];
        match message["method"].as_str() {
            Some("Network.requestWillBeSent") => {
                if let Some(url) = params["request"]["url"].as_str() {
                    self.report.requests.push(url.to_owned());
                }
            }
            Some("Runtime.consoleAPICalled")
                if matches!(params["type"].as_str(), Some("error" | "assert")) =>
            {
                self.report.errors.push(params["args"].to_string());
            }
            Some("Runtime.exceptionThrown") => {
                self.report
                    .errors
                    .push(params["exceptionDetails"].to_string());
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                self.report.errors.push(params["entry"].to_string());
            }
            _ => {}
        }
    }

    /// Loads `url` and waits for its `load` event.
    pub(crate) async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        tokio::time::timeout(CALL_TIMEOUT, async {
            while self.next_message().await["method"] != "Page.loadEventFired" {}
        })
        .await
        .expect("the page loads");
    }

    /// The value of a JavaScript expression.
    pub(crate) async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(thrown) = result.get("exceptionDetails") {
            panic!("{expression}: {thrown}");
        }
        result["result"]["value"].clone()
    }

    /// Waits, inside the page (a promise re-checking every 20 ms), until
    /// `expression` satisfies `done`; its value then.
    pub(crate) async fn wait_for(
        &mut self,
        expression: &str,
        done: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Resolves with the value it started from and the next one it changes to (or the
            // same after a second), so each round trip reports progress instead of spinning,
            // and a value that already holds (or held only briefly) is not missed.
            let values = self
                .eval(&format!(
                    "new Promise(done => {{ const first = ({expression}); const started = Date.now(); \
                     const check = () => {{ const now = ({expression}); \
                     if (now !== first || Date.now() - started > 1000) done([first, now]); \
                     else setTimeout(check, 20); }}; check(); }})"
                ))
                .await;
            let [first, value] = [values[0].clone(), values[1].clone()];
            if done(&first) {
                return first;
            }
            if done(&value) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{expression} is still {value} after {within:?}"
            );
        }
    }

    /// Saves a PNG of the whole page.
    pub(crate) async fn screenshot(&mut self, file: &Path) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(file, png).unwrap();
    }

    pub(crate) fn report(&self) -> Report {
        self.report.clone()
    }
}
