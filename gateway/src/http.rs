//! The gateway's HTTP application: `app(state)` composes every layer's routes (`api`, `sse`,
//! `ops`, `grpc`) under the middleware stack, and `AppState` is what every handler shares.

mod routes;
mod state;

pub(crate) use routes::{app, described};
pub(crate) use state::{AppState, Settings, Shared};
