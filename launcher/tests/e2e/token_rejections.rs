//! Every way a token is refused, each its own case, against a real gateway and a real backend
//! in token mode: the gateway answers 401 `invalid_token`, and the backend, called directly over
//! gRPC with the same token, answers UNAUTHENTICATED. Each system first accepts a valid token,
//! so no refusal here can pass by refusing everything.

use std::process::Command;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use eventsys::{
    auth::{Audience, Claims, EventsClaim},
    v1,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use reqwest::StatusCode;

use crate::support::{System, http};

const SECRET: &[u8] = b"a secret only these tests know, long enough";

/// How the system under test verifies tokens.
enum Keys {
    /// `--jwt-secret-file`, with `--jwt-issuer us --jwt-audience events`.
    Secret,
    /// `--jwt-public-key` (EC P-256); the pair's private key PEM is kept to sign with.
    PublicKey,
    /// `--jwks` with one HMAC key, kid `k1`.
    Jwks,
}

fn claims() -> Claims {
    Claims {
        sub: "alice".into(),
        exp: get_current_timestamp() + 600,
        nbf: None,
        iss: Some("us".into()),
        aud: Some("events".into()),
        events: EventsClaim::default(),
    }
}

fn hs256(claims: &Claims, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(Into::into);
    encode(&header, claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

struct Under {
    system: System,
    /// The EC private key, for `Keys::PublicKey`.
    private: Vec<u8>,
    public: Vec<u8>,
}

async fn start(keys: Keys) -> Under {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?}");
    };
    let (private_pem, public_pem) = (path("ec.key"), path("ec.pub"));
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &private_pem,
    ]);
    run(&["pkey", "-in", &private_pem, "-pubout", "-out", &public_pem]);
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let jwks = serde_json::json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(SECRET)}]});
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let (secret, jwks) = (path("secret"), path("jwks.json"));
    let flags: Vec<&str> = match keys {
        Keys::Secret => vec![
            "--jwt-secret-file",
            &secret,
            "--jwt-issuer",
            "us",
            "--jwt-audience",
            "events",
        ],
        Keys::PublicKey => vec!["--jwt-public-key", &public_pem],
        Keys::Jwks => vec!["--jwks", &jwks],
    };
    let mut all = vec!["--auth", "jwt", "--public-ops"];
    all.extend(flags);
    let private = std::fs::read(&private_pem).unwrap();
    let public = std::fs::read(&public_pem).unwrap();
    let system = System::start_with(1, &all, None, dir).await;
    Under {
        system,
        private,
        public,
    }
}

