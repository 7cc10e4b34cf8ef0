//! The REST + SSE gateway: translates `../shared/API.md` to `events.v1` gRPC calls and spreads
//! them over the eventsvc backends with tower's power-of-two-choices balancer over PeakEwma
//! latency, steered by active health checks.
#![forbid(unsafe_code)]

pub mod cli;
pub mod endpoint;
pub mod error;
pub mod json;
pub mod metrics;
pub mod pool;
pub mod rest;
pub mod server;
pub mod sse;
pub mod state;
pub mod status;

pub use server::{GatewayConfig, app, serve};
