//! eventsvc: the gRPC event backend. Several run side by side over one shared store; each serves
//! event CRUD, publish, topic history and subscriptions, plus health and reflection.
#![forbid(unsafe_code)]

pub mod cli;
pub mod convert;
pub mod feed;
pub mod server;
pub mod service;
pub mod stats;
pub mod store;
pub mod validate;

pub use server::{Backend, ServeError, serve};
