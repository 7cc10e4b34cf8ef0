//! `eventsys up`: binds every port itself (a taken one stops everything before it starts),
//! starts the backends on their sockets and waits until each reports healthy, starts the
//! gateway in front of them, prints where everything is, and on Ctrl-C or SIGTERM stops the
//! gateway first (it drains), then the backends.

use std::{
    io::IsTerminal,
    net::{SocketAddr, TcpListener},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use eventsvc::store::StoreUri;
use eventsys::process::{self, LogFormat, SetupError};
use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{
    child::{Spec, Supervised},
    cli::UpArgs,
    console::{Console, LabelledWriter},
    probe,
};

/// How long a child may take to listen and report healthy at start-up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("{0}")]
    Config(String),
    #[error("port {port} is already in use ({addr}): {source}")]
    PortInUse {
        port: u16,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot use the socket of port {port}: {source}")]
    Socket { port: u16, source: std::io::Error },
    #[error("{0} did not become ready within {START_TIMEOUT:?}")]
    NotReady(String),
}

/// What `up` will start.
struct Plan {
    args: UpArgs,
    /// The store as chosen (it may hold credentials: children get it in their environment).
    store: String,
    backend_ports: Vec<u16>,
}

/// The sockets `up` serves on, bound before anything starts.
struct Sockets {
    backends: Vec<TcpListener>,
    /// Each backend's metrics endpoint, on a free port of the same host.
    metrics: Vec<TcpListener>,
    gateway: TcpListener,
}

impl Plan {
    fn new(args: UpArgs) -> Result<Plan, Fatal> {
        if args.count == 0 {
            return Err(Fatal::Config("--backends must be at least 1".into()));
        }
        let invalid = |e| Fatal::Config(format!("invalid store: {e}"));
        let store = args.store.chosen().map_err(invalid)?;
        store.parse::<StoreUri>().map_err(invalid)?;
        let backend_ports = if args.base_port == 0 {
            vec![0; usize::from(args.count)]
        } else {
            let last = u32::from(args.base_port) + u32::from(args.count) - 1;
            if last > u32::from(u16::MAX) {
                return Err(Fatal::Config(format!(
                    "{} backends from port {} run past port 65535",
                    args.count, args.base_port
                )));
            }
            (args.base_port..=last as u16).collect()
        };
        // Protected mode and the key, checked before anything starts.
        let listeners: Vec<SocketAddr> = backend_ports
            .iter()
            .chain([&args.gateway_port])
            .map(|&port| SocketAddr::new(args.host, port))
            .collect();
        args.auth
            .check(&listeners)
            .map_err(|e| Fatal::Config(e.to_string()))?;
        if args.gateway_port != 0 && backend_ports.contains(&args.gateway_port) {
            return Err(Fatal::Config(format!(
                "gateway port {} is also a backend port",
                args.gateway_port
            )));
        }
        Ok(Plan {
            args,
            store,
            backend_ports,
        })
    }

    /// Binds every port (0: a free one), failing on the first one that is taken. The
    /// children serve on these very sockets, so nothing can take a port in between.
    fn bind(&self) -> Result<Sockets, Fatal> {
        let bind = |port| {
            let addr = SocketAddr::new(self.args.host, port);
            TcpListener::bind(addr).map_err(|source| Fatal::PortInUse { port, addr, source })
        };
        Ok(Sockets {
            backends: self
                .backend_ports
                .iter()
                .map(|&port| bind(port))
                .collect::<Result<_, _>>()?,
            metrics: self
                .backend_ports
                .iter()
                .map(|_| bind(0))
                .collect::<Result<_, _>>()?,
            gateway: bind(self.args.gateway_port)?,
        })
    }

    fn backend_names(&self) -> Vec<String> {
        self.backend_ports
            .iter()
            .enumerate()
            .map(|(i, port)| match port {
                0 => format!("backend-{}", i + 1),
                port => format!("backend-{port}"),
            })
            .collect()
    }
}

pub(crate) fn main(args: UpArgs) -> ExitCode {
    let fail = |err: Fatal| {
        eprintln!("eventsys: {err}");
        ExitCode::FAILURE
    };
    let plan = match Plan::new(args) {
        Ok(plan) => plan,
        Err(err) => return fail(err),
    };
    let sockets = match plan.bind() {
        Ok(sockets) => sockets,
        Err(err) => return fail(err),
    };
    let mut names = vec!["eventsys".to_owned(), "gateway".to_owned()];
    names.extend(plan.backend_names());
    let format = match LogFormat::from_env() {
        Ok(format) => format,
        Err(err) => return fail(err.into()),
    };
    let console = Console::new(&names, format);
    let label = console.label("eventsys", 0);
    let writer = {
        let console = console.clone();
        move || LabelledWriter::new(console.clone(), label.clone())
    };
    if let Err(err) = process::init_tracing_to(writer, std::io::stdout().is_terminal(), format) {
        return fail(err.into());
    }
    // Children inherit it.
    process::raise_open_file_limit();
    // One thread: children are spawned from it, and their parent-death signal follows the
    // thread that spawned them.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(Fatal::Runtime(err)),
    };
    match runtime.block_on(run(plan, sockets, console)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            fail(err)
        }
    }
}

