//! OTLP span export against a minimal OTLP/HTTP receiver on loopback: one request with a given
//! `traceparent` is the gateway's server span (child of the client's span) and the backend's
//! rpc span (child of the gateway's), one trace id in both and in both processes' log lines.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value,
};
use prost::Message;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

use crate::support::{Launch, Server, http, wait_healthy};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";
/// Largest export request the receiver reads.
const MAX_BODY: usize = 4 << 20;

/// A span as received: which service sent it, and its place in the trace.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// `POST /v1/traces` with OTLP protobuf bodies, over HTTP/1.1 keep-alive connections.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (into, notify) = (spans.clone(), arrived.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(stream, into.clone(), notify.clone()));
            }
        });
        Receiver {
            url,
            spans,
            arrived,
        }
    }

    /// Waits until spans of `trace` came from both services; those spans.
    async fn trace(&self, trace: &str) -> Vec<Received> {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let notified = self.arrived.notified();
                let spans: Vec<_> = self
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.trace_id == trace)
                    .cloned()
                    .collect();
                let services = |name: &str| spans.iter().any(|s| s.service == name);
                if services("eventsys-gateway") && services("eventsys-backend") {
                    return spans;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no spans of {trace} from both processes; received {:?}",
                self.spans.lock().unwrap()
            )
        })
    }
}

async fn serve(mut stream: TcpStream, spans: Arc<Mutex<Vec<Received>>>, arrived: Arc<Notify>) {
    let mut buffer = Vec::new();
    loop {
        // Headers, then a Content-Length body.
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            assert!(buffer.len() < 64 * 1024, "request head over 64 KiB");
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("post /v1/traces "), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a Content-Length");
        assert!(length <= MAX_BODY);
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buffer.drain(..head_end + length).skip(head_end).collect();
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|value| match value {
                    any_value::Value::StringValue(name) => name.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.lock().unwrap().push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                    });
                }
            }
        }
        arrived.notify_waiters();
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_requests_gateway_and_backend_spans_are_exported_in_one_trace() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("events.db").display());
    // A short export interval, so the test waits a moment rather than the default 5 s.
    let exported = |launch: Launch| {
        launch
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .flag("--access-log")
    };
    let backend = exported(Launch::server(Server::Backend).flags(&["--store", &store]))
        .start()
        .await;
    let gateway = exported(Launch::gateway(&[backend.addr])).start().await;
    wait_healthy(gateway.addr, None, 1).await;
    let base = gateway.url();

    let created: Value = http()
        .post(format!("{base}/events"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .json(&json!({"userId": "otel", "title": "exported"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(created["id"].is_string(), "{created}");

    let spans = receiver.trace(TRACE).await;
    let gateway_span = spans
        .iter()
        .find(|s| s.service == "eventsys-gateway")
        .unwrap();
    let backend_span = spans
        .iter()
        .find(|s| s.service == "eventsys-backend")
        .unwrap();
    println!("exported: {gateway_span:?}\n          {backend_span:?}");
    assert_eq!(gateway_span.name, "POST /events", "{spans:?}");
    assert_eq!(gateway_span.parent_span_id, CLIENT_SPAN, "{spans:?}");
    assert_eq!(
        backend_span.name, "events.v1.EventService/CreateEvent",
        "{spans:?}"
    );
    assert_eq!(
        backend_span.parent_span_id, gateway_span.span_id,
        "the backend's span is the gateway span's child: {spans:?}"
    );

    // The same trace id in each process's log line about the request.
    let needle = format!("trace_id={TRACE}");
    gateway.wait_for_log(&needle).await;
    backend.wait_for_log(&needle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_stays_off_without_an_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Launch::backend(&dir.path().join("events.db")).start().await;
    let gateway = Launch::gateway(&[backend.addr]).start().await;
    wait_healthy(gateway.addr, None, 1).await;
    assert!(
        !gateway.logs().contains("OTLP") && !backend.logs().contains("OTLP"),
        "{}\n{}",
        gateway.logs(),
        backend.logs()
    );
}
