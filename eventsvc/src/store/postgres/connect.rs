//! How the store connects: the URI read as libpq reads it, TLS included, and the settings that
//! keep a lost network from hanging a call. `tokio-postgres` knows `sslmode` only up to
//! `require` and no `sslrootcert`; libpq's `verify-ca`, `verify-full` and `sslrootcert` are
//! taken out here and become the rustls verifier:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default), `allow` | when the server offers it | not checked (as libpq) |
//! | `require` | always | checked against `sslrootcert` when given, else not (as libpq) |
//! | `verify-ca` | always | chain checked against `sslrootcert` |
//! | `verify-full` | always | chain and host name checked against `sslrootcert` |
//!
//! `sslrootcert` is a PEM file, or `system` for the public roots (webpki's).

use std::{str::FromStr, sync::Arc, time::Duration};

use percent_encoding::percent_decode_str;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long a connection (a new one included) may take before the store is unavailable: well
/// inside the gateway's request deadline.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long data sent may go unacknowledged before the kernel gives the connection up. A
/// database host that vanished (its link down, no reset) would otherwise hold a call for the
/// ~15 minutes of TCP's retries; an alive server's kernel acknowledges within milliseconds,
/// however busy the server is.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(3);
/// Keep-alive probes on idle connections (the feed's, pooled ones), so a vanished host is
/// noticed on them too.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 3;
/// Server side: a session idle inside a transaction this long is ended, so a backend cut off
/// mid-transaction cannot hold a topic's row lock (and with it that topic's publishes) until
/// the server's own keep-alive notices, hours later. Our transactions never wait on anything
/// but the server.
const IDLE_IN_TRANSACTION: &str = "-c idle_in_transaction_session_timeout=5000";

/// What to connect to and how: the driver's settings and the TLS connector they use.
#[derive(Clone)]
pub(super) struct Connect {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: MakeRustlsConnect,
}

/// The certificate check a mode asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

impl Connect {
    /// Reads `uri`; an error is one line that never repeats the URI (it may hold a password).
    pub(super) fn from_uri(uri: &str) -> Result<Connect, String> {
        let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
        // Options the driver reads stay as written (percent-encoded); ours are decoded.
        let decode = |text: &str| percent_decode_str(text).decode_utf8_lossy().into_owned();
        let mut kept = Vec::new();
        let mut given = Vec::new();
        let mut mode = None;
        let mut root = None;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match &*decode(key) {
                "sslmode" => mode = Some(decode(value)),
                "sslrootcert" => root = Some(decode(value)),
                key => {
                    given.push(key.to_owned());
                    kept.push(pair);
                }
            }
        }
        let (ssl_mode, check) = match (mode.as_deref(), &root) {
            (Some("disable"), _) => (SslMode::Disable, Check::Nothing),
            (None | Some("prefer" | "allow"), _) => (SslMode::Prefer, Check::Nothing),
            (Some("require"), None) => (SslMode::Require, Check::Nothing),
            (Some("require" | "verify-ca"), Some(_)) => (SslMode::Require, Check::Chain),
            (Some("verify-full"), Some(_)) => (SslMode::Require, Check::ChainAndName),
            (Some(mode @ ("verify-ca" | "verify-full")), None) => {
                return Err(format!(
                    "sslmode={mode} needs sslrootcert=FILE (PEM), or sslrootcert=system"
                ));
            }
            (Some(other), _) => return Err(format!("unknown sslmode `{other}`")),
        };
        let driver_uri = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&driver_uri)
            .map_err(|e| format!("invalid URI: {}", super::with_sources(&e)))?;
        config.ssl_mode(ssl_mode);
        let gave = |key: &str| given.iter().any(|k| k == key);
        if !gave("connect_timeout") {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if !gave("application_name") {
            config.application_name("eventsvc");
        }
        if !gave("tcp_user_timeout") {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if !gave("keepalives_idle") {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if !gave("keepalives_interval") {
            config.keepalives_interval(KEEPALIVE_INTERVAL);
        }
        if !gave("keepalives_retries") {
            config.keepalives_retries(KEEPALIVE_RETRIES);
        }
        let options = match config.get_options() {
            Some(theirs) => format!("{theirs} {IDLE_IN_TRANSACTION}"),
            None => IDLE_IN_TRANSACTION.to_owned(),
        };
        config.options(options);
        let tls = MakeRustlsConnect::new(client_config(check, root.as_deref())?);
        Ok(Connect { config, tls })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The rustls client for `check`, trusting `root` (a PEM file or `system`).
fn client_config(check: Check, root: Option<&str>) -> Result<ClientConfig, String> {
    let chain = match (check, root) {
        (Check::Chain | Check::ChainAndName, Some(root)) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root)?), provider())
                .build()
                .map_err(|e| format!("TLS: {e}"))?,
        ),
        _ => None,
    };
    let verifier = Verifier {
        chain,
        names: check == Check::ChainAndName,
        provider: provider(),
    };
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

