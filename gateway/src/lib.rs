//! The REST + SSE gateway: translates `docs/api.md` to `events.v1` gRPC calls (`http`)
//! and spreads them over the eventsvc backends with tower's power-of-two-choices balancer over
//! our PeakEwma load, steered by active health checks (`upstream`).

mod api;
mod cli;
mod grpc;
mod http;
mod middleware;
mod ops;
mod server;
mod sse;
#[cfg(test)]
mod testing;
mod upstream;

pub use cli::{config_from, main, main_from};
pub use server::{GatewayConfig, serve};
