//! The auth configuration both servers and `eventsys up` take: the mode, where the key comes
//! from, issuer/audience, and the public exceptions. Anonymous mode refuses a non-loopback
//! listener unless told otherwise (Redis's protected mode). The HMAC secret is read from
//! `JWT_SECRET` or a file, never from the command line, which anyone on the host can read.

use std::{net::SocketAddr, path::PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};

use super::{
    jwks::RemoteJwks,
    keys::{JWKS_REFRESH_FLOOR, Keys, Verifier},
    policy::{Auth, Claims},
};

/// Whether requests need a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Anyone may act as any user (the old clients' mode; loopback only by default).
    None,
    /// Every API call needs a valid JWT.
    Jwt,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// `none`: any caller acts as any user (loopback listeners only, unless
    /// --allow-anonymous); `jwt`: every API call needs a valid token.
    #[arg(long = "auth", env = "EVENTS_AUTH", value_enum, default_value = "none")]
    pub mode: Mode,

    /// Allow anonymous mode on a non-loopback address.
    #[arg(long, env = "EVENTS_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// File holding the HMAC secret (HS256/384/512); or set JWT_SECRET.
    #[arg(long, env = "JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key (RSA, EC P-256/P-384 or Ed25519) that tokens are signed for.
    #[arg(long, env = "JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// JWKS document, a file or an https URL (http only to a loopback address, such as a
    /// sidecar; redirects are not followed); tokens name their key with `kid`.
    #[arg(long, env = "JWT_JWKS")]
    pub jwks: Option<String>,

    /// How often a JWKS is fetched again (also, at most every 30 s, on an unknown `kid`).
    #[arg(long, env = "JWT_JWKS_REFRESH", default_value = "5m", value_parser = humantime::parse_duration)]
    pub jwks_refresh: std::time::Duration,

    /// Required `iss`, when set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud`, when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Topic patterns readable without a token (history and SSE), comma-separated.
    #[arg(long, env = "EVENTS_PUBLIC_TOPICS", value_delimiter = ',')]
    pub public_topics: Vec<String>,

    /// Operational endpoints (/load, /benchmark, /memstats, /metrics) without an admin token.
    #[arg(long, env = "EVENTS_PUBLIC_OPS")]
    pub public_ops: bool,

    /// gRPC server reflection (what grpcurl lists and describes without .proto files), `on` or
    /// `off`. Default: on in anonymous mode, off in token mode, where it would describe the
    /// API to callers without a token.
    #[arg(long, env = "GRPC_REFLECTION", value_name = "on|off",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub reflection: Option<bool>,
}

/// The environment variable the HMAC secret may come from.
pub const SECRET_ENV: &str = "JWT_SECRET";

/// Shortest HMAC secret accepted.
const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "refusing anonymous mode on {0}: any caller could act as any user; use --auth jwt, a \
         loopback address, or --allow-anonymous"
    )]
    Exposed(SocketAddr),
    #[error("--auth jwt needs a key: JWT_SECRET, --jwt-secret-file, --jwt-public-key or --jwks")]
    NoKey,
    #[error(
        "give one key source, not several (JWT_SECRET/--jwt-secret-file, --jwt-public-key, --jwks)"
    )]
    SeveralKeys,
    #[error("invalid key: {0}")]
    Key(String),
}

impl AuthArgs {
    /// The HMAC secret, if one is configured (file first, then `JWT_SECRET`).
    pub fn secret(&self) -> Result<Option<Vec<u8>>, AuthError> {
        let secret = if let Some(path) = &self.jwt_secret_file {
            let secret = std::fs::read(path)
                .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
            Some(secret.trim_ascii().to_vec()).filter(|s| !s.is_empty())
        } else {
            std::env::var(SECRET_ENV)
                .ok()
                .filter(|s| !s.is_empty())
                .map(String::into_bytes)
        };
        // RFC 7518 3.2: an HMAC key at least as long as the hash (HS256: 32 bytes). A short one
        // (a placeholder left in a manifest) could be guessed: refuse it, saying only its length.
        match secret {
            Some(short) if short.len() < MIN_SECRET_BYTES => Err(AuthError::Key(format!(
                "the HMAC secret has {} bytes; it needs at least {MIN_SECRET_BYTES} (e.g. `openssl rand -base64 48`)",
                short.len()
            ))),
            secret => Ok(secret),
        }
    }

