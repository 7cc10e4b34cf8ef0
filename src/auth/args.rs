//! The auth configuration both servers and `eventsys up` take: the mode, where the key comes
//! from, issuer/audience, and the public exceptions. Anonymous mode refuses a non-loopback
//! listener unless told otherwise (Redis's protected mode). The HMAC secret is read from
//! `JWT_SECRET` or a file, never from the command line, which anyone on the host can read.

use std::{net::SocketAddr, path::PathBuf};

use jsonwebtoken::{DecodingKey, EncodingKey, Header, encode};

use super::{
    keys::{Keys, Verifier},
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

    /// JWKS document (a file); tokens name their key with `kid`.
    #[arg(long, env = "JWT_JWKS")]
    pub jwks: Option<PathBuf>,

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
}

/// The environment variable the HMAC secret may come from.
pub const SECRET_ENV: &str = "JWT_SECRET";

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
        if let Some(path) = &self.jwt_secret_file {
            let secret = std::fs::read(path)
                .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
            let trimmed = secret.trim_ascii().to_vec();
            return Ok(Some(trimmed).filter(|s| !s.is_empty()));
        }
        Ok(std::env::var(SECRET_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .map(String::into_bytes))
    }

    /// The policy for servers listening on `listeners`.
    pub fn build(&self, listeners: &[SocketAddr]) -> Result<Auth, AuthError> {
        let public_topics = self.public_topics.clone();
        match self.mode {
            Mode::None => {
                if let Some(exposed) = listeners.iter().find(|a| !a.ip().is_loopback())
                    && !self.allow_anonymous
                {
                    return Err(AuthError::Exposed(*exposed));
                }
                tracing::warn!(
                    "anonymous mode (--auth none): any caller can act as any user and use any topic"
                );
                Ok(Auth::anonymous())
            }
            Mode::Jwt => {
                let keys = self.keys()?;
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

    fn keys(&self) -> Result<Keys, AuthError> {
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
            return Keys::jwks(path.clone()).map_err(AuthError::Key);
        }
        Err(AuthError::NoKey)
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
        for (name, file) in [
            ("JWT_SECRET_FILE", &self.jwt_secret_file),
            ("JWT_PUBLIC_KEY", &self.jwt_public_key),
            ("JWT_JWKS", &self.jwks),
        ] {
            if let Some(file) = file {
                env.push((name, path(file)));
            }
        }
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

/// Signs `claims` with an HMAC secret (HS256), for `eventsys token` and tests.
pub fn sign_hs256(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Key(e.to_string()))
}
