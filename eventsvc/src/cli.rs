//! The `eventsvc` command line: configuration (flags, environment, `.env`), logging, signals,
//! and the one-line reasons it exits with.

use std::{
    io::IsTerminal,
    net::{IpAddr, SocketAddr},
    process::ExitCode,
};

use clap::Parser;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};
use tracing_subscriber::EnvFilter;

use crate::{
    server::{Backend, ServeError, serve},
    store::{self, OpenError, StoreUri, UriError},
};

const DEFAULT_STORE: &str = "sqlite://data/events.db";

/// gRPC event backend (events.v1) over a store shared with its sibling backends.
#[derive(Debug, Parser)]
#[command(name = "eventsvc", version)]
pub struct Config {
    /// Address to listen on (0.0.0.0 to accept connections from other machines).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on; 0 picks a free one (the chosen address is logged).
    #[arg(long, env = "PORT", default_value_t = 5000)]
    pub port: u16,

    /// Store URI: sqlite://PATH or mongodb://… [default: sqlite://data/events.db, or
    /// MONGO_URI when that is set]
    #[arg(long, env = "STORE_URI")]
    pub store: Option<String>,

    /// MongoDB URI, the store when --store is not given.
    #[arg(long, env = "MONGO_URI", hide_env_values = true)]
    pub mongo_uri: Option<String>,
}

impl Config {
    /// `--store`, else `MONGO_URI`, else the embedded default.
    pub fn store_uri(&self) -> Result<StoreUri, UriError> {
        self.store
            .as_deref()
            .or(self.mongo_uri.as_deref())
            .unwrap_or(DEFAULT_STORE)
            .parse()
    }
}

#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error("invalid .env file: {0}")]
    DotEnv(#[from] dotenvy::Error),
    #[error("invalid RUST_LOG: {0}")]
    LogFilter(#[from] tracing_subscriber::filter::ParseError),
    #[error("invalid store: {0}")]
    Uri(#[from] UriError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Entry point of the `eventsvc` binary.
pub fn main() -> ExitCode {
    match dotenvy::dotenv() {
        Err(err) if !err.not_found() => return fail(&Fatal::DotEnv(err)),
        _ => {}
    }
    let config = Config::parse();
    if let Err(err) = init_tracing() {
        return fail(&err);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => return fail(&Fatal::Runtime(err)),
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &Fatal) -> ExitCode {
    eprintln!("eventsvc: {err}");
    ExitCode::FAILURE
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); colour only on a terminal.
fn init_tracing() -> Result<(), Fatal> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(spec)?,
        _ => EnvFilter::new("info"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

async fn run(config: Config) -> Result<(), Fatal> {
    let uri = config.store_uri()?;
    // Signal handlers first: a SIGTERM during start-up must not kill the process abruptly.
    let mut terminate = signal(SignalKind::terminate()).map_err(Fatal::Runtime)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Fatal::Runtime)?;

    tracing::info!(store = %uri, "opening store");
    let store = store::open(&uri).await?;
    let addr = SocketAddr::new(config.host, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Fatal::Bind { addr, source })?;

    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    };
    serve(listener, Backend::new(store), shutdown).await?;
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
        let mut c = config(&[]);
        c.mongo_uri = None;
        c.store = None;
        assert_eq!(c.store_uri(), Ok(StoreUri::Sqlite("data/events.db".into())));
        c.mongo_uri = Some("mongodb://m:27017".into());
        assert_eq!(
            c.store_uri(),
            Ok(StoreUri::Mongo("mongodb://m:27017".into()))
        );
        c.store = Some("sqlite:///tmp/x.db".into());
        assert_eq!(c.store_uri(), Ok(StoreUri::Sqlite("/tmp/x.db".into())));
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
