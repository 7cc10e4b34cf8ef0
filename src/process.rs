//! Process plumbing shared by the binaries: `.env` loading, `tracing` set-up from `RUST_LOG`,
//! SIGINT/SIGTERM as a shutdown future, resident memory for the stats endpoints, and the
//! process figures of `/metrics` (`ProcessCollector`).

use std::io::{IsTerminal, Write};

use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

mod collector;

pub use collector::ProcessCollector;

/// The servers' global allocator (each binary's `main.rs` installs it). jemalloc touches only
/// the pages of an allocation that are written, where glibc's inline chunk headers touch the
/// pages around each one: an open SSE stream (two 8 KiB connection buffers, mostly unused)
/// holds 10.2 KiB of gateway memory with it, 14.5 KiB with glibc's malloc, and the gateway
/// spends about 4% less CPU per delivery (`bench/ab_fanout.sh`, BENCHMARKS.md).
pub use tikv_jemallocator::Jemalloc as Allocator;

use crate::listen::Inherited;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid .env file: {0}")]
    DotEnv(#[from] dotenvy::Error),
    #[error("invalid RUST_LOG: {0}")]
    LogFilter(#[from] tracing_subscriber::filter::ParseError),
    #[error("invalid LOG_FORMAT {0:?}: `text` (the default) or `json`")]
    LogFormat(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot use the listening socket handed over: {0}")]
    Inherited(#[source] std::io::Error),
}

/// A server binary's whole `main`: `.env`, flags (`parse`), a listening socket handed over by a
/// supervisor (taken while the process has one thread), logging, a runtime, then `run`. Any
/// failure exits 1 with one line, `NAME: reason`.
pub fn run_main<C, E, Fut>(
    name: &str,
    parse: impl FnOnce() -> C,
    run: impl FnOnce(C, Inherited) -> Fut,
) -> std::process::ExitCode
where
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let fail = |reason: &dyn std::fmt::Display| {
        eprintln!("{name}: {reason}");
        std::process::ExitCode::FAILURE
    };
    let from_dotenv = match load_dotenv() {
        Ok(names) => names,
        Err(err) => return fail(&err),
    };
    let config = parse();
    let inherited = match Inherited::take() {
        Ok(inherited) => inherited,
        Err(err) => return fail(&SetupError::Inherited(err)),
    };
    let log = match init_tracing() {
        Ok(guard) => guard,
        Err(err) => return fail(&err),
    };
    if !from_dotenv.is_empty() {
        tracing::info!(variables = %from_dotenv.join(", "), "read from .env in the working directory");
    }
    let spans = match crate::otlp::init(service_name(name)) {
        Ok(guard) => guard,
        Err(err) => return fail(&err),
    };
    raise_open_file_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the runtime: {err}")),
    };
    let outcome = runtime.block_on(run(config, inherited));
    // Every log line written before the one-line reason, which stays the last line.
    drop(runtime);
    drop(spans);
    drop(log);
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// The OpenTelemetry `service.name` of a server binary.
fn service_name(name: &str) -> &'static str {
    match name {
        "gateway" => "eventsys-gateway",
        "eventsvc" => "eventsys-backend",
        _ => "eventsys",
    }
}

/// Raises the soft open-file limit to the hard one: every connection and stream is a
/// descriptor, and the common soft default of 1,024 would stop a server long before its memory
/// does. Logged, since it bounds how many clients the process can hold.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "open-file limit raised"),
            Err(err) => {
                tracing::warn!(soft, hard, error = %err, "cannot raise the open-file limit")
            }
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open-file limit"),
        Err(err) => tracing::warn!(error = %err, "cannot read the open-file limit"),
    }
}

/// CPU time (user and system) the process has used so far.
fn cpu_time() -> std::time::Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(std::time::Duration::ZERO, |usage| {
        let micros = |t: nix::sys::time::TimeVal| {
            std::time::Duration::new(t.tv_sec().max(0) as u64, 0)
                + std::time::Duration::from_micros(t.tv_usec().max(0) as u64)
        };
        micros(usage.user_time()) + micros(usage.system_time())
    })
}

/// Open file descriptors of this process, from `/proc/self/fd` (0 elsewhere).
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64)
}

