//! Readiness probes the launcher runs against the addresses it bound: a backend is ready when
//! its `grpc.health.v1` Watch says SERVING, the gateway when it answers `/healthz` (its socket
//! accepts connections long before that: the launcher bound it).

use std::{net::SocketAddr, time::Duration};

use eventsys::v1::event_service_server::SERVICE_NAME;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Longest one probe may take; a server that takes longer is probed again.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between probes of a server that is not ready yet.
const RETRY: Duration = Duration::from_millis(50);

/// Whether the backend at `addr` reports SERVING, as a `grpc.health.v1` Watch tells it: the
/// first answer is the status now and the next comes the moment it changes, so a backend still
/// starting is waited for rather than polled (within the probe's deadline).
async fn backend_serving(addr: SocketAddr) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let request = HealthCheckRequest {
        service: SERVICE_NAME.into(),
    };
    let Ok(answers) = HealthClient::new(channel).watch(request).await else {
        return false;
    };
    let mut answers = answers.into_inner();
    while let Ok(Some(answer)) = answers.message().await {
        if answer.status == ServingStatus::Serving as i32 {
            return true;
        }
    }
    false
}

/// Whether the gateway at `addr` answers HTTP now (`/healthz`: open in token mode too, and not
/// counted as API traffic).
async fn gateway_answers(addr: SocketAddr) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(connection);
    let request = http::Request::get("/healthz")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new());
    let Ok(request) = request else {
        return false;
    };
    matches!(sender.send_request(request).await, Ok(response) if response.status().is_success())
}

/// Probes until the backend is ready.
pub(crate) async fn until_backend_ready(addr: SocketAddr) {
    until(|| backend_serving(addr)).await;
}

/// Probes until the gateway is ready.
pub(crate) async fn until_gateway_ready(addr: SocketAddr) {
    until(|| gateway_answers(addr)).await;
}

async fn until<F, Fut>(probe: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        if tokio::time::timeout(PROBE_TIMEOUT, probe())
            .await
            .unwrap_or(false)
        {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}
