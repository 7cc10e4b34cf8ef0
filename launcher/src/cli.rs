//! The `eventsys` command line. `eventsys [up]` runs the whole system; `eventsys backend …` and
//! `eventsys gateway …` are the two servers themselves (the processes `up` starts, one binary
//! for all so that building it builds everything it runs), `eventsys bench …` the load tool,
//! `eventsys token` a development token and `eventsys probe` a container's health check.

use std::{ffi::OsString, net::IpAddr, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use eventsys::{
    auth::{AuthArgs, Claims, EventsClaim, sign_hs256, sign_with_private_key},
    backoff::Backoff,
};

use crate::{child, up};

/// Runs the event system: N gRPC backends over one store and the REST/SSE gateway in front.
#[derive(Debug, Parser)]
#[command(name = "eventsys", version, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    up: UpArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start every backend and the gateway, supervise them, stop them all on Ctrl-C (default).
    Up(UpArgs),
    /// Run one gRPC backend (the `eventsvc` command; `eventsys backend --help`).
    Backend {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the REST/SSE gateway (the `gateway` command; `eventsys gateway --help`).
    Gateway {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the load tool (the `bench` command; `eventsys bench --help`).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Print a token signed with the configured HMAC secret (JWT_SECRET or --jwt-secret-file),
    /// for development and tests.
    Token(TokenArgs),
    /// Exit 0 when a server is healthy, 1 otherwise: a container's health check (an image
    /// without a shell or curl runs this binary).
    Probe(ProbeArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ProbeArgs {
    /// `grpc://HOST:PORT` (a backend's `grpc.health.v1` says SERVING) or
    /// `http://HOST:PORT/PATH` (a 2xx answer: the gateway's `/healthz` or `/readyz`).
    target: crate::probe::Target,
    /// Longest the probe may take.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct TokenArgs {
    /// The user (`sub`).
    #[arg(long)]
    sub: String,
    /// Topic patterns the token may publish to, comma-separated (`orders`, `orders.*`, `*`).
    #[arg(long, value_delimiter = ',')]
    publish: Vec<String>,
    /// Topic patterns the token may read (history and SSE), comma-separated.
    #[arg(long, value_delimiter = ',')]
    subscribe: Vec<String>,
    /// May use the operational endpoints.
    #[arg(long)]
    admin: bool,
    /// Lifetime.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// `iss` to put in the token.
    #[arg(long)]
    issuer: Option<String>,
    /// `aud` to put in the token.
    #[arg(long)]
    audience: Option<String>,
    /// Sign with this PEM private key (EC P-256 → ES256, RSA → RS256, Ed25519 → EdDSA)
    /// instead of the HMAC secret.
    #[arg(long)]
    jwt_private_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    auth: AuthArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct UpArgs {
    /// How many backends to start.
    #[arg(long = "backends", default_value_t = 3)]
    pub(crate) count: u16,

    /// Port of the first backend; the others follow it. 0 gives every backend a free port.
    #[arg(long, default_value_t = 5000)]
    pub(crate) base_port: u16,

    /// Port of the gateway (the REST API). 0 picks a free one.
    #[arg(long, env = "GATEWAY_PORT", default_value_t = 3000)]
    pub(crate) gateway_port: u16,

    /// Address every server listens on (0.0.0.0 to accept other machines).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub(crate) host: IpAddr,

    #[command(flatten)]
    pub(crate) store: eventsvc::StoreArgs,

    /// Longest wait between restarts of a child that keeps crashing (it is restarted for
    /// ever, waiting twice as long each time up to this).
    #[arg(long = "max-restart-backoff", default_value = "5s", value_parser = child::restart_backoff)]
    pub(crate) restarts: Backoff,

    #[command(flatten)]
    pub(crate) auth: AuthArgs,
}

/// Entry point of the `eventsys` binary.
pub fn main() -> ExitCode {
    // Before parsing: flags fall back to variables that `.env` may set.
    match eventsys::process::load_dotenv() {
        // Named, never their values; the servers it starts find them set already.
        Ok(names) if !names.is_empty() => {
            eprintln!(
                "eventsys: read from .env in the working directory: {}",
                names.join(", ")
            );
        }
        Ok(_) => {}
        Err(err) => {
            eprintln!("eventsys: {err}");
            return ExitCode::FAILURE;
        }
    }
    let cli = Cli::parse();
    let program = |name: &str| std::iter::once(OsString::from(format!("eventsys {name}")));
    match cli.command {
        Some(Command::Backend { args }) => {
            crate::lifeline::follow_parent();
            eventsvc::main_from(program("backend").chain(args))
        }
        Some(Command::Gateway { args }) => {
            crate::lifeline::follow_parent();
            gateway::main_from(program("gateway").chain(args))
        }
        Some(Command::Bench { args }) => bench::main_from(program("bench").chain(args)),
        Some(Command::Token(args)) => token(args),
        Some(Command::Probe(args)) => probe(args),
        Some(Command::Up(args)) => up::main(args),
        None => up::main(cli.up),
    }
}

/// `eventsys probe`: exit 0 when the target is healthy.
fn probe(args: ProbeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("eventsys: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if runtime.block_on(crate::probe::once(&args.target, args.timeout)) {
        ExitCode::SUCCESS
    } else {
        eprintln!("eventsys: {:?} is not healthy", args.target);
        ExitCode::FAILURE
    }
}

/// `eventsys token`: prints a signed token, or a one-line reason.
fn token(args: TokenArgs) -> ExitCode {
    let fail = |reason: &dyn std::fmt::Display| {
        eprintln!("eventsys: {reason}");
        ExitCode::FAILURE
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let claims = Claims {
        sub: args.sub,
        exp: (now + args.ttl).as_secs(),
        nbf: None,
        iss: args.issuer,
        aud: args.audience.map(Into::into),
        events: EventsClaim {
            publish: args.publish,
            subscribe: args.subscribe,
            admin: args.admin,
        },
    };
    let signed = match &args.jwt_private_key {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => sign_with_private_key(&pem, &claims),
            Err(err) => return fail(&format!("{}: {err}", path.display())),
        },
        None => match args.auth.secret() {
            Ok(Some(secret)) => sign_hs256(&secret, &claims),
            Ok(None) => {
                return fail(
                    &"token signs with an HMAC secret (JWT_SECRET or \
                               --jwt-secret-file) or --jwt-private-key",
                );
            }
            Err(err) => return fail(&err),
        },
    };
    match signed {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err),
    }
}
