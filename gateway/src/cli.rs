//! The `gateway` command line: configuration (flags, environment, `.env`), validation, and the
//! one-line reasons it exits with.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use clap::Parser;
use eventsys::{
    TlsArgs,
    auth::{Auth, AuthArgs, AuthError},
    listen::{Inherited, Origin},
    process::{self, SetupError},
};
use http::HeaderValue;

use crate::{
    http::Settings,
    middleware::{Browsers, CorsOrigins, HostPolicy, Hosts, LimitSettings},
    server::{ConnectionLimits, GatewayConfig, serve},
    upstream::{BackendTls, Balancing, UpstreamConfig},
};

/// REST + SSE gateway over the eventsvc backends, balanced by power-of-two-choices over
/// PeakEwma latency.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
pub(crate) struct Config {
    /// Address to listen on (0.0.0.0 to accept connections from other machines).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub(crate) host: IpAddr,

    /// Port to listen on; 0 picks a free one (the chosen address is logged).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub(crate) port: u16,

    /// Backends as comma-separated host:port; a name resolving to several addresses (a
    /// Kubernetes headless service) stands for all of them and is re-resolved periodically.
    #[arg(
        long,
        env = "BACKENDS",
        value_delimiter = ',',
        default_value = "127.0.0.1:5000,127.0.0.1:5001,127.0.0.1:5002"
    )]
    pub(crate) backends: Vec<String>,

    /// Longest a request may take before it gets 504 (SSE streams excepted).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) request_timeout: Duration,

    /// Longest a request waits for a healthy backend before it gets 503.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) no_backend_wait: Duration,

    /// Interval of the active health checks.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub(crate) health_interval: Duration,

    /// Deadline of one health check; a backend that misses it is taken out.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub(crate) health_timeout: Duration,

    /// Interval of re-resolving backend names.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) resolve_interval: Duration,

    /// Latency differences between backends below this are treated as noise: the balancer
    /// then goes by outstanding requests. Above it, PeakEwma's latency estimate decides.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub(crate) latency_floor: Duration,

    /// How requests are balanced: p2c over PeakEwma latency (the default); the others exist
    /// to compare against it (see BENCHMARKS.md).
    #[arg(long, value_enum, default_value = "peak-ewma")]
    pub(crate) balancer: Policy,

    /// Interval of SSE keep-alive comments.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub(crate) sse_keep_alive: Duration,

    /// Close SSE streams after this long (clients reconnect with Last-Event-ID); no limit by
    /// default.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) sse_max_duration: Option<Duration>,

    /// How often this gateway reports who has streams open through it to the backends (one
    /// write per interval; it also renews the gateway there: keep it well inside their
    /// `--presence-ttl`).
    #[arg(long, env = "PRESENCE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) presence_interval: Duration,

    /// How long a subject's last stream of a topic may be closed before it counts as gone (a
    /// reconnect within it is no leave).
    #[arg(long, env = "PRESENCE_DEBOUNCE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) presence_debounce: Duration,

    /// Bytes of recent events kept for SSE clients, all topics together (each topic's hub
    /// keeps an equal share, at least its newest event); a client further behind catches up
    /// from the store (nothing is lost).
    #[arg(long, env = "SSE_BUFFER_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub(crate) sse_buffer_bytes: usize,

    /// Open SSE streams in all; more get 429.
    #[arg(long, env = "MAX_SSE_STREAMS", default_value_t = 10_000)]
    pub(crate) max_sse_streams: usize,

    /// Open SSE streams per client (token subject, else address); more get 429.
    #[arg(long, env = "MAX_SSE_PER_CLIENT", default_value_t = 100)]
    pub(crate) max_sse_per_client: usize,

    /// Requests per second per client (token subject, else address), in bursts of as many;
    /// more get 429. No limit by default.
    #[arg(long, env = "RATE_LIMIT")]
    pub(crate) rate_limit: Option<NonZeroU32>,

    /// Open client connections; more are closed at once (and logged). Bounded by the
    /// open-file limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub(crate) max_connections: usize,

    /// Time a client has to send a request head (and a TLS handshake); also how long an idle
    /// keep-alive connection stays open.
    #[arg(long, env = "HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) header_timeout: Duration,

    /// Concurrent requests and streams on one HTTP/2 connection.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_streams_per_connection: u32,

    /// Origins web pages may call from, comma-separated, or `*` for any. Default: in
    /// anonymous mode only pages of this machine (http(s)://localhost, 127.0.0.1, [::1] on any
    /// port) and the gateway's own; in token mode any (`*`).
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub(crate) cors_origins: Vec<String>,

    /// Host names requests may be addressed to (besides loopback names and the listening
    /// address), comma-separated, or `*` for any. Guards against DNS rebinding.
    #[arg(long, env = "ALLOWED_HOSTS", value_delimiter = ',')]
    pub(crate) allowed_hosts: Vec<String>,

    /// Log one line per request (method, path, status, backend, time) at INFO. Off by default:
    /// it costs every request, and `/metrics` counts them all anyway.
    #[arg(long, env = "ACCESS_LOG")]
    pub(crate) access_log: bool,

    /// How long shutdown waits for in-flight requests.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) drain_timeout: Duration,

    /// On SIGTERM, keep serving this long with `/readyz` answering 503 before draining, so a
    /// load balancer (a Kubernetes endpoint list) stops sending new clients first.
    #[arg(long, env = "SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub(crate) shutdown_delay: Duration,

    #[command(flatten)]
    pub(crate) tls: TlsArgs,

    /// Talk TLS to the backends, verifying their certificates against this CA (PEM).
    #[arg(long, env = "BACKEND_CA")]
    pub(crate) backend_ca: Option<PathBuf>,

    /// Present this client certificate (PEM) to backends that require one (mTLS) …
    #[arg(long, env = "BACKEND_CLIENT_CERT", requires_all = ["backend_client_key", "backend_ca"])]
    pub(crate) backend_client_cert: Option<PathBuf>,

    /// … with this private key (PEM).
    #[arg(long, env = "BACKEND_CLIENT_KEY", requires = "backend_client_cert")]
    pub(crate) backend_client_key: Option<PathBuf>,

    /// The name backends' certificates are checked against [default: the host of each
    /// backend address].
    #[arg(long, env = "BACKEND_TLS_NAME", requires = "backend_ca")]
    pub(crate) backend_tls_name: Option<String>,

    /// In token mode, a file holding the token (with `"admin": true`) this gateway presents
    /// for its own calls (presence reports); re-read at every use. Without it, a gateway with
    /// an HMAC secret signs its own; one with public keys or a JWKS reports no presence.
    #[arg(long, env = "SERVICE_TOKEN_FILE")]
    pub(crate) service_token_file: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) auth: AuthArgs,
}

