//! The gateway: the REST + SSE contract of `docs/api.md` and gRPC on one port, spread over the
//! eventsvc backends by tower's power-of-two-choices balancer over our PeakEwma load, steered
//! by active health checks. A map, outside in:
//!
//! - `server`: accepting connections (TLS, the connection cap, graceful drain);
//! - `http`: the application (`app(state)`: every layer's routes under the middleware) and
//!   `AppState`, what every handler shares;
//! - `middleware`: what wraps every request (trace span, guards, CORS, limits, deadline,
//!   traffic figures, `x-backend`);
//! - `api`: the REST handlers, one per contract row, their extractors, JSON and error body;
//! - `sse`: `GET /subscribe/{topic}`: topic hubs, their rings and readers;
//! - `grpc`: the gRPC front door (`events.v1`, health, reflection) on the same port;
//! - `ops`: probes, `/metrics`, the legacy stats, OpenAPI and `/docs`, the dashboard;
//! - `upstream`: the backends (discovery, health, membership, balancers, the call policy),
//!   which nothing else reaches but through `Upstream::call`.

mod api;
mod cli;
mod grpc;
mod http;
mod middleware;
mod ops;
mod presence;
mod server;
mod sse;
#[cfg(test)]
mod testing;
mod upstream;

pub use cli::{config_from, main, main_from};
pub use server::{GatewayConfig, serve};
