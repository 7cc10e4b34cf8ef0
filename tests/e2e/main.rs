//! End-to-end tests: the real binaries as separate processes on ephemeral ports, the real
//! SQLite store, and real clients (grpcurl, tonic).

mod backend;
mod shared_store;
mod support;
