//! The `eventsvc` command line: configuration (flags, environment, `.env`), logging, signals,
//! and the one-line reasons it exits with.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use clap::{Args, Parser};
use eventsys::{
    TlsArgs,
    auth::{AuthArgs, AuthError},
    listen::{Inherited, Origin},
    process::{self, SetupError},
};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::{
    feed::FeedSettings,
    server::{Backend, ServeError, serve},
    store::{self, OpenError, Retention, StoreLimits, StoreUri, UriError},
};

/// Which store to open: `--store`, else `MONGO_URI`, else `DATABASE_URL` (PostgreSQL), else
/// SQLite under `--data-dir`. Shared by `eventsvc` and `eventsys up`, which hands the choice to
/// its backends.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Store URI: sqlite://PATH, mongodb://… or postgres://… [default:
    /// sqlite://DATA_DIR/events.db, or MONGO_URI or DATABASE_URL when set]
    #[arg(long, env = "STORE_URI", hide_env_values = true)]
    pub store: Option<String>,

    /// File holding the store URI (a Docker or Kubernetes secret), for a URI with a password,
    /// which a command line or the environment would show; used when --store is not given.
    #[arg(long, env = "STORE_URI_FILE")]
    pub store_file: Option<PathBuf>,

    /// MongoDB URI, the store when --store is not given.
    #[arg(long, env = "MONGO_URI", hide_env_values = true)]
    pub mongo_uri: Option<String>,

    /// PostgreSQL URI (postgres://…), the store when neither of the above is given.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Folder of the embedded SQLite store, used when neither of the above is given.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Keep only the newest this many events of each topic (all by default).
    #[arg(long, env = "RETENTION_MAX_EVENTS", value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_max_events: Option<u64>,

    /// Keep only events published less than this long ago, e.g. `7d` (all by default).
    #[arg(long, env = "RETENTION_MAX_AGE", value_parser = humantime::parse_duration)]
    pub retention_max_age: Option<Duration>,

    /// Largest SQLite database file in bytes; writes beyond it get "store is full" (reads go
    /// on). No limit by default (the disk's size is).
    #[arg(long, env = "STORE_MAX_BYTES")]
    pub store_max_bytes: Option<u64>,
}

impl StoreArgs {
    /// The chosen store as written (it may hold credentials: never log it, use `uri()`'s
    /// `Display`).
    pub fn chosen(&self) -> Result<String, UriError> {
        match (&self.store, &self.store_file) {
            (None, Some(file)) => match std::fs::read_to_string(file) {
                Ok(text) => Ok(text.trim().to_owned()),
                Err(err) => Err(UriError::File {
                    path: file.clone(),
                    reason: err.to_string(),
                }),
            },
            _ => Ok(self.given()),
        }
    }

    /// The store named by a flag or variable, else SQLite's default.
    fn given(&self) -> String {
        match (&self.store, &self.mongo_uri, &self.database_url) {
            (Some(store), _, _) => store.clone(),
            (None, Some(mongo), _) => mongo.clone(),
            (None, None, Some(postgres)) => postgres.clone(),
            (None, None, None) => {
                format!("sqlite://{}", self.data_dir.join("events.db").display())
            }
        }
    }

    pub fn uri(&self) -> Result<StoreUri, UriError> {
        self.chosen()?.parse()
    }

    pub fn retention(&self) -> Retention {
        Retention {
            max_events: self.retention_max_events,
            max_age: self.retention_max_age,
        }
    }

    pub fn limits(&self) -> StoreLimits {
        StoreLimits {
            max_bytes: self.store_max_bytes,
        }
    }

    /// The settings besides the URI as the environment of a child `eventsvc` (how `eventsys
    /// up` hands them to its backends).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        // A URI in a file stays in its file: the child reads it too.
        let mut env = match (&self.store, &self.store_file) {
            (None, Some(file)) => vec![(
                "STORE_URI_FILE",
                std::path::absolute(file)
                    .unwrap_or_else(|_| file.clone())
                    .display()
                    .to_string(),
            )],
            _ => vec![("STORE_URI", self.given())],
        };
        if let Some(max) = self.retention_max_events {
            env.push(("RETENTION_MAX_EVENTS", max.to_string()));
        }
        if let Some(age) = self.retention_max_age {
            env.push((
                "RETENTION_MAX_AGE",
                humantime::format_duration(age).to_string(),
            ));
        }
        if let Some(bytes) = self.store_max_bytes {
            env.push(("STORE_MAX_BYTES", bytes.to_string()));
        }
        env
    }
}