/// A child and the task supervising it.
type Running = (Arc<Supervised>, JoinHandle<()>);

/// The children of one run, and how to stop them.
struct Fleet {
    backends: Vec<Running>,
    gateway: Option<Running>,
    stop_backends: CancellationToken,
    stop_gateway: CancellationToken,
    force: CancellationToken,
}

impl Fleet {
    /// Supervises `child` until `stop`.
    fn supervise(&self, child: &Arc<Supervised>, stop: &CancellationToken) -> JoinHandle<()> {
        tokio::spawn(child.clone().supervise(stop.clone(), self.force.clone()))
    }

    /// Gateway first, so it drains against live backends; then the backends.
    async fn stop(mut self) {
        self.stop_gateway.cancel();
        if let Some((_, task)) = self.gateway.take() {
            let _ = task.await;
        }
        self.stop_backends.cancel();
        for (_, task) in self.backends.drain(..) {
            let _ = task.await;
        }
    }
}

async fn run(plan: Plan, sockets: Sockets, console: Arc<Console>) -> Result<(), Fatal> {
    let mut terminate = signal(SignalKind::terminate()).map_err(SetupError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(SetupError::Signals)?;
    let mut fleet = Fleet {
        backends: Vec::new(),
        gateway: None,
        stop_backends: CancellationToken::new(),
        stop_gateway: CancellationToken::new(),
        force: CancellationToken::new(),
    };
    let workers = worker_threads(plan.backend_ports.len() + 1);
    for (i, ((name, listener), metrics)) in plan
        .backend_names()
        .into_iter()
        .zip(sockets.backends)
        .zip(sockets.metrics)
        .enumerate()
    {
        let spec = Spec {
            name: name.clone(),
            subcommand: "backend",
            listener,
            metrics: Some(metrics),
            args: Vec::new(),
            env: plan
                .args
                .store
                .to_env()
                .into_iter()
                .chain(plan.args.auth.to_env())
                .chain(workers.iter().cloned())
                .collect(),
            restarts: plan.args.restarts,
        };
        let child = supervised(spec, console.label(&name, i + 2), &console)?;
        let task = fleet.supervise(&child, &fleet.stop_backends);
        fleet.backends.push((child, task));
    }

    let started = tokio::select! {
        started = start(&plan, sockets.gateway, &workers, &console, &mut fleet) => started,
        _ = terminate.recv() => Err(Fatal::Config("stopped during start-up (SIGTERM)".into())),
        _ = interrupt.recv() => Err(Fatal::Config("stopped during start-up (SIGINT)".into())),
    };
    if started.is_ok() {
        // Children are restarted for ever: only a signal ends the run.
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    }

    tracing::info!("stopping: gateway first, then the backends");
    let force = fleet.force.clone();
    let stopping = fleet.stop();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            () = &mut stopping => break,
            // A second Ctrl-C: do not wait for draining.
            _ = interrupt.recv() => force.cancel(),
            _ = terminate.recv() => force.cancel(),
        }
    }
    tracing::info!("all stopped");
    console.flush(Duration::from_secs(1));
    started
}