impl Config {
    /// What the gateway's own calls carry in token mode.
    fn service_token(&self) -> Result<crate::presence::ServiceToken, AuthError> {
        use crate::presence::ServiceToken;
        if self.auth.mode != eventsys::auth::Mode::Jwt {
            return Ok(ServiceToken::None);
        }
        if let Some(file) = &self.service_token_file {
            return Ok(ServiceToken::File(file.clone()));
        }
        Ok(match self.auth.service_signer()? {
            Some(signer) => ServiceToken::Signed(signer),
            None => {
                tracing::warn!(
                    "token mode without --service-token-file or an HMAC secret: this gateway reports no presence"
                );
                ServiceToken::None
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Policy {
    /// p2c over PeakEwma latency × outstanding calls, floored by --latency-floor.
    PeakEwma,
    /// p2c over outstanding calls.
    Pending,
    /// p2c over calls sent, which keeps counts equal like round robin.
    RoundRobin,
}

/// Largest request body (the contract's 1 MiB).
const BODY_LIMIT: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Fatal {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("invalid --backends: {0}")]
    Backends(String),
    #[error("invalid {0}: must be more than zero")]
    Zero(&'static str),
    #[error("invalid --cors-origins: {0:?} is not an origin")]
    Origin(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("invalid backend TLS settings: {0}")]
    BackendTls(#[source] std::io::Error),
}

impl Config {
    /// Everything but the auth policy, which needs the address actually listened on.
    pub(crate) fn validate(&self) -> Result<GatewayConfig, Fatal> {
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        if backends.is_empty() {
            return Err(Fatal::Backends("no backend given".into()));
        }
        for backend in &backends {
            let valid = backend.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                return Err(Fatal::Backends(format!("{backend:?} is not host:port")));
            }
        }
        self.warn_of_plaintext_tokens(&backends);
        for (name, value) in [
            ("--request-timeout", self.request_timeout),
            ("--health-interval", self.health_interval),
            ("--health-timeout", self.health_timeout),
            ("--resolve-interval", self.resolve_interval),
            ("--sse-keep-alive", self.sse_keep_alive),
            ("--header-timeout", self.header_timeout),
            ("--presence-interval", self.presence_interval),
        ] {
            if value.is_zero() {
                return Err(Fatal::Zero(name));
            }
        }
        Ok(GatewayConfig {
            upstream: UpstreamConfig {
                backends,
                health_interval: self.health_interval,
                health_timeout: self.health_timeout,
                resolve_interval: self.resolve_interval,
                connect_timeout: self.health_timeout,
                balancing: match self.balancer {
                    Policy::PeakEwma => Balancing::Latency {
                        floor: self.latency_floor,
                    },
                    Policy::Pending => Balancing::Pending,
                    Policy::RoundRobin => Balancing::Count,
                },
                request_timeout: self.request_timeout,
                no_backend_wait: self.no_backend_wait,
                tls: self.backend_tls()?,
                token_mode: self.auth.mode == eventsys::auth::Mode::Jwt,
            },
            settings: Settings {
                sse_keep_alive: self.sse_keep_alive,
                sse_max_duration: self.sse_max_duration,
                presence_interval: self.presence_interval,
                presence_debounce: self.presence_debounce,
                sse_buffer: self.sse_buffer_bytes.max(1),
                body_limit: BODY_LIMIT,
                request_timeout: self.request_timeout,
                limits: LimitSettings {
                    rate: self.rate_limit,
                    max_streams: self.max_sse_streams,
                    max_streams_per_client: self.max_sse_per_client,
                },
                browsers: self.browsers()?,
                access_log: self.access_log,
                grpc_reflection: self.auth.reflection(),
            },
            connections: ConnectionLimits {
                max_connections: self.max_connections.max(1),
                header_timeout: self.header_timeout,
                max_streams: self.max_streams_per_connection.max(1),
                keepalive: Duration::from_secs(30),
            },
            drain_timeout: self.drain_timeout,
            shutdown_delay: self.shutdown_delay,
            auth: Arc::new(Auth::anonymous()),
            service: crate::presence::ServiceToken::None,
            tls: self.tls.files(),
        })
    }

    /// In token mode every call carries its caller's bearer token (and presence reports the
    /// gateway's own) to a backend: says so when that crosses a network in plaintext.
    fn warn_of_plaintext_tokens(&self, backends: &[String]) {
        if self.auth.mode != eventsys::auth::Mode::Jwt || self.backend_ca.is_some() {
            return;
        }
        let exposed: Vec<&str> = backends
            .iter()
            .map(String::as_str)
            .filter(|backend| !eventsys::host::is_loopback(backend))
            .collect();
        if !exposed.is_empty() {
            tracing::warn!(
                backends = ?exposed,
                "token mode with plaintext backends off this machine: callers' bearer tokens \
                 cross the network readable; give --backend-ca (TLS to the backends) or keep \
                 them on loopback"
            );
        }
    }

    /// CORS origins and allowed host names.
    fn browsers(&self) -> Result<Browsers, Fatal> {
        let listed = |values: &[String]| -> Option<Vec<String>> {
            let values: Vec<String> = values
                .iter()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            (!values.iter().any(|v| v == "*")).then_some(values)
        };
        let anonymous = self.auth.mode == eventsys::auth::Mode::None;
        let cors_origins = match listed(&self.cors_origins) {
            None => {
                if anonymous {
                    tracing::warn!(
                        "--cors-origins '*' in anonymous mode: a page on any web site can read \
                         and change every user's events through this gateway; list the pages' \
                         origins instead, or use token mode"
                    );
                }
                CorsOrigins::Any
            }
            Some(origins) if origins.is_empty() && anonymous => CorsOrigins::Loopback,
            Some(origins) if origins.is_empty() => CorsOrigins::Any,
            Some(origins) => CorsOrigins::Listed(
                origins
                    .into_iter()
                    .map(|o| HeaderValue::try_from(o.as_str()).map_err(|_| Fatal::Origin(o)))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let hosts = match listed(&self.allowed_hosts) {
            None => Hosts::Any,
            Some(names) if names.is_empty() => Hosts::Loopback,
            Some(names) => Hosts::Named(names),
        };
        Ok(Browsers {
            cors_origins,
            hosts: HostPolicy::new(hosts),
        })
    }

    /// TLS to the backends: their CA, and a client identity for mTLS.
    fn backend_tls(&self) -> Result<Option<BackendTls>, Fatal> {
        let Some(ca) = &self.backend_ca else {
            return Ok(None);
        };
        let identity = self
            .backend_client_cert
            .as_deref()
            .zip(self.backend_client_key.as_deref());
        BackendTls::from_pem(ca, identity, self.backend_tls_name.as_deref())
            .map(Some)
            .map_err(Fatal::BackendTls)
    }
}

/// Entry point of the `gateway` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs with the given command line (program name first), as `gateway` would; the launcher's
/// multi-call binary enters here.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    process::run_main("gateway", || Config::parse_from(args), run)
}

/// The configuration `gateway ARGS` would serve with on `listening` (program name first): the
/// binary's own flags and rules for a gateway run in another process's runtime (the tests'
/// in-process servers). Where it listens (`--host`, `--port`) is the caller's.
pub async fn config_from<I, T>(args: I, listening: SocketAddr) -> Result<GatewayConfig, String>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let config = Config::try_parse_from(args).map_err(|err| err.to_string())?;
    let mut gateway = config.validate().map_err(|err| err.to_string())?;
    gateway.auth = Arc::new(
        config
            .auth
            .build(&[listening])
            .await
            .map_err(|err| err.to_string())?,
    );
    gateway.service = config.service_token().map_err(|err| err.to_string())?;
    Ok(gateway)
}

async fn run(config: Config, inherited: Inherited) -> Result<(), Fatal> {
    let mut gateway = config.validate()?;
    let shutdown = process::shutdown_signal()?;
    let addr = SocketAddr::new(config.host, config.port);
    let (listener, origin) = inherited
        .listen(addr)
        .await
        .map_err(|source| Fatal::Bind { addr, source })?;
    if origin == Origin::Inherited {
        tracing::debug!("serving on the listening socket handed over by the supervisor");
    }
    let listening = listener.local_addr().map_err(Fatal::Serve)?;
    // Every connection is a descriptor: a cap above the open-file limit would end in accept
    // errors instead of clean refusals.
    if let Some(files) = process::open_file_limit() {
        let room = usize::try_from(files.saturating_sub(256))
            .unwrap_or(usize::MAX)
            .max(1);
        if gateway.connections.max_connections > room {
            tracing::warn!(
                max_connections = gateway.connections.max_connections,
                open_files = files,
                "--max-connections lowered to fit the open-file limit"
            );
            gateway.connections.max_connections = room;
        }
    }
    gateway.auth = Arc::new(config.auth.build(&[listening]).await?);
    gateway.service = config.service_token()?;
    tracing::info!(backends = ?gateway.upstream.backends, "balancing over");
    serve(listener, gateway, shutdown)
        .await
        .map_err(Fatal::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("gateway").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn cors_origins_default_to_this_machines_pages_without_tokens_and_any_with() {
        let origins = |args: &[&str]| parse(args).validate().unwrap().settings.browsers;
        let origins = |args: &[&str]| origins(args).cors_origins;
        assert!(matches!(origins(&[]), CorsOrigins::Loopback));
        assert!(matches!(origins(&["--auth", "jwt"]), CorsOrigins::Any));
        assert!(matches!(
            origins(&["--cors-origins", "*"]),
            CorsOrigins::Any
        ));
        let listed = origins(&["--cors-origins", "https://app.example, http://localhost:1"]);
        assert!(matches!(listed, CorsOrigins::Listed(list) if list.len() == 2));
        let err = parse(&["--cors-origins", "bad\norigin"])
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid --cors-origins"),
            "{err}"
        );
    }

    #[test]
    fn backends_must_be_host_and_port() {
        let ok = parse(&["--backends", "127.0.0.1:5000, events.svc:5001,[::1]:5002"]);
        assert_eq!(ok.validate().unwrap().upstream.backends.len(), 3);
        for bad in ["127.0.0.1", ":5000", "host:0", "host:http", ","] {
            let err = parse(&["--backends", bad])
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("invalid --backends"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_parse_and_must_be_positive() {
        let c = parse(&["--request-timeout", "250ms", "--health-interval", "1s"]);
        assert_eq!(c.request_timeout, Duration::from_millis(250));
        let err = parse(&["--health-interval", "0s"]).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --health-interval: must be more than zero"
        );
    }
}
