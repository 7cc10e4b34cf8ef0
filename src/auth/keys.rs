//! Verifying a token with the configured key: an HMAC secret, a PEM public key (RSA, EC or
//! Ed25519) or a JWKS file matched by `kid`. The accepted algorithms are the key's family, never
//! the token header's choice, so `alg: none` and an HS-signed token against a public key fail.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    DecodingKey, Validation, decode, decode_header, errors::ErrorKind, jwk::JwkSet,
};

use super::{jwks::RemoteJwks, policy::Claims};

/// Clock skew tolerated on `exp` and `nbf`.
pub(super) const LEEWAY_SECS: u64 = 30;
/// A JWKS file is re-read on an unknown `kid` at most this often, so a flood of made-up `kid`s
/// cannot make the server read it in a loop.
pub(super) const JWKS_REFRESH_FLOOR: Duration = Duration::from_secs(30);

/// Why a request has no valid token: 401 / UNAUTHENTICATED. The reason goes to the log at
/// debug level, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("no token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Where verification keys come from.
#[derive(Debug)]
pub(super) enum Keys {
    /// One key, with the algorithms of its family.
    Fixed(DecodingKey),
    /// A JWKS document on disk, matched by `kid`.
    Jwks {
        path: PathBuf,
        set: Mutex<(JwkSet, Instant)>,
    },
    /// A JWKS document at a URL, refreshed in the background.
    Remote(Arc<RemoteJwks>),
}

impl Keys {
    /// A JWKS document read now; its first unknown `kid` may re-read it at once.
    pub(super) fn jwks(path: PathBuf) -> Result<Keys, String> {
        let set = read_jwks(&path)?;
        let stale = Instant::now()
            .checked_sub(JWKS_REFRESH_FLOOR)
            .unwrap_or_else(Instant::now);
        Ok(Keys::Jwks {
            path,
            set: Mutex::new((set, stale)),
        })
    }
}

/// Checks signatures and the registered claims.
#[derive(Debug)]
pub(super) struct Verifier {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
}

fn invalid(kind: &ErrorKind) -> Rejected {
    let reason = match kind {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not yet valid",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidAlgorithm => "algorithm not accepted for the configured key",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        _ => "malformed",
    };
    Rejected::Invalid(reason.to_owned())
}

fn read_jwks(path: &PathBuf) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not a JWKS document: {e}", path.display()))
}

impl Verifier {
    pub(super) fn new(keys: Keys, issuer: Option<String>, audience: Option<String>) -> Self {
        Self {
            keys,
            issuer,
            audience,
        }
    }

