//! The `bench` command line: target, workload, a live progress bar on a terminal, and the
//! report (a table, or `--json`). Exits 1 if any request failed or a subscriber missed events.

use std::{io::IsTerminal, process::ExitCode, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    delay,
    fanout::{self, FanoutSettings, Publishing},
    modes::{self, Endpoint, Limit},
    report::{Recorder, Report},
    soak,
    target::Target,
};

/// Load tool for the event system: drives the gateway's REST API (or the backends directly
/// over gRPC) and reports throughput, latency percentiles, errors and spread over backends.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
pub(crate) struct Cli {
    /// The gateway.
    #[arg(long, default_value = "http://127.0.0.1:3000", conflicts_with = "grpc")]
    gateway: String,

    /// Backends to call directly over gRPC instead (comma-separated host:port), round robin.
    #[arg(long, value_delimiter = ',')]
    grpc: Vec<String>,

    /// Send this token (`Authorization: Bearer`) with every REST request; requests then act
    /// as the token's user.
    #[arg(long, env = "BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Verify the gateway's HTTPS certificate against this CA (PEM).
    #[arg(long)]
    ca_cert: Option<std::path::PathBuf>,

    /// Print the report as JSON.
    #[arg(long)]
    json: bool,

    /// Send a fresh `Idempotency-Key` with every create and publish.
    #[arg(long)]
    idempotency_keys: bool,

    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// The old test client: U users, each doing I rounds of create, update, get, delete, list.
    Mix {
        #[arg(long, default_value_t = 10)]
        users: u32,
        #[arg(long, default_value_t = 50)]
        iterations: u32,
        /// Each round also publishes on the run's topic, followed by one live subscriber; the
        /// run then checks every publish was stored and delivered once, in order, on that one
        /// stream, and that no create was stored twice (gateway only).
        #[arg(long)]
        publish: bool,
    },
    /// One endpoint at a fixed concurrency.
    Closed {
        #[arg(long, value_enum, default_value = "get")]
        endpoint: Endpoint,
        #[arg(long, default_value_t = 16)]
        concurrency: u32,
        /// Stop after this long…
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", conflicts_with = "requests")]
        duration: Duration,
        /// …or after this many requests.
        #[arg(long)]
        requests: Option<u64>,
        /// Event to GET (default: one created for the run).
        #[arg(long)]
        id: Option<String>,
    },
    /// One endpoint at a fixed arrival rate (open loop).
    Rate {
        #[arg(long, value_enum, default_value = "get")]
        endpoint: Endpoint,
        /// Requests per second.
        #[arg(long, default_value_t = 500)]
        rate: u32,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", conflicts_with = "requests")]
        duration: Duration,
        #[arg(long)]
        requests: Option<u64>,
    },
    /// S SSE subscribers spread over T topics, events published round robin over the topics
    /// (P of them by concurrent publishers, or `--rate` per second for `--duration`):
    /// publish-to-delivery latency, a check that every subscriber got its topic's events once,
    /// in order, and the gateway's RSS per stream and CPU per delivery (from its `/metrics`).
    Fanout {
        #[arg(long, default_value_t = 100)]
        subscribers: u32,
        #[arg(long, default_value_t = 1)]
        topics: u32,
        #[arg(long, default_value_t = 1000, conflicts_with = "rate")]
        publishes: u32,
        #[arg(long, default_value_t = 4, conflicts_with = "rate")]
        publishers: u32,
        /// Events per second, whatever the answers' pace (open loop), for `--duration`.
        #[arg(long, requires = "duration")]
        rate: Option<u32>,
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Every subscriber follows all the topics on one stream (`/subscribe?topic=<run>.*`).
        #[arg(long)]
        pattern: bool,
        /// The peer instead of the gateway: `--gateway` is nginx with nchan, publishing by
        /// POST to `/pub/<topic>`, subscribing at `/sub/<topic>` (EventSource); every
        /// subscriber must get what nchan acknowledged, once, in order.
        #[arg(long, conflicts_with = "pattern")]
        nchan: bool,
    },
    /// Users' change feeds: W watchers per user on `/changes` while their events are created,
    /// updated and deleted (at `--rate` writes per second, or by `--writers` concurrent
    /// writers): change-to-watcher latency, a check that every watcher got its user's every
    /// change once, in order, and the gateway's CPU per write and per delivery.
    Changes {
        #[arg(long, default_value_t = 10)]
        users: u32,
        /// Watchers per user (0: the writes alone).
        #[arg(long, default_value_t = 1)]
        watchers: u32,
        /// Writes per second, whatever the answers' pace (open loop).
        #[arg(long, default_value_t = 1000, conflicts_with = "writers")]
        rate: u32,
        /// Concurrent writers instead, each writing as soon as its last write is answered.
        #[arg(long)]
        writers: Option<u32>,
        #[arg(long, value_enum, default_value = "mixed")]
        writes: crate::changes::Writes,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        duration: Duration,
    },
    /// Presence: S SSE subscribers of one topic through the gateway and `--also` (with
    /// `--jwt-secret-file`, spread over `--subjects` named subjects; else anonymous): the
    /// presence query's latency at steady state, the store writes presence costs per second,
    /// and join/leave delivery latency of subjects coming and going one at a time.
    Presence {
        /// A second gateway (the subscribers alternate between the two).
        #[arg(long)]
        also: Option<String>,
        #[arg(long, default_value_t = 1000)]
        subscribers: u32,
        #[arg(long, default_value_t = 100)]
        subjects: u32,
        /// The deployment's HMAC secret, to mint the subjects' tokens.
        #[arg(long)]
        jwt_secret_file: Option<std::path::PathBuf>,
        /// Presence queries at steady state (half `?count=1`).
        #[arg(long, default_value_t = 200)]
        queries: u32,
        /// Subjects that join and leave, one at a time (token mode).
        #[arg(long, default_value_t = 20)]
        changes: u32,
        /// How long the steady state's queries are spread over.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
        duration: Duration,
        /// The gateways' `--presence-debounce`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        debounce: Duration,
    },
    /// A long run under faults injected meanwhile (see BENCHMARKS.md): idempotent requests,
    /// publishes at a rate, and SSE subscribers that reconnect with Last-Event-ID; fails unless
    /// every subscriber holds every stored event once.
    Soak {
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        duration: Duration,
        #[arg(long, default_value_t = 1000)]
        subscribers: u32,
        /// Publishes per second.
        #[arg(long, default_value_t = 20)]
        publish_rate: u32,
        /// Concurrent get/list/update clients.
        #[arg(long, default_value_t = 8)]
        concurrency: u32,
    },
    /// Not a load: a TCP proxy on `--listen` to the backend `--to` that holds everything the
    /// backend sends back for `--delay`, making it a slow backend for the balancing benchmark.
    /// Runs until stopped.
    Delay {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        to: std::net::SocketAddr,
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Duration,
    },
}

