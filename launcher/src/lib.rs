//! The one command that runs the whole system: `eventsys up` starts N backends and the gateway
//! as supervised child processes of this same binary (`eventsys backend`, `eventsys gateway`),
//! so building it builds everything it runs.
#![forbid(unsafe_code)]

pub mod child;
pub mod cli;
pub mod console;
pub mod lifeline;
pub mod up;