/// A key's time to live: a duration above zero (a key kept for no time would answer nothing).
fn key_ttl(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(ttl) if ttl.is_zero() => Err("must be more than zero".into()),
        Ok(ttl) => Ok(ttl),
        Err(err) => Err(err.to_string()),
    }
}

/// gRPC event backend (events.v1) over a store shared with its sibling backends.
#[derive(Debug, Parser)]
#[command(name = "eventsvc", version)]
pub(crate) struct Config {
    /// Address to listen on (0.0.0.0 to accept connections from other machines).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub(crate) host: IpAddr,

    /// Port to listen on; 0 picks a free one (the chosen address is logged).
    #[arg(long, env = "PORT", default_value_t = 5000)]
    pub(crate) port: u16,

    #[command(flatten)]
    pub(crate) store: StoreArgs,

    /// Live events queued per subscriber; one that falls further behind catches up from the
    /// store instead (nothing is lost).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) subscriber_buffer: u32,

    /// A subscriber more than this many events behind its topic is closed, with an error
    /// telling it to subscribe again from its last seq.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_subscriber_lag: u64,

    /// How long a create's or publish's answer is kept for repeats of its Idempotency-Key
    /// (e.g. 24h, 90m). Give every backend sharing a store the same.
    #[arg(long, env = "IDEMPOTENCY_TTL", default_value = "24h", value_parser = key_ttl)]
    pub(crate) idempotency_ttl: Duration,

    /// How long a gateway's subscribers count as present after its last presence report
    /// (e.g. 15s); then they are removed, each subject's leave recorded. Give every backend
    /// sharing a store the same.
    #[arg(long, env = "PRESENCE_TTL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub(crate) presence_ttl: Duration,

    /// Log one line per event-API request at INFO (it is at DEBUG otherwise: it costs every
    /// request).
    #[arg(long, env = "ACCESS_LOG")]
    pub(crate) access_log: bool,

    /// Serve Prometheus metrics at `http://ADDR/metrics` (host:port; port 0 picks one, logged).
    #[arg(long, env = "METRICS_ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub(crate) tls: TlsArgs,

    /// Require client certificates signed by this CA (PEM): only gateways holding one get in.
    #[arg(long, env = "CLIENT_CA", requires = "tls_cert")]
    pub(crate) client_ca: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) auth: AuthArgs,
}

impl Config {
    /// TLS from the PEM files, with client certificates required when a client CA is given.
    fn tls(&self) -> Result<Option<ServerTlsConfig>, Fatal> {
        let Some((cert, key)) = self.tls.files() else {
            return Ok(None);
        };
        let read = |path: &PathBuf| std::fs::read(path).map_err(|e| Fatal::Read(path.clone(), e));
        let mut tls =
            ServerTlsConfig::new().identity(Identity::from_pem(read(&cert)?, read(&key)?));
        if let Some(ca) = &self.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(Some(tls))
    }
}

#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("invalid store: {0}")]
    Uri(#[from] UriError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
}

/// Entry point of the `eventsvc` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs with the given command line (program name first), as `eventsvc` would; the launcher's
/// multi-call binary enters here.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    process::run_main("eventsvc", || Config::parse_from(args), run)
}

/// The backend `eventsvc ARGS` would serve on `listening` (program name first): the binary's
/// own flags and rules for a backend run in another process's runtime (the tests' in-process
/// servers). Where it listens (`--host`, `--port`) and `--metrics-addr` are the caller's.
pub async fn backend_from<I, T>(args: I, listening: SocketAddr) -> Result<Backend, String>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let config = Config::try_parse_from(args).map_err(|err| err.to_string())?;
    build(&config, listening)
        .await
        .map_err(|err| err.to_string())
}

