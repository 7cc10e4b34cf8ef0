//! The load tool: workloads against the gateway or the backends, and their reports.

mod changes;
mod cli;
mod delay;
mod fanout;
mod modes;
mod presence;
mod report;
mod soak;
mod tail;
mod target;

pub use cli::{main, main_from};