/// `TOKIO_WORKER_THREADS` for each of `children` sharing this machine: its cores divided among
/// them. A runtime with more workers than the cores it gets spends its time waking and parking
/// them (BENCHMARKS.md: on 2 cores shared with three backends, a gateway on one worker spends
/// about a fifth less CPU per request than on two). An operator's own setting is inherited.
fn worker_threads(children: usize) -> Vec<(&'static str, String)> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return Vec::new();
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let each = cores.div_ceil(children.max(1)).max(1);
    vec![("TOKIO_WORKER_THREADS", each.to_string())]
}

fn supervised(
    spec: Spec,
    label: crate::console::Label,
    console: &Arc<Console>,
) -> Result<Arc<Supervised>, Fatal> {
    let port = spec.listener.local_addr().map_or(0, |a| a.port());
    Supervised::new(spec, label, console.clone()).map_err(|source| Fatal::Socket { port, source })
}

/// Waits for every backend to report healthy, then starts the gateway over them (with
/// `workers` in its environment) and waits until it answers.
async fn start(
    plan: &Plan,
    gateway: TcpListener,
    workers: &[(&'static str, String)],
    console: &Arc<Console>,
    fleet: &mut Fleet,
) -> Result<(), Fatal> {
    let mut addrs = Vec::new();
    for (child, _) in &fleet.backends {
        let addr = child.addr();
        tokio::time::timeout(START_TIMEOUT, probe::until_backend_ready(addr))
            .await
            .map_err(|_| Fatal::NotReady(child.name().to_owned()))?;
        addrs.push(addr);
    }
    let list = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let spec = Spec {
        name: "gateway".into(),
        subcommand: "gateway",
        listener: gateway,
        metrics: None,
        args: vec!["--backends".into(), list],
        env: plan
            .args
            .auth
            .to_env()
            .into_iter()
            .chain(workers.iter().cloned())
            .collect(),
        restarts: plan.args.restarts,
    };
    let gateway = supervised(spec, console.label("gateway", 1), console)?;
    let task = fleet.supervise(&gateway, &fleet.stop_gateway);
    let rest = gateway.addr();
    fleet.gateway = Some((gateway, task));
    tokio::time::timeout(START_TIMEOUT, probe::until_gateway_ready(rest))
        .await
        .map_err(|_| Fatal::NotReady("gateway".into()))?;
    let metrics: Vec<SocketAddr> = fleet
        .backends
        .iter()
        .filter_map(|(child, _)| child.metrics_addr())
        .collect();
    summary(console, plan, rest, &addrs, &metrics);
    Ok(())
}

fn summary(
    console: &Console,
    plan: &Plan,
    rest: SocketAddr,
    backends: &[SocketAddr],
    metrics: &[SocketAddr],
) {
    let label = console.label("eventsys", 0);
    let grpc = backends
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let lines = [
        format!(
            "ready: {} backend(s) and the gateway, store {}",
            backends.len(),
            StoreUri::to_string(&plan.store.parse().expect("validated at start"))
        ),
        format!("  dashboard http://{rest}/ui"),
        format!("  REST API  http://{rest}/events"),
        format!("  API docs  http://{rest}/docs   (OpenAPI: http://{rest}/openapi.json)"),
        format!("  SSE       http://{rest}/subscribe/{{topic}}"),
        format!("  metrics   http://{rest}/metrics"),
        format!(
            "  backends' metrics  {}",
            metrics
                .iter()
                .map(|m| format!("http://{m}/metrics"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        format!("  gRPC, balanced  {rest}   (grpcurl -plaintext {rest} list)"),
        format!(
            "  gRPC      {grpc}   (each backend directly: grpcurl -plaintext {} list)",
            backends[0]
        ),
        "Ctrl-C stops everything.".to_owned(),
    ];
    for line in lines {
        console.line(&label, &line);
    }
}
