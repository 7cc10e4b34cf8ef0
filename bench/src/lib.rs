//! The load tool: workloads against the gateway or the backends, and their reports.
#![forbid(unsafe_code)]

pub mod cli;
pub mod modes;
pub mod report;
pub mod target;