    /// Checks the configuration without touching the network: protected mode, and that one
    /// key source is given and (for files) readable. For supervisors that start the servers.
    pub fn check(&self, listeners: &[SocketAddr]) -> Result<(), AuthError> {
        self.exposure(listeners)?;
        if let Some(url) = self.jwks.as_deref().filter(|j| is_url(j)) {
            fetched_safely(url)?;
        }
        if self.mode == Mode::Jwt && !self.jwks.as_deref().is_some_and(is_url) {
            self.keys_from_files()?;
        }
        Ok(())
    }

    fn exposure(&self, listeners: &[SocketAddr]) -> Result<(), AuthError> {
        match listeners.iter().find(|a| !a.ip().is_loopback()) {
            Some(exposed) if self.mode == Mode::None && !self.allow_anonymous => {
                Err(AuthError::Exposed(*exposed))
            }
            _ => Ok(()),
        }
    }

    /// The policy for servers listening on `listeners`. A JWKS URL is fetched now (start-up
    /// fails if it cannot be) and refreshed in the background, so this runs inside a tokio
    /// runtime.
    pub async fn build(&self, listeners: &[SocketAddr]) -> Result<Auth, AuthError> {
        self.exposure(listeners)?;
        let public_topics = self.public_topics.clone();
        match self.mode {
            Mode::None => {
                tracing::warn!(
                    "anonymous mode (--auth none): any caller can act as any user and use any topic"
                );
                Ok(Auth::anonymous())
            }
            Mode::Jwt => {
                let keys = match self.jwks.as_deref().filter(|j| is_url(j)) {
                    Some(url) => {
                        fetched_safely(url)?;
                        let every = self.jwks_refresh;
                        let remote = RemoteJwks::start(url.to_owned(), every, JWKS_REFRESH_FLOOR);
                        Keys::Remote(remote.await.map_err(AuthError::Key)?)
                    }
                    None => self.keys_from_files()?,
                };
                Ok(Auth {
                    verifier: Some(Verifier::new(
                        keys,
                        self.jwt_issuer.clone(),
                        self.jwt_audience.clone(),
                    )),
                    public_topics,
                    public_ops: self.public_ops,
                })
            }
        }
    }

    fn keys_from_files(&self) -> Result<Keys, AuthError> {
        let secret = self.secret()?;
        let sources = usize::from(secret.is_some())
            + usize::from(self.jwt_public_key.is_some())
            + usize::from(self.jwks.is_some());
        if sources > 1 {
            return Err(AuthError::SeveralKeys);
        }
        if let Some(secret) = secret {
            return Ok(Keys::Fixed(DecodingKey::from_secret(&secret)));
        }
        if let Some(path) = &self.jwt_public_key {
            let pem = std::fs::read(path)
                .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .or_else(|_| DecodingKey::from_ed_pem(&pem))
                .map_err(|_| {
                    AuthError::Key(format!(
                        "{}: not an RSA, EC or Ed25519 public key in PEM",
                        path.display()
                    ))
                })?;
            return Ok(Keys::Fixed(key));
        }
        if let Some(path) = &self.jwks {
            return Keys::jwks(PathBuf::from(path)).map_err(AuthError::Key);
        }
        Err(AuthError::NoKey)
    }

    /// Whether gRPC server reflection is served: as asked, else only in anonymous mode.
    pub fn reflection(&self) -> bool {
        self.reflection.unwrap_or(self.mode == Mode::None)
    }

