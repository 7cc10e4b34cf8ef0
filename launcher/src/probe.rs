//! Readiness probes: the launcher's, against the addresses it bound (a backend is ready when its
//! `grpc.health.v1` Watch says SERVING, the gateway when it answers `/healthz`; their sockets
//! accept connections long before that), and `eventsys probe`, a container's health check.

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
async fn backend_serving(authority: String) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
    else {
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

/// Whether the gateway at `authority` answers `path` with a 2xx now (`/healthz`: open in token
/// mode too, and not counted as API traffic).
async fn gateway_answers(authority: &str, path: &str) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(authority).await else {
        return false;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .body(Empty::<Bytes>::new());
    let Ok(request) = request else {
        return false;
    };
    matches!(sender.send_request(request).await, Ok(response) if response.status().is_success())
}

/// Probes until the backend is ready.
pub(crate) async fn until_backend_ready(addr: SocketAddr) {
    until(|| backend_serving(addr.to_string())).await;
}

/// Probes until the gateway is ready.
pub(crate) async fn until_gateway_ready(addr: SocketAddr) {
    let authority = addr.to_string();
    until(|| gateway_answers(&authority, "/healthz")).await;
}

/// What `eventsys probe` checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `grpc://HOST:PORT`: a backend whose health says SERVING.
    Grpc(String),
    /// `http://HOST:PORT/PATH`: a 2xx answer (the gateway's `/healthz` or `/readyz`).
    Http { authority: String, path: String },
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        let wrong = || format!("{s:?}: expected grpc://HOST:PORT or http://HOST:PORT/PATH");
        if let Some(authority) = s.strip_prefix("grpc://") {
            let authority = authority.trim_end_matches('/');
            return (!authority.is_empty() && !authority.contains('/'))
                .then(|| Target::Grpc(authority.to_owned()))
                .ok_or_else(wrong);
        }
        let rest = s.strip_prefix("http://").ok_or_else(wrong)?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(wrong());
        }
        Ok(Target::Http {
            authority: authority.to_owned(),
            path: format!("/{path}"),
        })
    }
}

/// One probe of `target` within `timeout`: whether it is healthy.
pub(crate) async fn once(target: &Target, timeout: Duration) -> bool {
    let probe = async {
        match target {
            Target::Grpc(authority) => backend_serving(authority.clone()).await,
            Target::Http { authority, path } => gateway_answers(authority, path).await,
        }
    };
    tokio::time::timeout(timeout, probe).await.unwrap_or(false)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            "grpc://127.0.0.1:5000".parse(),
            Ok(Target::Grpc("127.0.0.1:5000".into()))
        );
        assert_eq!(
            "http://localhost:3000/healthz".parse(),
            Ok(Target::Http {
                authority: "localhost:3000".into(),
                path: "/healthz".into()
            })
        );
        assert!("https://x/healthz".parse::<Target>().is_err());
        assert!("grpc://".parse::<Target>().is_err());
    }
}
