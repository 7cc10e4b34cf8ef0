//! `--tls-cert` / `--tls-key`: the server-side TLS flags, one definition for the gateway and
//! the backends (each reads the files its own TLS stack wants).

use std::path::PathBuf;

/// A server's own certificate and key; both or neither.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Serve TLS (the gateway: HTTPS, HTTP/2 and HTTP/1.1 by ALPN) with this certificate
    /// chain (PEM) …
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// … and this private key (PEM).
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The certificate chain's and the key's files, when TLS is asked for.
    pub fn files(&self) -> Option<(PathBuf, PathBuf)> {
        let TlsArgs { tls_cert, tls_key } = self;
        tls_cert.clone().zip(tls_key.clone())
    }
}
