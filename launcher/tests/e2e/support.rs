//! The tests' harness. Servers run in the test's own process (`local`: the backend's and the
//! gateway's libraries on `127.0.0.1:0`, configured by the binaries' own flags) unless the
//! process itself is the point (`launch`: the `eventsys` binary on a socket handed over as fd
//! 3, for signals, `kill -9`, logs, memory and process limits). `system` puts backends behind a
//! gateway either way; `fake` has misbehaving backends (slow, dying) that relay to real ones;
//! `metrics` reads expositions and waits for a series with a patience;
//! `clients` are the real clients the tests drive them with; `up` runs the whole system as
//! `eventsys up`.

mod clients;
mod fake;
mod launch;
mod local;
mod metrics;
mod system;
// Shared with the `up` tests, which use the rest of it.
#[allow(dead_code)]
mod up;
mod up_system;

use std::time::Duration;

pub(crate) use clients::{
    TokenMode, authorized, eventually, get_json, grpc_channel, grpcurl, grpcurl_call, http,
    publish_refused_with_503, raw_http, readyz_becomes, served_by, until_answered,
};
pub(crate) use fake::Relay;
pub(crate) use launch::{EVENTSYS, Launch, Process, Server};
pub(crate) use local::Local;
pub(crate) use metrics::{Scrape, metric, series_value};
pub(crate) use system::{Front, Single, System, wait_healthy};
pub(crate) use up::Launcher;
pub(crate) use up_system::{Engine, UpSystem, stored_ids_at};

/// Held by tests that load the machine or measure timing, so they do not run at the same time
/// as each other on a small CI machine: each measures the system, not its neighbours.
pub(crate) static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous: a debug build on a loaded 2-core machine can be slow to open its store.
const START_TIMEOUT: Duration = Duration::from_secs(30);
