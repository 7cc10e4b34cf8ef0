//! The REST + SSE gateway: translates `../shared/API.md` to `events.v1` gRPC calls (`http`)
//! and spreads them over the eventsvc backends with tower's power-of-two-choices balancer over
//! our PeakEwma load, steered by active health checks (`upstream`).

mod cli;
mod http;
mod server;
mod upstream;

pub use cli::{main, main_from};
pub use server::{GatewayConfig, serve};