/// The backend of `config`, serving on `listening`.
async fn build(config: &Config, listening: SocketAddr) -> Result<Backend, Fatal> {
    let uri = config.store.uri()?;
    // Before the store is touched: an exposed anonymous backend must not start at all.
    let auth = Arc::new(config.auth.build(&[listening]).await?);

    tracing::info!(store = %uri, "opening store");
    let store = store::open(&uri, config.store.limits()).await?;
    let feed = FeedSettings {
        buffer: config.subscriber_buffer as usize,
        max_lag: config.max_subscriber_lag,
    };
    let mut backend = Backend::new(store)
        .auth(auth)
        .retention(config.store.retention());
    if let Some(tls) = config.tls()? {
        backend = backend.tls(tls);
    }
    Ok(backend
        .access_log(config.access_log)
        .reflection(config.auth.reflection())
        .feed(feed)
        .idempotency_ttl(config.idempotency_ttl)
        .presence(crate::PresencePolicy {
            ttl: config.presence_ttl,
        }))
}

async fn run(config: Config, mut inherited: Inherited) -> Result<(), Fatal> {
    config.store.uri()?;
    // Installed first: a SIGTERM during start-up must not kill the process abruptly.
    let shutdown = process::shutdown_signal()?;

    let addr = SocketAddr::new(config.host, config.port);
    let metrics = inherited.take_metrics();
    let (listener, origin) = inherited
        .listen(addr)
        .await
        .map_err(|source| Fatal::Bind { addr, source })?;
    if origin == Origin::Inherited {
        tracing::debug!("serving on the listening socket handed over by the supervisor");
    }
    let listening = listener
        .local_addr()
        .map_err(|source| Fatal::Bind { addr, source })?;
    let backend = build(&config, listening).await?;
    let handed = metrics.map_err(|source| Fatal::Bind { addr, source })?;
    let backend = match (handed, config.metrics_addr) {
        (Some(listener), _) => {
            if let Ok(bound) = listener.local_addr() {
                tracing::info!(addr = %bound, "metrics at http://{bound}/metrics");
            }
            backend.metrics(listener)
        }
        (None, Some(addr)) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Fatal::Bind { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| Fatal::Bind { addr, source })?;
            tracing::info!(addr = %bound, "metrics at http://{bound}/metrics");
            backend.metrics(listener)
        }
        (None, None) => backend,
    };
    serve(listener, backend, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("eventsvc").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn store_precedence() {
        let mut c = config(&["--data-dir", "data"]).store;
        c.mongo_uri = None;
        c.store = None;
        assert_eq!(c.uri(), Ok(StoreUri::Sqlite("data/events.db".into())));
        c.mongo_uri = Some("mongodb://m:27017".into());
        assert_eq!(c.uri(), Ok(StoreUri::Mongo("mongodb://m:27017".into())));
        c.store = Some("sqlite:///tmp/x.db".into());
        assert_eq!(c.uri(), Ok(StoreUri::Sqlite("/tmp/x.db".into())));
        // A file comes after --store, before the variables; it is read, and handed on by name.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("uri");
        std::fs::write(&file, "postgres://u:secret@db/events\n").unwrap();
        c.store_file = Some(file.clone());
        assert_eq!(c.uri(), Ok(StoreUri::Sqlite("/tmp/x.db".into())));
        c.store = None;
        assert_eq!(
            c.uri(),
            Ok(StoreUri::Postgres("postgres://u:secret@db/events".into()))
        );
        let env = c.to_env();
        assert_eq!(env[0], ("STORE_URI_FILE", file.display().to_string()));
        assert!(!format!("{env:?}").contains("secret"));
        c.store_file = Some(dir.path().join("missing"));
        let err = c.uri().unwrap_err().to_string();
        assert!(err.starts_with("cannot read the store URI file"), "{err}");
    }

    #[test]
    fn rejects_bad_flags() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(std::iter::once("eventsvc").chain(args.iter().copied()))
        };
        assert!(parse(&["--port", "70000"]).is_err());
        assert!(parse(&["--host", "not-an-ip"]).is_err());
        assert_eq!(config(&["--port", "0"]).port, 0);
    }
}
