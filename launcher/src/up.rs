//! `eventsys up`: checks the ports, starts the backends and waits until each reports healthy,
//! starts the gateway in front of them, prints where everything is, and on Ctrl-C or SIGTERM
//! stops the gateway first (it drains), then the backends.

use std::{
    io::IsTerminal,
    net::{SocketAddr, TcpListener},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use eventsvc::store::StoreUri;
use eventsys::process::{self, SetupError};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    child::{GaveUp, Spec, Supervised},
    cli::UpArgs,
    console::{Console, LabelledWriter},
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
    #[error("{0} did not become ready within {START_TIMEOUT:?}")]
    NotReady(String),
    #[error(transparent)]
    GaveUp(#[from] GaveUp),
    #[error("every backend has been given up on")]
    NoBackends,
}

/// What `up` will start.
struct Plan {
    args: UpArgs,
    store: String,
    backend_ports: Vec<u16>,
}

impl Plan {
    fn new(args: UpArgs) -> Result<Plan, Fatal> {
        if args.count == 0 {
            return Err(Fatal::Config("--backends must be at least 1".into()));
        }
        let store = match (&args.store, &args.mongo_uri) {
            (Some(store), _) => store.clone(),
            (None, Some(mongo)) => mongo.clone(),
            (None, None) => format!("sqlite://{}", args.data_dir.join("events.db").display()),
        };
        store
            .parse::<StoreUri>()
            .map_err(|e| Fatal::Config(format!("invalid store: {e}")))?;
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

    /// Fails, naming the port, if any fixed port is taken; run before anything starts.
    fn check_ports(&self) -> Result<(), Fatal> {
        let ports = self.backend_ports.iter().chain([&self.args.gateway_port]);
        for &port in ports.filter(|p| **p != 0) {
            let addr = SocketAddr::new(self.args.host, port);
            TcpListener::bind(addr).map_err(|source| Fatal::PortInUse { port, addr, source })?;
        }
        Ok(())
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

pub fn main(args: UpArgs) -> ExitCode {
    let fail = |err: Fatal| {
        eprintln!("eventsys: {err}");
        ExitCode::FAILURE
    };
    let plan = match Plan::new(args) {
        Ok(plan) => plan,
        Err(err) => return fail(err),
    };
    if let Err(err) = plan.check_ports() {
        return fail(err);
    }
    let mut names = vec!["eventsys".to_owned(), "gateway".to_owned()];
    names.extend(plan.backend_names());
    let console = Console::new(&names);
    let label = console.label("eventsys", 0);
    let writer = {
        let console = console.clone();
        move || LabelledWriter::new(console.clone(), label.clone())
    };
    if let Err(err) = process::init_tracing_to(writer, std::io::stdout().is_terminal()) {
        return fail(err.into());
    }
    // One thread: children are spawned from it, and their parent-death signal follows the
    // thread that spawned them.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(Fatal::Runtime(err)),
    };
    match runtime.block_on(run(plan, console)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            fail(err)
        }
    }
}

/// A child and the task supervising it.
type Running = (Arc<Supervised>, JoinHandle<Result<(), GaveUp>>);

/// The children of one run, and how to stop them.
struct Fleet {
    backends: Vec<Running>,
    gateway: Option<Running>,
    stop_backends: CancellationToken,
    stop_gateway: CancellationToken,
    force: CancellationToken,
    /// Children given up on, as they are.
    gave_up: mpsc::UnboundedReceiver<GaveUp>,
    report: mpsc::UnboundedSender<GaveUp>,
}

impl Fleet {
    /// Supervises `child` until `stop`, reporting if it is given up on.
    fn supervise(
        &self,
        child: &Arc<Supervised>,
        stop: &CancellationToken,
    ) -> JoinHandle<Result<(), GaveUp>> {
        let supervised = child.clone().supervise(stop.clone(), self.force.clone());
        let report = self.report.clone();
        tokio::spawn(async move {
            let outcome = supervised.await;
            if let Err(gave_up) = &outcome {
                let _ = report.send(gave_up.clone());
            }
            outcome
        })
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

async fn run(plan: Plan, console: Arc<Console>) -> Result<(), Fatal> {
    let mut terminate = signal(SignalKind::terminate()).map_err(SetupError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(SetupError::Signals)?;
    let (report, gave_up) = mpsc::unbounded_channel();
    let mut fleet = Fleet {
        backends: Vec::new(),
        gateway: None,
        stop_backends: CancellationToken::new(),
        stop_gateway: CancellationToken::new(),
        force: CancellationToken::new(),
        gave_up,
        report,
    };
    let host = plan.args.host;
    for (i, (name, port)) in plan
        .backend_names()
        .into_iter()
        .zip(&plan.backend_ports)
        .enumerate()
    {
        let spec = Spec {
            name: name.clone(),
            subcommand: "backend",
            host,
            port: *port,
            args: vec!["--store".into(), plan.store.clone()],
        };
        let child = Supervised::new(spec, console.label(&name, i + 2), console.clone());
        let task = fleet.supervise(&child, &fleet.stop_backends);
        fleet.backends.push((child, task));
    }

    let started = tokio::select! {
        started = start(&plan, &console, &mut fleet) => started,
        _ = terminate.recv() => Err(Fatal::Config("stopped during start-up (SIGTERM)".into())),
        _ = interrupt.recv() => Err(Fatal::Config("stopped during start-up (SIGINT)".into())),
    };
    let outcome = match started {
        Ok(()) => watch(&mut fleet, &mut terminate, &mut interrupt).await,
        Err(err) => Err(err),
    };

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
    outcome
}

/// Waits for every backend to listen and report healthy, then starts the gateway over them.
async fn start(plan: &Plan, console: &Arc<Console>, fleet: &mut Fleet) -> Result<(), Fatal> {
    let mut addrs = Vec::new();
    for (child, task) in &mut fleet.backends {
        let addr = tokio::select! {
            ready = ready(child) => ready?,
            ended = &mut *task => return Err(ended_early(child.name(), ended)),
        };
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
        host: plan.args.host,
        port: plan.args.gateway_port,
        args: vec!["--backends".into(), list],
    };
    let gateway = Supervised::new(spec, console.label("gateway", 1), console.clone());
    let mut task = fleet.supervise(&gateway, &fleet.stop_gateway);
    let mut listening = gateway.listening();
    let waited = tokio::time::timeout(START_TIMEOUT, async {
        tokio::select! {
            addr = listening.wait_for(Option::is_some) => Ok(addr.ok().and_then(|a| *a)),
            ended = &mut task => Err(ended_early("gateway", ended)),
        }
    })
    .await;
    let rest = match waited {
        Ok(Ok(Some(addr))) => addr,
        Ok(Err(err)) => return Err(err),
        _ => return Err(Fatal::NotReady("gateway".into())),
    };
    fleet.gateway = Some((gateway, task));
    summary(console, plan, rest, &addrs);
    Ok(())
}

fn ended_early(name: &str, ended: Result<Result<(), GaveUp>, tokio::task::JoinError>) -> Fatal {
    match ended {
        Ok(Err(gave_up)) => gave_up.into(),
        _ => Fatal::NotReady(name.to_owned()),
    }
}

/// Where a backend listens, once it answers its health check with SERVING.
async fn ready(child: &Supervised) -> Result<SocketAddr, Fatal> {
    let not_ready = || Fatal::NotReady(child.name().to_owned());
    tokio::time::timeout(START_TIMEOUT, async {
        let mut listening = child.listening();
        loop {
            let addr = listening
                .wait_for(Option::is_some)
                .await
                .map_err(|_| not_ready())?
                .expect("waited for Some");
            if serving(addr).await {
                return Ok(addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .map_err(|_| not_ready())?
}

async fn serving(addr: SocketAddr) -> bool {
    let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = channel.connect().await else {
        return false;
    };
    let request = HealthCheckRequest {
        service: "events.v1.EventService".into(),
    };
    matches!(
        HealthClient::new(channel).check(request).await,
        Ok(response) if response.get_ref().status == ServingStatus::Serving as i32
    )
}

fn summary(console: &Console, plan: &Plan, rest: SocketAddr, backends: &[SocketAddr]) {
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
        format!("  REST API  http://{rest}/events"),
        format!("  SSE       http://{rest}/subscribe/{{topic}}"),
        format!("  metrics   http://{rest}/metrics"),
        format!(
            "  gRPC      {grpc}   (grpcurl -plaintext {} list)",
            backends[0]
        ),
        "Ctrl-C stops everything.".to_owned(),
    ];
    for line in lines {
        console.line(&label, &line);
    }
}

/// Runs until a signal, or until nothing is left to serve.
async fn watch(
    fleet: &mut Fleet,
    terminate: &mut tokio::signal::unix::Signal,
    interrupt: &mut tokio::signal::unix::Signal,
) -> Result<(), Fatal> {
    let mut backends_left = fleet.backends.len();
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            Some(gave_up) = fleet.gave_up.recv() => {
                if gave_up.name == "gateway" {
                    return Err(gave_up.into());
                }
                tracing::error!("{gave_up}");
                backends_left -= 1;
                if backends_left == 0 {
                    return Err(Fatal::NoBackends);
                }
            }
        }
    }
}
