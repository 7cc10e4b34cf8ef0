//! OTLP export of the spans the servers already time (a gateway request, a backend rpc), when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. Spans carry
//! our own `traceparent` ids, so the exported gateway span is the parent the backend was told.

use std::{borrow::Cow, sync::OnceLock, time::SystemTime};

use opentelemetry::{
    InstrumentationScope,
    trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState},
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor},
};

pub use opentelemetry::KeyValue;

use crate::trace::{SpanId, TraceParent};

/// The exporter, when export is on; set once at start-up.
static EXPORT: OnceLock<BatchSpanProcessor> = OnceLock::new();

/// A server span (each process reports the work it served) whose start was taken while export
/// is on; `end` exports it.
#[derive(Debug)]
pub struct Started {
    /// The span's trace and its own id (the `traceparent` it handed on).
    context: TraceParent,
    /// Its parent: the caller's span, when the caller sent a `traceparent`.
    parent: Option<SpanId>,
    start: SystemTime,
}

impl Started {
    /// A span starting now; `None` while export is off, so nothing is built for it.
    pub fn now(context: TraceParent, parent: Option<SpanId>) -> Option<Started> {
        enabled().then(|| Started {
            context,
            parent,
            start: SystemTime::now(),
        })
    }

    /// Ends it now and queues it for export (when its trace is sampled). `name`: the operation,
    /// `GET /events/{id}` (a route template) or `events.v1.EventService/GetEvent`; `error`: the
    /// outcome was one (a 5xx, a gRPC server-side code).
    pub fn end(self, name: Cow<'static, str>, attributes: Vec<KeyValue>, error: bool) {
        let end = SystemTime::now();
        let Some(export) = EXPORT.get() else { return };
        if !self.context.sampled {
            return;
        }
        export.on_end(self.data(name, end, attributes, error));
    }

    /// The span in the SDK's terms.
    fn data(
        self,
        name: Cow<'static, str>,
        end: SystemTime,
        attributes: Vec<KeyValue>,
        error: bool,
    ) -> SpanData {
        let context = SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(self.context.trace_id.0.to_be_bytes()),
            opentelemetry::trace::SpanId::from_bytes(self.context.span_id.0.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        let parent = self
            .parent
            .map_or(opentelemetry::trace::SpanId::INVALID, |p| {
                opentelemetry::trace::SpanId::from_bytes(p.0.to_be_bytes())
            });
        SpanData {
            span_context: context,
            parent_span_id: parent,
            parent_span_is_remote: self.parent.is_some(),
            span_kind: SpanKind::Server,
            name,
            start_time: self.start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if error {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: scope(),
        }
    }
}

/// Stops export at the end of `main`, sending what is still queued.
#[derive(Debug)]
pub struct ExportGuard(bool);

impl Drop for ExportGuard {
    fn drop(&mut self) {
        if let (true, Some(export)) = (self.0, EXPORT.get())
            && let Err(err) = export.shutdown()
        {
            tracing::warn!(error = %err, "OTLP export did not flush at shutdown");
        }
    }
}

/// Turns export on when the environment names an OTLP endpoint (call once, outside any async
/// runtime: the HTTP client is a blocking one on the exporter's own thread). Off, every
/// `Started::now` is one load of an unset cell.
pub fn init(service: &'static str) -> Result<ExportGuard, String> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if !configured {
        return Ok(ExportGuard(false));
    }
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL")
        .unwrap_or_default()
        .as_str()
    {
        "" | "http/protobuf" => Protocol::HttpBinary,
        "http/json" => Protocol::HttpJson,
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported: http/protobuf (the default) or http/json"
            ));
        }
    };
    // The endpoint, headers and timeout come from the standard OTEL_EXPORTER_OTLP_* variables,
    // read by the exporter; none of them is logged (headers carry credentials).
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|err| format!("cannot set up OTLP export: {err}"))?;
    // Queue and batch sizes, the export interval and timeout: OTEL_BSP_* (bounded by default:
    // 2,048 spans queued, newer ones dropped when the collector is slower).
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    processor.set_resource(&Resource::builder().with_service_name(service).build());
    EXPORT
        .set(processor)
        .map_err(|_| "OTLP export set up twice".to_owned())?;
    tracing::info!("OTLP span export on");
    Ok(ExportGuard(true))
}

/// Whether spans are exported: callers skip building them when not.
pub fn enabled() -> bool {
    EXPORT.get().is_some()
}

fn scope() -> InstrumentationScope {
    static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();
    SCOPE
        .get_or_init(|| {
            InstrumentationScope::builder("eventsys")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        })
        .clone()
}
