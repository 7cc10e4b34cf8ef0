//! What every handler shares, and the one way handlers call a backend: wait briefly for a
//! healthy backend (else 503), bound the call by the request timeout (else 504), take an
//! unreachable backend out at once, and retry idempotent calls once on another backend.

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::{
    endpoint::{BACKEND_HEADER, UNREACHABLE},
    error::ApiError,
    metrics::Metrics,
    pool::{Client, Pool, Route},
};

/// Timing settings of the HTTP side.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest a unary call may take, retry included, before the client gets 504.
    pub request_timeout: Duration,
    /// Longest a request waits for some backend to be healthy before it gets 503.
    pub no_backend_wait: Duration,
    /// Interval of SSE keep-alive comments.
    pub sse_keep_alive: Duration,
    /// Longest an SSE stream stays open (the client then reconnects with `Last-Event-ID`);
    /// `None`: no limit.
    pub sse_max_duration: Option<Duration>,
    /// Largest request body; larger ones get 413.
    pub body_limit: usize,
}

#[derive(Clone)]
pub struct AppState {
    pub pool: Arc<Pool>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Cancelled when the gateway shuts down: open SSE streams end.
    pub shutdown: CancellationToken,
}

/// Whether a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Creates and publishes: sending one twice could store it twice.
    Never,
    /// Reads, updates and deletes.
    Once,
}

/// A backend's reply and the backend that gave it.
pub struct Answer<T> {
    pub message: T,
    pub backend: Option<HeaderValue>,
}

/// The backend a failed call found unreachable, if that is why it failed.
pub fn unreachable_backend(status: &Status) -> Option<SocketAddr> {
    status.metadata().get(UNREACHABLE)?;
    status
        .metadata()
        .get(BACKEND_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

impl AppState {
    /// A unary call through the request balancer.
    pub async fn call<T, F, Fut>(&self, retry: Retry, call: F) -> Result<Answer<T>, ApiError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_on(Route::Requests, retry, call).await
    }

    pub async fn call_on<T, F, Fut>(
        &self,
        route: Route,
        retry: Retry,
        call: F,
    ) -> Result<Answer<T>, ApiError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        let mut retries = usize::from(retry == Retry::Once);
        let mut retried = false;
        loop {
            if !self.pool.wait_ready(self.settings.no_backend_wait).await {
                return Err(ApiError::no_backend());
            }
            let status = match tokio::time::timeout_at(deadline, call(self.pool.client(route)))
                .await
            {
                Err(_) => return Err(ApiError::new(Code::DeadlineExceeded, "request timed out")),
                Ok(Ok(response)) => {
                    let backend = response
                        .metadata()
                        .get(BACKEND_HEADER)
                        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
                    return Ok(Answer {
                        message: response.into_inner(),
                        backend,
                    });
                }
                Ok(Err(status)) => status,
            };
            // Out of the balancer before any retry is queued, so the retry goes elsewhere.
            if let Some(addr) = unreachable_backend(&status) {
                self.pool.eject(addr);
            }
            if retries == 0 || status.code() != Code::Unavailable {
                return Err(ApiError {
                    after_retry: retried,
                    ..status.into()
                });
            }
            retries -= 1;
            retried = true;
            tracing::debug!(message = status.message(), "retrying on another backend");
        }
    }
}
