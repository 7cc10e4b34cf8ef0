//! The `eventsys` command line. `eventsys [up]` runs the whole system; `eventsys backend …` and
//! `eventsys gateway …` are the two servers themselves (the processes `up` starts, one binary
//! for all so that building it builds everything it runs), and `eventsys bench …` the load tool.

use std::{ffi::OsString, net::IpAddr, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::up;

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
            eventsvc::main_from(program("backend").chain(args))
        }
        Some(Command::Gateway { args }) => {
            crate::lifeline::follow_parent();
            gateway::main_from(program("gateway").chain(args))
        }
        Some(Command::Bench { args }) => bench::main_from(program("bench").chain(args)),
        Some(Command::Up(args)) => up::main(args),
        None => up::main(cli.up),
    }
}
