//! Encrypted links with certificates made at run time by the openssl CLI: an HTTPS client that
//! gets HTTP/2 by ALPN from the gateway, mTLS from the gateway to backends that require client
//! certificates, and those backends refusing a gateway (and a gRPC client) without one.

use std::{path::Path, time::Duration};

use reqwest::{StatusCode, Version};
use serde_json::{Value, json};

use crate::support::{Launch, Server};

fn https_client(ca: &Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .https_only(true)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Healthy backends as the gateway's `/metrics` (over HTTPS) reports them.
async fn healthy(client: &reqwest::Client, gateway: &str) -> usize {
    let Ok(response) = client.get(format!("{gateway}/metrics")).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("gateway_backend_healthy{") && l.ends_with(" 1"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_with_http2_to_the_gateway_and_mtls_to_the_backends() {
    let dir = tempfile::tempdir().unwrap();
    testdb::certificates(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let store = format!("sqlite://{}", file("events.db"));
    let (server_pem, server_key, ca, client_pem, client_key) = (
        file("server.pem"),
        file("server.key"),
        file("ca.pem"),
        file("client.pem"),
        file("client.key"),
    );
    let backend_args = [
        "--store",
        &store,
        "--tls-cert",
        &server_pem,
        "--tls-key",
        &server_key,
        "--client-ca",
        &ca,
    ];
    let backends = [
        Launch::server(Server::Backend)
            .unprobed()
            .flags(&backend_args)
            .start()
            .await,
        Launch::server(Server::Backend)
            .unprobed()
            .flags(&backend_args)
            .start()
            .await,
    ];
    let list = format!("{},{}", backends[0].addr, backends[1].addr);
    let gateway = Launch::server(Server::Gateway)
        .unprobed()
        .flags(&[
            "--backends",
            &list,
            "--tls-cert",
            &server_pem,
            "--tls-key",
            &server_key,
            "--backend-ca",
            &ca,
            "--backend-client-cert",
            &client_pem,
            "--backend-client-key",
            &client_key,
        ])
        .start()
        .await;
    let client = https_client(dir.path().join("ca.pem").as_path());
    let base = format!("https://{}", gateway.addr);
    // Ready: the gateway answers over HTTPS and its mTLS health checks pass on both backends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while healthy(&client, &base).await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway logs:\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let created = client
        .post(format!("{base}/events"))
        .json(&json!({"userId": "u", "title": "encrypted"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        created.version(),
        Version::HTTP_2,
        "HTTP/2 negotiated by ALPN"
    );
    let created: Value = created.json().await.unwrap();
    let read = client
        .get(format!(
            "{base}/events/{}?userId=u",
            created["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.json::<Value>().await.unwrap(), created);

    // gRPC clients on the same HTTPS port (h2 by ALPN), through the same balancer.
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(std::fs::read(&ca).unwrap()),
    );
    let channel = tonic::transport::Channel::from_shared(format!("https://{}", gateway.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = eventsys::v1::event_service_client::EventServiceClient::new(channel)
        .get_event(eventsys::v1::GetEventRequest {
            id: created["id"].as_str().unwrap().to_owned(),
            user_id: "u".into(),
        })
        .await
        .unwrap();
    assert!(answer.metadata().get("x-backend").is_some());
    assert_eq!(answer.into_inner().title, "encrypted");

    // A gateway without a client certificate is refused by the backends: none ever becomes
    // healthy, and requests get 503.
    let no_identity = Launch::server(Server::Gateway)
        .flags(&["--backends", &list, "--backend-ca", &ca])
        .start()
        .await;
    let refused = crate::support::http()
        .get(format!("{}/events?userId=u", no_identity.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let metrics = crate::support::http()
        .get(format!("{}/metrics", no_identity.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("gateway_backend_healthy{") && l.ends_with(" 1")),
        "{metrics}"
    );
    // And so is a plain gRPC client that trusts the CA but has no certificate.
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(std::fs::read(&ca).unwrap()),
    );
    let endpoint = tonic::transport::Channel::from_shared(format!("https://{}", backends[0].addr))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let outcome = match endpoint.connect().await {
        Err(_) => true,
        Ok(channel) => eventsys::v1::event_service_client::EventServiceClient::new(channel)
            .list_events(eventsys::v1::ListEventsRequest::default())
            .await
            .is_err(),
    };
    assert!(
        outcome,
        "a client without a certificate must not get an answer"
    );
}
