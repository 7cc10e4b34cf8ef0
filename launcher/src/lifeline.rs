//! Children die with their launcher: a child started by `eventsys up` asks the kernel for
//! SIGTERM when its parent dies, so even a launcher killed with SIGKILL leaves no orphan.

use nix::{
    sys::{prctl, signal::Signal},
    unistd::getppid,
};

/// Set by the launcher on its children: its own process id.
pub(crate) const PARENT_ENV: &str = "EVENTSYS_LAUNCHER_PID";

/// In a child of the launcher, arranges to be stopped when the launcher dies.
pub(crate) fn follow_parent() {
    let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    // SIGTERM, not SIGKILL: the child still shuts down gracefully.
    if let Err(err) = prctl::set_pdeathsig(Signal::SIGTERM) {
        eprintln!("cannot ask to stop with the launcher: {err}");
    }
    // The launcher may have died before the request took effect.
    if getppid().as_raw() != parent {
        eprintln!("launcher {parent} is gone; not starting");
        std::process::exit(1);
    }
}