fn limit(duration: Duration, requests: Option<u64>) -> Limit {
    requests.map_or(Limit::Duration(duration), Limit::Requests)
}

/// Entry point of the `bench` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs with the given command line (program name first), as `bench` would; the launcher's
/// multi-call binary enters here (`eventsys bench`).
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bench: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn progress(recorder: Arc<Recorder>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {pos} requests {msg}")
            .expect("valid template"),
    );
    let ticking = bar.clone();
    let task = tokio::spawn(async move {
        let started = std::time::Instant::now();
        loop {
            let done = recorder.completed();
            ticking.set_position(done);
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
            ticking.set_message(format!("({rate:.0} req/s)"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (bar, task)
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    if let Workload::Delay { listen, to, delay } = cli.workload {
        delay::run(listen, to, delay).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let target = if cli.grpc.is_empty() {
        Target::rest(&cli.gateway, cli.token.as_deref(), cli.ca_cert.as_deref())?
    } else {
        Target::grpc(&cli.grpc).await?
    };
    let target = Arc::new(target.keyed(cli.idempotency_keys));
    let recorder = Arc::new(Recorder::default());
    let (bar, ticker) = progress(recorder.clone());
    let (elapsed, mode, fanout) = match cli.workload {
        Workload::Mix {
            users,
            iterations,
            publish,
        } => {
            let (elapsed, checked) =
                modes::mix(target, recorder.clone(), users, iterations, publish).await?;
            let mode = format!("mix ({users} users × {iterations} iterations)");
            let checked = checked.map(|(extra, whole)| {
                let report = Report {
                    extra,
                    ..recorder.report(&mode, elapsed)
                };
                (report, whole)
            });
            (elapsed, mode, checked)
        }
        Workload::Closed {
            endpoint,
            concurrency,
            duration,
            requests,
            id,
        } => {
            let limit = limit(duration, requests);
            let elapsed =
                modes::closed(target, recorder.clone(), endpoint, concurrency, limit, id).await?;
            (
                elapsed,
                format!("closed {endpoint:?} × {concurrency}"),
                None,
            )
        }
        Workload::Rate {
            endpoint,
            rate,
            duration,
            requests,
        } => {
            let limit = limit(duration, requests);
            let elapsed = modes::rate(target, recorder.clone(), endpoint, rate, limit).await?;
            (elapsed, format!("rate {endpoint:?} at {rate}/s"), None)
        }
        Workload::Fanout {
            subscribers,
            topics,
            publishes,
            publishers,
            rate,
            duration,
            pattern,
            nchan,
        } => {
            let publishing = match (rate, duration) {
                (Some(per_second), Some(duration)) => Publishing::Open {
                    per_second,
                    duration,
                },
                _ => Publishing::Closed {
                    count: publishes,
                    publishers,
                },
            };
            let settings = FanoutSettings {
                subscribers,
                topics,
                publishing,
                pattern,
                nchan,
            };
            let (elapsed, delivery, whole) =
                fanout::fanout(target, recorder.clone(), settings).await?;
            let events = match publishing {
                Publishing::Open {
                    per_second,
                    duration,
                } => format!("{per_second} events/s for {duration:?}"),
                Publishing::Closed { count, .. } => format!("{count} publishes"),
            };
            let streams = if pattern {
                " (each on all, by a pattern)"
            } else {
                ""
            };
            let mode =
                format!("fanout {subscribers} subscribers on {topics} topics{streams} × {events}");
            (elapsed, mode, Some((delivery, whole)))
        }
        Workload::Changes {
            users,
            watchers,
            rate,
            writers,
            writes,
            duration,
        } => {
            let writing = match writers {
                Some(writers) => crate::changes::Writing::Closed { writers },
                None => crate::changes::Writing::Open { per_second: rate },
            };
            let settings = crate::changes::ChangesSettings {
                users,
                watchers,
                writing,
                writes,
                duration,
            };
            let (elapsed, report, whole) =
                crate::changes::changes(target, recorder.clone(), settings).await?;
            let pace = match writing {
                crate::changes::Writing::Open { per_second } => format!("{per_second} writes/s"),
                crate::changes::Writing::Closed { writers } => format!("{writers} writers"),
            };
            let mode = format!(
                "changes {writes:?} × {pace} for {duration:?}, {users} users × {watchers} watchers"
            );
            (elapsed, mode, Some((report, whole)))
        }
        Workload::Soak {
            duration,
            subscribers,
            publish_rate,
            concurrency,
        } => {
            let settings = soak::SoakSettings {
                duration,
                subscribers,
                publish_rate,
                concurrency,
            };
            let (elapsed, report, whole) = soak::soak(target, recorder.clone(), settings).await?;
            let mode = format!("soak {subscribers} subscribers for {duration:?}");
            (elapsed, mode, Some((report, whole)))
        }
        Workload::Presence {
            also,
            subscribers,
            subjects,
            jwt_secret_file,
            queries,
            changes,
            duration,
            debounce,
        } => {
            let mut gateways = vec![cli.gateway.trim_end_matches('/').to_owned()];
            gateways.extend(also.map(|g| g.trim_end_matches('/').to_owned()));
            let settings = crate::presence::PresenceSettings {
                gateways,
                subscribers,
                subjects,
                secret: jwt_secret_file,
                queries,
                changes,
                steady: duration,
                debounce,
            };
            let (elapsed, report, whole) =
                crate::presence::presence(recorder.clone(), settings).await?;
            let mode = format!("presence {subscribers} subscribers");
            (elapsed, mode, Some((report, whole)))
        }
        Workload::Delay { .. } => unreachable!("`delay` runs before any target is made"),
    };
    ticker.abort();
    bar.finish_and_clear();

    let mut report = recorder.report(&mode, elapsed);
    let mut incomplete = false;
    if let Some((delivery, whole)) = fanout {
        incomplete = !whole;
        report.extra = delivery.extra;
    }
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", report.table());
    }
    if report.failed() > 0 || incomplete {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