/// The soft open-file limit now in force, if it can be read.
pub fn open_file_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Reads `.env` in the working directory, if there is one, into the environment (variables
/// set already keep their value). Only there: dotenvy's `dotenv()` also reads the first
/// `.env` of any parent folder, so a file in a folder above the server's (one anybody may
/// write to, say) would configure it. Returns the names it set, for the log; never the values.
pub fn load_dotenv() -> Result<Vec<String>, SetupError> {
    let before: std::collections::HashSet<_> = std::env::vars_os().map(|(name, _)| name).collect();
    match dotenvy::from_path(".env") {
        Err(err) if err.not_found() => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
        Ok(()) => {}
    }
    let mut taken: Vec<String> = std::env::vars_os()
        .filter(|(name, _)| !before.contains(name))
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .collect();
    taken.sort();
    Ok(taken)
}

/// Log lines waiting for the writer thread at most. Beyond this, lines are dropped (and
/// counted) rather than stalling the threads that serve requests on a slow or stopped reader of
/// stderr: with `--access-log`, every request writes one.
const LOG_QUEUE_LINES: usize = 16 * 1024;

/// Keeps the log writer thread running; dropping it flushes what is queued and reports how
/// many lines were dropped, if any.
#[must_use = "logs stop being written when this is dropped"]
pub struct LogGuard {
    _writer: tracing_appender::non_blocking::WorkerGuard,
    dropped: tracing_appender::non_blocking::ErrorCounter,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let dropped = self.dropped.dropped_lines();
        if dropped > 0 {
            // Not `eprintln!`: it panics when stderr is a broken pipe.
            let _ = writeln!(
                std::io::stderr(),
                "{dropped} log lines dropped: stderr was not read fast enough"
            );
        }
    }
}

/// Logs to stderr through a writer thread (a log line costs the caller a copy into a bounded
/// queue, never a system call), filtered by `RUST_LOG` (default `info`); colour only on a
/// terminal.
pub fn init_tracing() -> Result<LogGuard, SetupError> {
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    init_tracing_to(writer, ansi, LogFormat::from_env()?)?;
    Ok(LogGuard {
        _writer: guard,
        dropped,
    })
}

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable lines (the default).
    Text,
    /// One JSON object per line, for log shippers: `timestamp`, `level`, `target`, the event's
    /// fields (`message` among them), and the fields of the spans it is in (`span`, `spans`).
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` from the environment: unset or empty is `text`.
    pub fn from_env() -> Result<LogFormat, SetupError> {
        match std::env::var("LOG_FORMAT").unwrap_or_default().as_str() {
            "" | "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(SetupError::LogFormat(other.to_owned())),
        }
    }
}

/// Logs to `writer`, filtered by `RUST_LOG` (default `info`), in `format`.
///
/// `RUST_LOG` of targets and levels (`info`, `eventsvc=debug,h2=warn`: what operators write) is
/// read as a `Targets` filter, decided once per call site; only a spec with span or field
/// directives needs `EnvFilter`, which takes a lock on every span entry and exit (every poll of
/// every request's future, each request being in a span).
pub fn init_tracing_to<W>(writer: W, ansi: bool, format: LogFormat) -> Result<(), SetupError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::{
        Layer, Registry,
        filter::Targets,
        layer::{Filter, SubscriberExt},
        util::SubscriberInitExt,
    };

    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|spec| !spec.is_empty())
        .unwrap_or_else(|| "info".to_owned());
    // Checked by EnvFilter's grammar (whose errors operators know); `Targets` reads the same
    // spec when it has no span directive (`[...]`).
    let checked = EnvFilter::try_new(&spec)?;
    let filter: Box<dyn Filter<Registry> + Send + Sync> = match spec.parse::<Targets>() {
        Ok(targets) if !spec.contains('[') => Box::new(targets),
        _ => Box::new(checked),
    };
    // A log nobody reads any more (the supervisor died with our stdout's other end) must not
    // stop the process: by default a failed write is reported with `eprintln!`, which panics
    // when stderr is that same broken pipe, in whatever task was logging.
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .log_internal_errors(false);
    let layer = match format {
        LogFormat::Text => layer.with_ansi(ansi).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .init();
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM. The handlers are installed when this is called,
/// so call it before start-up work that a signal must not interrupt abruptly.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, SetupError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(SetupError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(SetupError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Resident memory of this process in bytes, from `/proc/self/status` (0 elsewhere).
pub fn resident_memory() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_cpu_time() {
        let before = super::cpu_time();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(super::cpu_time() > before);
    }

    #[test]
    fn reads_resident_memory() {
        if cfg!(target_os = "linux") {
            assert!(super::resident_memory() > 1024 * 1024);
        }
    }
}
