//! TLS towards the backends, from PEM files: the CA that signs their certificates, an optional
//! client identity for mTLS, and the name to check them against; ALPN offers only h2.

use std::{io, path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};

/// TLS towards the backends: whom to trust, what to present, and the name to check.
#[derive(Debug, Clone)]
pub(crate) struct BackendTls {
    pub(crate) config: Arc<ClientConfig>,
    /// The name the backends' certificates carry; their IP address when `None`.
    pub(crate) name: Option<ServerName<'static>>,
}

impl BackendTls {
    /// Reads the files; an error names the file, never its contents.
    pub(crate) fn from_pem(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        name: Option<&str>,
    ) -> io::Result<BackendTls> {
        let invalid = |path: &Path, err: &dyn std::fmt::Display| {
            io::Error::other(format!("{}: {err}", path.display()))
        };
        let chain = |path: &Path| {
            CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid(path, &e))
        };
        let mut roots = RootCertStore::empty();
        for cert in chain(ca)? {
            roots.add(cert).map_err(|e| invalid(ca, &e))?;
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let private = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, &e))?;
                builder
                    .with_client_auth_cert(chain(cert)?, private)
                    .map_err(|e| invalid(cert, &e))?
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = name
            .map(|name| {
                ServerName::try_from(name.to_owned()).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?}: {e}"))
                })
            })
            .transpose()?;
        Ok(BackendTls {
            config: Arc::new(config),
            name,
        })
    }
}
