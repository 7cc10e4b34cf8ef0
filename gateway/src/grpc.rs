//! gRPC through the front door: the gateway's port also serves `events.v1.EventService`, health
//! and reflection to gRPC clients (HTTP/2, `content-type: application/grpc`) next to REST. Each
//! call goes through the same balancer, retry policy and limits as REST (`service`); a
//! `Subscribe` outlives its backend (`subscribe`); health says whether any backend is healthy.

mod forward;
mod guard;
mod service;
mod subscribe;

use std::time::Duration;

use axum::{Router, routing::post};
use eventsys::v1::event_service_server::EventServiceServer;
use tokio::time::Instant;
use tonic::{Status, server::NamedService};
use tonic_health::server::HealthReporter;

use crate::upstream::{self, CallError, Failure, Method, method};
use crate::{api::ApiError, http::AppState, middleware::TrackLayer};
use service::FrontDoor;

/// Largest request and reply message, as on the backends.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
const MAX_REPLY: usize = 8 * 1024 * 1024;

/// The gRPC services, as routes to merge with the REST ones.
pub(crate) fn router(state: AppState) -> Router {
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(follow_backends(state.clone(), health));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(eventsys::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let events = EventServiceServer::new(FrontDoor::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_REPLY);
    // The unary methods the gateway need not read are passed on framed (`forward`); the
    // rest, one route per service (tonic's own router would bring a fallback of its own, and
    // REST has the contract's): `/{package.Service}/{method}`.
    let forwarded = Router::new()
        .route(
            method::GetEvent::PATH,
            post(forward::forward::<method::GetEvent>),
        )
        .route(
            method::ListEvents::PATH,
            post(forward::forward::<method::ListEvents>),
        )
        .route(
            method::ListAllEvents::PATH,
            post(forward::forward::<method::ListAllEvents>),
        )
        .route(
            method::UpdateEvent::PATH,
            post(forward::forward::<method::UpdateEvent>),
        )
        .route(
            method::DeleteEvent::PATH,
            post(forward::forward::<method::DeleteEvent>),
        )
        .route(
            method::ListTopicEvents::PATH,
            post(forward::forward::<method::ListTopicEvents>),
        )
        .route(
            method::ListChanges::PATH,
            post(forward::forward::<method::ListChanges>),
        )
        .route(method::Stats::PATH, post(forward::forward::<method::Stats>))
        .route(
            method::Presence::PATH,
            post(forward::forward::<method::Presence>),
        )
        .route(
            method::ReportPresence::PATH,
            post(forward::forward::<method::ReportPresence>),
        )
        .with_state(state.clone());
    let mut router = service(forwarded, events);
    router = service(router, health_service);
    if state.settings.grpc_reflection {
        if let Ok(v1) = reflection().build_v1() {
            router = service(router, v1);
        }
        if let Ok(v1alpha) = reflection().build_v1alpha() {
            router = service(router, v1alpha);
        }
    }
    // Counted like REST requests (route: the service), for /metrics and the dashboard; and
    // only gRPC is gRPC: anything else on these paths is the REST side's unknown route.
    router
        .route_layer(TrackLayer(state))
        .route_layer(axum::middleware::from_fn(only_grpc))
}

/// Passes requests whose `content-type` is `application/grpc` (or `application/grpc+…`); others
/// get the contract's 404, as on any path REST does not serve.
async fn only_grpc(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "application/grpc" || v.starts_with("application/grpc+"));
    if grpc {
        next.run(request).await
    } else {
        axum::response::IntoResponse::into_response(ApiError::http(
            http::StatusCode::NOT_FOUND,
            tonic::Code::NotFound,
            "no such endpoint",
        ))
    }
}

/// Routes every method of the gRPC service `svc` to it.
fn service<S>(router: Router, svc: S) -> Router
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    router.route_service(&format!("/{}/{{*method}}", S::NAME), svc)
}

/// The gateway's own health: SERVING while a backend is healthy and it is not shutting down.
async fn follow_backends(state: AppState, health: HealthReporter) {
    let mut changes = state.upstream.health_changes();
    loop {
        let serving = *changes.borrow_and_update() > 0 && !state.leaving.is_cancelled();
        if serving {
            health.set_serving::<EventServiceServer<FrontDoor>>().await;
            health
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
        } else {
            health
                .set_not_serving::<EventServiceServer<FrontDoor>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = state.leaving.cancelled(), if !state.leaving.is_cancelled() => {}
            () = state.shutdown.cancelled() => return,
        }
    }
}

/// The one mapping from the call policy's errors to what a gRPC client sees: the backend's own
/// status when it answered (internal details replaced), else UNAVAILABLE or DEADLINE_EXCEEDED.
impl From<CallError> for Status {
    fn from(err: CallError) -> Status {
        match err.failure {
            // No backend's answer: the gateway's own words, as REST clients read them.
            Failure::NoBackend | Failure::Unreachable { .. } | Failure::TimedOut => {
                ApiError::from(err).into()
            }
            Failure::Status { status, .. } => match status.code() {
                tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => {
                    tracing::error!(code = ?status.code(), message = status.message(), "backend call failed");
                    Status::new(status.code(), "internal error")
                }
                _ => status,
            },
        }
    }
}

/// `call`'s outcome, within the client's `grpc-timeout` when it sent one.
async fn within<T>(
    timeout: Option<Duration>,
    call: impl Future<Output = Result<T, CallError>>,
) -> Result<T, Status> {
    let outcome = match timeout {
        Some(timeout) => upstream::within(Instant::now() + timeout, call)
            .await
            .map_err(|_| Status::deadline_exceeded("request timed out"))?,
        None => call.await,
    };
    Ok(outcome?)
}

/// The `grpc-timeout` a client sent (`100m`, `5S`, …), as a duration.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        let parse = |value: &str| {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&metadata)
        };
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("7"), None);
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("m"), None);
    }
}
