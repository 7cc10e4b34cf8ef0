//! The `eventsys` command line. `eventsys [up]` runs the whole system; `eventsys backend …` and
//! `eventsys gateway …` are the two servers themselves (the processes `up` starts, one binary
//! for all so that building it builds everything it runs).

use std::{ffi::OsString, net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::up;

/// Runs the event system: N gRPC backends over one store and the REST/SSE gateway in front.
#[derive(Debug, Parser)]
#[command(name = "eventsys", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
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
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// How many backends to start.
    #[arg(long = "backends", default_value_t = 3)]
    pub count: u16,

    /// Port of the first backend; the others follow it. 0 gives every backend a free port.
    #[arg(long, default_value_t = 5000)]
    pub base_port: u16,

    /// Port of the gateway (the REST API). 0 picks a free one.
    #[arg(long, env = "GATEWAY_PORT", default_value_t = 3000)]
    pub gateway_port: u16,

    /// Address every server listens on (0.0.0.0 to accept other machines).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Store URI: sqlite://PATH or mongodb://… [default: sqlite://DATA_DIR/events.db, or
    /// MONGO_URI when set]
    #[arg(long, env = "STORE_URI")]
    pub store: Option<String>,

    /// MongoDB URI, the store when --store is not given.
    #[arg(long, env = "MONGO_URI", hide_env_values = true)]
    pub mongo_uri: Option<String>,

    /// Folder of the embedded store.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
}

/// Entry point of the `eventsys` binary.
pub fn main() -> ExitCode {
    // Before parsing: flags fall back to variables that `.env` may set.
    if let Err(err) = eventsys::process::load_dotenv() {
        eprintln!("eventsys: {err}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let program = |name: &str| std::iter::once(OsString::from(format!("eventsys {name}")));
    match cli.command {
        Some(Command::Backend { args }) => {
            crate::lifeline::follow_parent();
            eventsvc::cli::main_from(program("backend").chain(args))
        }
        Some(Command::Gateway { args }) => {
            crate::lifeline::follow_parent();
            gateway::cli::main_from(program("gateway").chain(args))
        }
        Some(Command::Up(args)) => up::main(args),
        None => up::main(cli.up),
    }
}