impl Under {
    async fn rest_status(&self, token: &str) -> reqwest::Response {
        http()
            .get(self.system.url("/events"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    async fn grpc_code(&self, token: &str) -> tonic::Code {
        let mut client = self.system.backends[0].client().await;
        let mut request = tonic::Request::new(v1::ListEventsRequest::default());
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
        match client.list_events(request).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    }

    /// A valid token passes both the gateway and the backend.
    async fn accepts(&self, token: &str) {
        assert_eq!(self.rest_status(token).await.status(), StatusCode::OK);
        assert_eq!(self.grpc_code(token).await, tonic::Code::Ok);
    }

    /// The gateway answers 401 `invalid_token`, the backend UNAUTHENTICATED.
    async fn refuses(&self, token: &str) {
        let response = self.rest_status(token).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(challenge, r#"Bearer realm="events", error="invalid_token""#);
        assert_eq!(self.grpc_code(token).await, tonic::Code::Unauthenticated);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let under = start(Keys::Secret).await;
    under.accepts(&hs256(&claims(), None)).await;
    let mut expired = claims();
    expired.exp = get_current_timestamp() - 120;
    under.refuses(&hs256(&expired, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_not_yet_valid_is_refused() {
    let under = start(Keys::Secret).await;
    under.accepts(&hs256(&claims(), None)).await;
    let mut early = claims();
    early.nbf = Some(get_current_timestamp() + 300);
    under.refuses(&hs256(&early, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_is_refused() {
    let under = start(Keys::Secret).await;
    let forged = encode(
        &Header::default(),
        &claims(),
        &EncodingKey::from_secret(b"not it"),
    )
    .unwrap();
    under.accepts(&hs256(&claims(), None)).await;
    under.refuses(&forged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_issuer_is_refused() {
    let under = start(Keys::Secret).await;
    under.accepts(&hs256(&claims(), None)).await;
    let mut other = claims();
    other.iss = Some("someone else".into());
    under.refuses(&hs256(&other, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_audience_is_refused() {
    let under = start(Keys::Secret).await;
    under.accepts(&hs256(&claims(), None)).await;
    let mut other = claims();
    other.aud = Some("another service".into());
    under.refuses(&hs256(&other, None)).await;
}

/// `--jwt-issuer` and `--jwt-audience`, when set, are required: a token without the claim is
/// refused (the library alone checks them only when present). An `aud` list holding ours passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_issuer_or_audience_is_required_and_an_audience_list_holds_ours() {
    let under = start(Keys::Secret).await;
    under.accepts(&hs256(&claims(), None)).await;
    let mut no_issuer = claims();
    no_issuer.iss = None;
    under.refuses(&hs256(&no_issuer, None)).await;
    let mut no_audience = claims();
    no_audience.aud = None;
    under.refuses(&hs256(&no_audience, None)).await;
    let mut listed = claims();
    listed.aud = Some(Audience::Many(vec!["billing".into(), "events".into()]));
    under.accepts(&hs256(&listed, None)).await;
    listed.aud = Some(Audience::Many(vec!["billing".into()]));
    under.refuses(&hs256(&listed, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_is_refused() {
    let under = start(Keys::Secret).await;
    under.accepts(&hs256(&claims(), None)).await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
    under.refuses(&format!("{header}.{body}.")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hs_token_signed_with_the_public_key_is_refused() {
    let under = start(Keys::PublicKey).await;
    let es256 = encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &EncodingKey::from_ec_pem(&under.private).unwrap(),
    )
    .unwrap();
    under.accepts(&es256).await;
    // The public key is public: an HMAC over it must not pass for a signature.
    let confused = encode(
        &Header::default(),
        &claims(),
        &EncodingKey::from_secret(&under.public),
    )
    .unwrap();
    under.refuses(&confused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_is_refused() {
    let under = start(Keys::Jwks).await;
    under.accepts(&hs256(&claims(), Some("k1"))).await;
    under.refuses(&hs256(&claims(), Some("k9"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_refused() {
    let under = start(Keys::Secret).await;
    under.accepts(&hs256(&claims(), None)).await;
    under.refuses("garbage").await;
    under.refuses("a.b.c").await;
}

/// A directory served over HTTP by Python's `http.server` on an ephemeral loopback port: its
/// URL, and its request log (one line per GET).
async fn serve_dir(
    dir: &std::path::Path,
) -> (
    tokio::process::Child,
    String,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new("python3")
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 http.server");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(10), stdout.next_line())
        .await
        .expect("http.server starts")
        .unwrap()
        .unwrap();
    // "Serving HTTP on 127.0.0.1 port 43211 (http://127.0.0.1:43211/) ..."
    let url = line
        .split_once("(http://")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(url, _)| format!("http://{url}"))
        .unwrap_or_else(|| panic!("unexpected http.server line: {line}"));
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = requests.clone();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            if line.contains("\"GET ") {
                log.lock().unwrap().push(line);
            }
        }
    });
    (child, url, requests)
}

fn jwks(kids: &[&str]) -> String {
    let keys: Vec<_> = kids
        .iter()
        .map(|kid| serde_json::json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(SECRET)}))
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_refreshed_but_never_fetched_per_unknown_kid() {
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("jwks.json"), jwks(&["k1"])).unwrap();
    let (_server, base, requests) = serve_dir(served.path()).await;
    let url = format!("{base}jwks.json");
    let flags = [
        "--auth",
        "jwt",
        "--public-ops",
        "--jwks",
        &url,
        "--jwks-refresh",
        "1s",
    ];
    let system = System::start_with(1, &flags, None, tempfile::tempdir().unwrap()).await;
    let status = |token: String| {
        let url = system.url("/events");
        async move {
            http()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(hs256(&claims(), Some("k1"))).await, StatusCode::OK);
    assert_eq!(
        status(hs256(&claims(), Some("k2"))).await,
        StatusCode::UNAUTHORIZED
    );

    // A key added at the provider is picked up by the refresh.
    let fresh = served.path().join("jwks.json.new");
    std::fs::write(&fresh, jwks(&["k1", "k2"])).unwrap();
    std::fs::rename(&fresh, served.path().join("jwks.json")).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while status(hs256(&claims(), Some("k2"))).await != StatusCode::OK {
        assert!(tokio::time::Instant::now() < deadline, "k2 never accepted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // 100 made-up kids: all refused, and the JWKS is not fetched once per token.
    let before = requests.lock().unwrap().len();
    let started = tokio::time::Instant::now();
    for i in 0..100 {
        let kid = format!("made-up-{i}");
        assert_eq!(
            status(hs256(&claims(), Some(&kid))).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let elapsed = started.elapsed();
    let fetched = requests.lock().unwrap().len() - before;
    // Gateway and backend refresh every second, and an unknown kid may bring that forward at
    // most once per second each: a bound in seconds, not in tokens.
    let bound = 2 * (2 * elapsed.as_secs() as usize + 2);
    assert!(
        fetched <= bound,
        "{fetched} fetches in {elapsed:?} for 100 unknown kids"
    );
}

/// A JWKS URL's keys decide who is anyone: the fetch follows no redirect (a server could send
/// it to a plain http URL, or anywhere), so a gateway whose JWKS answers 301 does not start,
/// saying why; and an http URL off this machine is refused before any fetch.
#[tokio::test]
async fn a_jwks_fetch_follows_no_redirect_and_needs_https_off_this_machine() {
    use std::time::Duration;

    use crate::support::{Launch, Server};
    let served = tempfile::tempdir().unwrap();
    // http.server answers `/keys` with a 301 to `/keys/`, whose index is a good JWKS.
    std::fs::create_dir(served.path().join("keys")).unwrap();
    std::fs::write(served.path().join("keys/index.html"), jwks(&["k1"])).unwrap();
    let (_server, base, requests) = serve_dir(served.path()).await;
    let start = |jwks: String| {
        let flags = [
            "--auth",
            "jwt",
            "--backends",
            "127.0.0.1:9",
            "--jwks",
            &jwks,
        ];
        Launch::server(Server::Gateway)
            .flags(&flags)
            .unprobed()
            .start()
    };
    let mut redirected = start(format!("{base}keys")).await;
    let exit = redirected.exit_within(Duration::from_secs(20)).await;
    assert!(!exit.success(), "started on a redirected JWKS");
    assert!(
        redirected.logs().contains("HTTP 301"),
        "{}",
        redirected.logs()
    );
    let asked: Vec<String> = requests.lock().unwrap().clone();
    assert!(
        asked.iter().all(|r| !r.contains("/keys/ ")),
        "followed: {asked:?}"
    );

    let mut plain = start("http://192.0.2.1/jwks.json".into()).await;
    let exit = plain.exit_within(Duration::from_secs(20)).await;
    assert!(
        !exit.success(),
        "started on a plain http JWKS off this machine"
    );
    assert!(
        plain.logs().contains("--jwks must be an https URL"),
        "{}",
        plain.logs()
    );
}