    fn validation(&self, key: &DecodingKey) -> Validation {
        let mut validation = Validation::new_for_family(key.family());
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // The library checks `iss` and `aud` only when a token carries them: configured, they
        // are required too.
        let mut required = vec!["exp", "sub"];
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        required.extend(self.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        validation
    }

    /// The key a token is checked against: the configured one, or the JWKS entry its `kid`
    /// names (re-reading the file once, within the floor, for a `kid` not seen yet).
    fn key_for(&self, token: &str) -> Result<DecodingKey, Rejected> {
        match &self.keys {
            Keys::Fixed(key) => Ok(key.clone()),
            Keys::Jwks { path, set } => {
                let header = decode_header(token).map_err(|e| invalid(e.kind()))?;
                let kid = header
                    .kid
                    .ok_or_else(|| Rejected::Invalid("no kid".into()))?;
                let mut set = set.lock().unwrap_or_else(PoisonError::into_inner);
                if set.0.find(&kid).is_none() && set.1.elapsed() >= JWKS_REFRESH_FLOOR {
                    set.1 = Instant::now();
                    match read_jwks(path) {
                        Ok(fresh) => set.0 = fresh,
                        Err(err) => tracing::warn!(error = %err, "cannot re-read the JWKS"),
                    }
                }
                let jwk = set
                    .0
                    .find(&kid)
                    .ok_or_else(|| Rejected::Invalid("unknown kid".into()))?;
                DecodingKey::from_jwk(jwk).map_err(|_| Rejected::Invalid("unusable JWK".into()))
            }
            Keys::Remote(jwks) => {
                let header = decode_header(token).map_err(|e| invalid(e.kind()))?;
                let kid = header
                    .kid
                    .ok_or_else(|| Rejected::Invalid("no kid".into()))?;
                let jwk = jwks
                    .find(&kid)
                    .ok_or_else(|| Rejected::Invalid("unknown kid".into()))?;
                DecodingKey::from_jwk(&jwk).map_err(|_| Rejected::Invalid("unusable JWK".into()))
            }
        }
    }

    pub(super) fn verify(&self, token: &str) -> Result<Claims, Rejected> {
        let key = self.key_for(token)?;
        let data = decode::<Claims>(token, &key, &self.validation(&key)).map_err(|e| {
            let rejected = invalid(e.kind());
            tracing::debug!(reason = %rejected, "token refused");
            rejected
        })?;
        if data.claims.sub.is_empty() {
            return Err(Rejected::Invalid("empty sub".into()));
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};

    use super::*;
    use crate::auth::{
        Audience, EventsClaim, sign_hs256,
        testkeys::{EC_P256, pair},
    };

    const SECRET: &[u8] = b"test secret, long enough for HS256";

    fn claims(exp_in: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            exp: (get_current_timestamp() as i64 + exp_in) as u64,
            nbf: None,
            iss: None,
            aud: None,
            events: EventsClaim::default(),
        }
    }

    fn hs(issuer: Option<&str>, audience: Option<&str>) -> Verifier {
        Verifier::new(
            Keys::Fixed(DecodingKey::from_secret(SECRET)),
            issuer.map(Into::into),
            audience.map(Into::into),
        )
    }

    fn refused(verifier: &Verifier, token: &str) -> String {
        match verifier.verify(token) {
            Err(Rejected::Invalid(reason)) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_hs256_token_names_its_subject() {
        let token = sign_hs256(SECRET, &claims(60)).unwrap();
        assert_eq!(hs(None, None).verify(&token).unwrap().sub, "alice");
    }

    #[test]
    fn expired_tokens_are_refused_beyond_the_leeway() {
        let token = sign_hs256(SECRET, &claims(-(LEEWAY_SECS as i64) - 5)).unwrap();
        assert_eq!(refused(&hs(None, None), &token), "expired");
    }

    #[test]
    fn tokens_not_yet_valid_are_refused() {
        let mut early = claims(600);
        early.nbf = Some(get_current_timestamp() + 300);
        let token = sign_hs256(SECRET, &early).unwrap();
        assert_eq!(refused(&hs(None, None), &token), "not yet valid");
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let token = sign_hs256(b"another secret entirely", &claims(60)).unwrap();
        assert_eq!(refused(&hs(None, None), &token), "bad signature");
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let mut with = claims(60);
        with.iss = Some("other".into());
        with.aud = Some("events".into());
        let token = sign_hs256(SECRET, &with).unwrap();
        assert_eq!(refused(&hs(Some("us"), None), &token), "wrong issuer");
        assert_eq!(refused(&hs(None, Some("else")), &token), "wrong audience");
        with.iss = Some("us".into());
        let token = sign_hs256(SECRET, &with).unwrap();
        assert!(hs(Some("us"), Some("events")).verify(&token).is_ok());
    }

    #[test]
    fn a_configured_issuer_or_audience_is_required() {
        let bare = sign_hs256(SECRET, &claims(60)).unwrap();
        assert!(hs(None, None).verify(&bare).is_ok());
        let missing = "a required claim is missing";
        assert_eq!(refused(&hs(Some("us"), None), &bare), missing);
        assert_eq!(refused(&hs(None, Some("events")), &bare), missing);
    }

    #[test]
    fn an_audience_list_is_accepted_when_it_holds_ours() {
        let mut listed = claims(60);
        listed.aud = Some(Audience::Many(vec!["billing".into(), "events".into()]));
        let token = sign_hs256(SECRET, &listed).unwrap();
        let verified = hs(None, Some("events")).verify(&token).unwrap();
        assert_eq!(verified.aud, listed.aud);
        assert_eq!(refused(&hs(None, Some("else")), &token), "wrong audience");
    }

    #[test]
    fn alg_none_and_garbage_are_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(60)).unwrap());
        let verifier = hs(None, None);
        assert_eq!(
            refused(&verifier, &format!("{header}.{body}.")),
            "malformed"
        );
        assert_eq!(refused(&verifier, "not a token"), "malformed");
        assert_eq!(refused(&verifier, ""), "malformed");
    }

    #[test]
    fn a_missing_exp_or_sub_is_refused() {
        let token = encode(
            &Header::default(),
            &serde_json::json!({"sub": "alice"}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        // Without `exp` the claims do not even parse.
        assert_eq!(refused(&hs(None, None), &token), "malformed");
        let mut anonymous = claims(60);
        anonymous.sub = String::new();
        let token = sign_hs256(SECRET, &anonymous).unwrap();
        assert_eq!(refused(&hs(None, None), &token), "empty sub");
    }

    #[test]
    fn es256_verifies_and_an_hs_token_signed_with_the_public_key_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = pair(dir.path(), "ec", EC_P256);
        let public = std::fs::read(public).unwrap();
        let verifier = Verifier::new(
            Keys::Fixed(DecodingKey::from_ec_pem(&public).unwrap()),
            None,
            None,
        );
        let es256 = encode(
            &Header::new(Algorithm::ES256),
            &claims(60),
            &EncodingKey::from_ec_pem(&private).unwrap(),
        )
        .unwrap();
        assert_eq!(verifier.verify(&es256).unwrap().sub, "alice");
        // The classic confusion: the public key used as an HMAC secret.
        let confused = sign_hs256(&public, &claims(60)).unwrap();
        assert_eq!(
            refused(&verifier, &confused),
            "algorithm not accepted for the configured key"
        );
    }

    #[test]
    fn jwks_keys_are_found_by_kid_and_unknown_kids_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret_b64 = URL_SAFE_NO_PAD.encode(SECRET);
        let jwks = dir.path().join("jwks.json");
        std::fs::write(
            &jwks,
            serde_json::json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": secret_b64}]})
                .to_string(),
        )
        .unwrap();
        let verifier = Verifier::new(Keys::jwks(jwks).unwrap(), None, None);
        let signed = |kid: Option<&str>| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = kid.map(Into::into);
            encode(&header, &claims(60), &EncodingKey::from_secret(SECRET)).unwrap()
        };
        assert_eq!(verifier.verify(&signed(Some("k1"))).unwrap().sub, "alice");
        assert_eq!(refused(&verifier, &signed(Some("k2"))), "unknown kid");
        assert_eq!(refused(&verifier, &signed(None)), "no kid");
    }
}
