//! The gateway's HTTP side: the router of `../shared/API.md` (REST, SSE, the legacy stats
//! endpoints, `/metrics`), its extractors, its error body and the `x-backend` header. It
//! calls backends only through `upstream::Upstream` and never sees gRPC metadata.

mod assets;
mod auth;
mod cors;
mod deadline;
mod error;
mod extract;
mod grpc;
mod guard;
mod health;
mod json;
mod keyed;
mod legacy;
mod limits;
mod listing;
mod metrics;
mod openapi;
mod rest;
mod routes;
mod served;
mod sse;
mod state;
mod traced;
mod track;
mod ui;

pub(crate) use error::ApiError;
pub(crate) use guard::{Browsers, HostPolicy, Hosts};
pub(crate) use limits::{LimitSettings, Limiters};
pub(crate) use metrics::Metrics;
pub(crate) use routes::app;
pub(crate) use sse::Hubs;
pub(crate) use state::{AppState, Settings, Shared};
