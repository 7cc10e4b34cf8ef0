//! eventsvc: the gRPC event backend. Several run side by side over one shared store; each serves
//! event CRUD, publish, topic history and subscriptions, plus health and reflection.

mod auth;
mod cli;
mod convert;
mod feed;
mod ids;
mod keyed;
mod metrics;
mod mode;
mod presence;
mod readiness;
mod retention;
mod server;
mod service;
mod stats;
pub mod store;
mod subscribe;
mod validate;

pub use cli::{StoreArgs, backend_from, main, main_from};
pub use feed::FeedSettings;
pub use presence::PresencePolicy;
pub use server::{Backend, ServeError, serve};
