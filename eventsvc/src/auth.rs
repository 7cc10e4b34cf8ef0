//! The backend's side of token mode: an interceptor on the event API verifies the
//! `authorization: Bearer` metadata with the same configuration as the gateway and leaves the
//! caller in the request's extensions; the service applies the same policy (`eventsys::auth`).
//! Health and reflection are separate services, so they stay open.

use std::sync::Arc;

use eventsys::auth::{Auth, Caller, Denied, Rejected, bearer_token};
use tonic::{Request, Status, service::Interceptor};

/// Who called: `None` when token mode got no token (public topics may still be read).
#[derive(Debug, Clone)]
pub(crate) struct Who(pub(crate) Option<Caller>);

impl Who {
    pub(crate) fn of<T>(request: &Request<T>) -> Who {
        // The interceptor always runs first; its absence would be a wiring bug, and the safe
        // reading of one is "no token".
        request
            .extensions()
            .get::<Who>()
            .cloned()
            .unwrap_or(Who(None))
    }

    /// What is left of the caller's token: its streams end then (`None` without a token).
    pub(crate) fn remaining(&self) -> Option<std::time::Duration> {
        self.0.as_ref()?.remaining()
    }

    pub(crate) fn caller(&self) -> Result<&Caller, Status> {
        self.0
            .as_ref()
            .ok_or_else(|| Status::unauthenticated("a token is required"))
    }
}

/// Verifies each event-API call's token.
#[derive(Clone)]
pub(crate) struct Verify(pub(crate) Arc<Auth>);

impl Interceptor for Verify {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let who = if self.0.token_mode() {
            let token = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token);
            match token {
                None => Who(None),
                Some(token) => match self.0.caller(Some(token)) {
                    Ok(caller) => Who(Some(caller)),
                    Err(Rejected::Missing) => Who(None),
                    Err(Rejected::Invalid(_)) => {
                        return Err(Status::unauthenticated("invalid token"));
                    }
                },
            }
        } else {
            Who(Some(Caller::Anyone))
        };
        request.extensions_mut().insert(who);
        Ok(request)
    }
}

/// A valid caller without the right.
pub(crate) fn denied(denied: Denied) -> Status {
    Status::permission_denied(denied.0)
}