    /// The variables that make a child process configure itself as this does (the secret
    /// itself is inherited through `JWT_SECRET`, never written to a command line).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![(
            "EVENTS_AUTH",
            match self.mode {
                Mode::None => "none",
                Mode::Jwt => "jwt",
            }
            .to_owned(),
        )];
        let path = |p: &PathBuf| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string()
        };
        if self.allow_anonymous {
            env.push(("EVENTS_ALLOW_ANONYMOUS", "true".into()));
        }
        if self.public_ops {
            env.push(("EVENTS_PUBLIC_OPS", "true".into()));
        }
        if let Some(reflection) = self.reflection {
            env.push((
                "GRPC_REFLECTION",
                if reflection { "on" } else { "off" }.into(),
            ));
        }
        for (name, file) in [
            ("JWT_SECRET_FILE", &self.jwt_secret_file),
            ("JWT_PUBLIC_KEY", &self.jwt_public_key),
        ] {
            if let Some(file) = file {
                env.push((name, path(file)));
            }
        }
        match self.jwks.as_deref() {
            Some(url) if is_url(url) => env.push(("JWT_JWKS", url.to_owned())),
            Some(file) => env.push(("JWT_JWKS", path(&PathBuf::from(file)))),
            None => {}
        }
        env.push((
            "JWT_JWKS_REFRESH",
            humantime::format_duration(self.jwks_refresh).to_string(),
        ));
        for (name, value) in [
            ("JWT_ISSUER", &self.jwt_issuer),
            ("JWT_AUDIENCE", &self.jwt_audience),
        ] {
            if let Some(value) = value {
                env.push((name, value.clone()));
            }
        }
        if !self.public_topics.is_empty() {
            env.push(("EVENTS_PUBLIC_TOPICS", self.public_topics.join(",")));
        }
        env
    }
}

fn is_url(jwks: &str) -> bool {
    jwks.starts_with("http://") || jwks.starts_with("https://")
}

/// A JWKS URL the keys can be trusted from: https, or http to this machine (a sidecar). Over
/// plain http elsewhere anyone on the path could hand the servers keys of their own.
fn fetched_safely(url: &str) -> Result<(), AuthError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Ok(());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if crate::host::is_loopback(authority) && !authority.contains('@') {
        Ok(())
    } else {
        Err(AuthError::Key(
            "--jwks must be an https URL (or http to a loopback address, or a file): keys \
             fetched over plain http could be anyone's"
                .into(),
        ))
    }
}

/// Signs `claims` with a PEM private key: EC P-256 (ES256), RSA (RS256) or Ed25519 (EdDSA),
/// for `eventsys token` and tests.
pub fn sign_with_private_key(pem: &[u8], claims: &Claims) -> Result<String, AuthError> {
    let (algorithm, key) = if let Ok(key) = EncodingKey::from_ec_pem(pem) {
        (Algorithm::ES256, key)
    } else if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
        (Algorithm::RS256, key)
    } else if let Ok(key) = EncodingKey::from_ed_pem(pem) {
        (Algorithm::EdDSA, key)
    } else {
        return Err(AuthError::Key(
            "not an EC P-256, RSA or Ed25519 private key in PEM".into(),
        ));
    };
    encode(&Header::new(algorithm), claims, &key).map_err(|e| AuthError::Key(e.to_string()))
}

/// Mints the tokens a gateway presents for its own calls (presence reports) where the
/// deployment's tokens are HS256 and the gateway holds the secret: short-lived admin tokens.
/// The secret stays in memory; tokens never reach a log.
#[derive(Clone)]
pub struct ServiceSigner {
    secret: Vec<u8>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for ServiceSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceSigner(..)")
    }
}

impl ServiceSigner {
    /// An admin token of `subject` valid for `ttl`, and when it expires (seconds since the
    /// epoch).
    pub fn token(
        &self,
        subject: &str,
        ttl: std::time::Duration,
    ) -> Result<(String, u64), AuthError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let exp = now + ttl.as_secs();
        let claims = Claims {
            sub: subject.to_owned(),
            exp,
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Into::into),
            events: crate::auth::EventsClaim {
                admin: true,
                ..Default::default()
            },
        };
        Ok((sign_hs256(&self.secret, &claims)?, exp))
    }
}

impl AuthArgs {
    /// A signer for a gateway's own tokens: in token mode with an HMAC secret (the only keys a
    /// gateway can sign with; with public keys or a JWKS it is given a token instead).
    pub fn service_signer(&self) -> Result<Option<ServiceSigner>, AuthError> {
        if self.mode != Mode::Jwt {
            return Ok(None);
        }
        Ok(self.secret()?.map(|secret| ServiceSigner {
            secret,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
        }))
    }
}