fn roots(root: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    if root == "system" {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    }
    let certificates = CertificateDer::pem_file_iter(root)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("sslrootcert {root}: {e}"))?;
    let (added, _) = store.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(format!("sslrootcert {root}: no certificate in it"));
    }
    Ok(store)
}

/// The server's certificate as a mode checks it. Without `chain` (`prefer`, and `require`
/// without a root) it is taken as offered, libpq's rule (`verify-full` is the mode that stops a
/// man in the middle); with it, the chain must lead to a trusted root, and for `verify-full`
/// (`names`) name the host. The handshake's signatures are checked whatever the mode, so the
/// session is with the holder of the certificate's key.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    names: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(uri: &str) -> Result<tokio_postgres::Config, String> {
        Connect::from_uri(uri).map(|c| c.config)
    }

    #[test]
    fn libpq_modes_map_to_the_driver_and_a_check() {
        let mode = |uri: &str| read(uri).unwrap().get_ssl_mode();
        assert_eq!(mode("postgres://h/db"), SslMode::Prefer);
        assert_eq!(mode("postgres://h/db?sslmode=disable"), SslMode::Disable);
        assert_eq!(mode("postgres://h/db?sslmode=require"), SslMode::Require);
        let root = "/nonexistent/ca.pem";
        for strict in ["verify-ca", "verify-full"] {
            // The root is read when the mode checks with it: a missing file is named.
            let err = read(&format!(
                "postgres://h/db?sslmode={strict}&sslrootcert={root}"
            ))
            .err()
            .unwrap();
            assert!(err.starts_with("sslrootcert /nonexistent/ca.pem"), "{err}");
            let err = read(&format!("postgres://h/db?sslmode={strict}"))
                .err()
                .unwrap();
            assert!(err.contains("needs sslrootcert"), "{err}");
        }
        assert_eq!(
            mode("postgres://h/db?sslmode=verify-full&sslrootcert=system"),
            SslMode::Require
        );
        let err = read("postgres://h/db?sslmode=sometimes").err().unwrap();
        assert_eq!(err, "unknown sslmode `sometimes`");
    }

    #[test]
    fn a_bad_uri_is_named_without_its_password() {
        let err = read("postgres://u:hunter2@h/db?nonsense=1").err().unwrap();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.starts_with("invalid URI"), "{err}");
        // Client certificates are not supported: refused, not ignored.
        let err = read("postgres://h/db?sslcert=/c.pem").err().unwrap();
        assert!(err.contains("sslcert"), "{err}");
    }

    #[test]
    fn network_settings_default_unless_the_uri_sets_them() {
        let config = read("postgres://h/db?options=-c%20work_mem%3D8MB").unwrap();
        assert_eq!(config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert_eq!(config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(
            config.get_options(),
            Some("-c work_mem=8MB -c idle_in_transaction_session_timeout=5000")
        );
        let config = read("postgres://h/db?tcp_user_timeout=30&keepalives_idle=60").unwrap();
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(30))
        );
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(60));
    }
}
