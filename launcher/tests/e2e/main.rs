//! End-to-end tests: the real servers of the `eventsys` binary as separate processes on
//! ephemeral ports, the real SQLite store, and real clients (grpcurl, tonic, an HTTP client, an
//! SSE client, headless Chromium, schemathesis).

mod backend;
mod bench;
mod cdp;
mod changes;
mod cli;
mod cross_origin;
mod deploy;
mod expiry;
mod gateway_balancing;
mod gateway_contract;
mod grpc_front;
mod idempotency;
mod limits_http;
mod limits_streams;
mod lists;
mod mongo;
mod multihost;
mod openapi;
mod otlp;
mod presence;
mod probes;
mod pubsub;
mod shared_store;
mod stores;
mod support;
mod tls;
mod token;
mod token_rejections;
mod topics;
mod tracing;
mod ui;
mod writes;
