//! The one command that runs the whole system: `eventsys up` binds every port, then starts N
//! backends and the gateway on those sockets as supervised child processes of this same binary
//! (`eventsys backend`, `eventsys gateway`), so building it builds everything it runs.

mod child;
mod cli;
mod console;
mod lifeline;
mod probe;
mod up;

pub use cli::main;