/// Signs `claims` with an HMAC secret (HS256), for `eventsys token` and tests.
pub fn sign_hs256(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Key(e.to_string()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use jsonwebtoken::get_current_timestamp;

    use super::*;
    use crate::auth::{
        EventsClaim,
        testkeys::{EC_P256, pair},
    };

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        auth: AuthArgs,
    }

    fn args(flags: &[&str]) -> AuthArgs {
        Cli::try_parse_from(std::iter::once("test").chain(flags.iter().copied()))
            .unwrap()
            .auth
    }

    fn loopback() -> Vec<SocketAddr> {
        vec!["127.0.0.1:1".parse().unwrap()]
    }

    #[test]
    fn a_short_hmac_secret_is_refused_without_being_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "CHANGE-ME\n").unwrap();
        let flags = ["--auth", "jwt", "--jwt-secret-file", file.to_str().unwrap()];
        let err = args(&flags).secret().unwrap_err().to_string();
        assert!(
            err.contains("9 bytes") && err.contains("at least 32"),
            "{err}"
        );
        assert!(!err.contains("CHANGE-ME"), "{err}");
        std::fs::write(&file, "x".repeat(32)).unwrap();
        assert_eq!(args(&flags).secret().unwrap().map(|s| s.len()), Some(32));
    }

    #[tokio::test]
    async fn every_public_key_kind_verifies_its_own_signatures_only() {
        let dir = tempfile::tempdir().unwrap();
        let kinds = [
            pair(
                dir.path(),
                "rsa",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            ),
            pair(dir.path(), "ec", EC_P256),
            pair(dir.path(), "ed", &["-algorithm", "ED25519"]),
        ];
        let claims = Claims {
            sub: "alice".into(),
            exp: get_current_timestamp() + 60,
            nbf: None,
            iss: None,
            aud: None,
            events: EventsClaim::default(),
        };
        let tokens: Vec<String> = kinds
            .iter()
            .map(|(private, _)| sign_with_private_key(private, &claims).unwrap())
            .collect();
        for (i, (_, public)) in kinds.iter().enumerate() {
            let auth = args(&["--auth", "jwt", "--jwt-public-key", public])
                .build(&loopback())
                .await
                .unwrap();
            for (j, token) in tokens.iter().enumerate() {
                assert_eq!(
                    auth.caller(Some(token)).is_ok(),
                    i == j,
                    "key {i}, token {j}"
                );
            }
        }
    }

    #[tokio::test]
    async fn configuration_errors_are_one_line_reasons() {
        let exposed: Vec<SocketAddr> = vec!["0.0.0.0:1".parse().unwrap()];
        let err = args(&[]).build(&exposed).await.unwrap_err().to_string();
        assert!(
            err.starts_with("refusing anonymous mode on 0.0.0.0:1"),
            "{err}"
        );
        assert!(args(&["--allow-anonymous"]).build(&exposed).await.is_ok());
        assert!(args(&["--allow-anonymous"]).check(&exposed).is_ok());
        let no_key = args(&["--auth", "jwt"])
            .build(&loopback())
            .await
            .unwrap_err();
        // (JWT_SECRET is not set by the test runner.)
        assert!(matches!(no_key, AuthError::NoKey) || std::env::var_os(SECRET_ENV).is_some());
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a secret of at least thirty-two bytes here").unwrap();
        let secret = secret.display().to_string();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, r#"{"keys": []}"#).unwrap();
        let jwks = jwks.display().to_string();
        let several = args(&[
            "--auth",
            "jwt",
            "--jwt-secret-file",
            &secret,
            "--jwks",
            &jwks,
        ]);
        assert!(matches!(
            several.check(&loopback()),
            Err(AuthError::SeveralKeys)
        ));
        for (url, safe) in [
            ("https://idp.example/jwks.json", true),
            ("http://127.0.0.1:8080/jwks.json", true),
            ("http://localhost/jwks", true),
            ("http://[::1]:9/jwks", true),
            ("http://idp.example/jwks.json", false),
            ("http://10.0.0.1:8080/jwks.json", false),
            ("http://localhost.idp.example/jwks", false),
            ("http://user@127.0.0.1.idp.example/jwks", false),
        ] {
            let checked = args(&["--auth", "jwt", "--jwks", url]).check(&loopback());
            assert_eq!(checked.is_ok(), safe, "{url}: {checked:?}");
        }
        let not_pem = args(&["--auth", "jwt", "--jwt-public-key", &secret]);
        let err = not_pem.check(&loopback()).unwrap_err().to_string();
        assert!(
            err.contains("not an RSA, EC or Ed25519 public key"),
            "{err}"
        );
    }
}
