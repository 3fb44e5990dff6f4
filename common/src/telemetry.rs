//! OpenTelemetry traces (docs/design.md §14): when an OTLP endpoint is configured
//! (`[telemetry] otlp_endpoint` in the daemons, `OTEL_EXPORTER_OTLP_ENDPOINT` for fleetctl),
//! fleet's spans (target [`TARGET`]) are exported over OTLP/gRPC, and the W3C trace context
//! travels with gRPC calls (`traceparent` metadata) and with commands (`Command.trace_context`),
//! so one `fleetctl rollout start` is one trace across fleetctl, the coordinator and the
//! agents. Without an endpoint nothing is set up: no runtime, no thread, no exporter, and the
//! span macros of [`TARGET`] are disabled callsites.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span fleet exports.
pub const TARGET: &str = "fleet_otel";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported by this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `[telemetry]` of a daemon's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Where spans go (`http://collector:4317`); None: nowhere.
    pub otlp_endpoint: Option<String>,
}

/// Reads `[telemetry]`: `otlp_endpoint`, an `http://` URL of an OTLP/gRPC receiver.
pub fn read_section(root: &mut crate::config::Section) -> TelemetryConfig {
    let Some(mut s) = root.section("telemetry") else { return TelemetryConfig::default() };
    let otlp_endpoint = s.nonempty_string("otlp_endpoint");
    if let Some(e) = &otlp_endpoint
        && let Err(why) = check_endpoint(e)
    {
        s.error("otlp_endpoint", why);
    }
    s.finish();
    TelemetryConfig { otlp_endpoint }
}

/// Whether `endpoint` is one fleet can export to: `http://HOST:PORT`.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let ok = endpoint.starts_with("http://")
        && endpoint.parse::<tonic::codegen::http::Uri>().is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{endpoint}\" is not an http:// URL of an OTLP/gRPC receiver (an OpenTelemetry Collector listens on http://HOST:4317)"
        ))
    }
}

/// The exporter of one process, while it runs.
pub struct Telemetry {
    provider: SdkTracerProvider,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

impl Telemetry {
    /// Starts exporting spans of `service` (instance `instance`) to `endpoint`: a runtime of
    /// one thread for the gRPC channel, and the SDK's batch thread.
    pub fn start(endpoint: &str, service: &'static str, instance: Option<&str>) -> Result<Telemetry, String> {
        use opentelemetry_otlp::WithExportConfig;
        check_endpoint(endpoint)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fleet-otel")
            .enable_all()
            .build()
            .map_err(|e| format!("telemetry: cannot start its runtime: {e}"))?;
        let _in_runtime = runtime.enter();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("telemetry: otlp_endpoint {endpoint}: {e}"))?;
        let mut resource = Resource::builder()
            .with_service_name(service)
            .with_attribute(KeyValue::new("service.version", crate::VERSION));
        if let Some(i) = instance {
            resource = resource.with_attribute(KeyValue::new("service.instance.id", i.to_string()));
        }
        let provider =
            SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Telemetry { provider, runtime })
    }

    /// The tracer the subscriber's OpenTelemetry layer writes through.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer("fleet")
    }

    /// Exports what is queued and stops (fleetctl calls it before it exits).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: telemetry: {e}");
        }
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Starts exporting as `config` says, if it says so; a failure to start is reported on
/// stderr and the process runs without traces.
pub fn start_configured(config: &TelemetryConfig, service: &'static str, instance: Option<&str>) -> Option<Telemetry> {
    let endpoint = config.otlp_endpoint.as_deref()?;
    Telemetry::start(endpoint, service, instance).map_err(|e| eprintln!("warning: {e}; running without traces")).ok()
}

/// Writes the current span's trace context into `map` (a command's `trace_context`).
pub fn inject_map(map: &mut HashMap<String, String>) {
    if enabled() {
        TraceContextPropagator::new().inject_context(&Span::current().context(), map);
    }
}

/// Makes the trace context in `map` the parent of `span` (before it is first entered).
pub fn set_parent_from_map(span: &Span, map: &HashMap<String, String>) {
    if enabled() && !map.is_empty() {
        let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), map);
        let _ = span.set_parent(cx);
    }
}

struct Headers<'a>(&'a tonic::codegen::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes the trace context in request headers (`traceparent`) the parent of `span`.
pub fn set_parent_from_headers(span: &Span, headers: &tonic::codegen::http::HeaderMap) {
    if enabled() && headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &Headers(headers));
        let _ = span.set_parent(cx);
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// A gRPC client interceptor adding the current trace context to every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inject;

impl tonic::service::Interceptor for Inject {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if enabled() {
            TraceContextPropagator::new().inject_context(&Span::current().context(), &mut Metadata(req.metadata_mut()));
        }
        Ok(req)
    }
}

/// Marks `span` as failed with `message`.
pub fn mark_error(span: &Span, message: impl Into<String>) {
    if enabled() {
        span.set_status(opentelemetry::trace::Status::error(message.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_urls_of_a_receiver() {
        assert!(check_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(check_endpoint("http://collector.example:4317").is_ok());
        for bad in ["127.0.0.1:4317", "https://collector:4317", "http://", "grpc://c:4317", ""] {
            let e = check_endpoint(bad).unwrap_err();
            assert!(e.contains("http://HOST:4317"), "{bad}: {e}");
        }
        let (mut root, errors) = crate::config::parse_toml("[telemetry]\notlp_endpoint = \"c:4317\"\n").unwrap();
        assert_eq!(read_section(&mut root).otlp_endpoint.as_deref(), Some("c:4317"));
        let e = errors.into_result(std::path::Path::new("a.toml"), ()).unwrap_err().to_string();
        assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
    }

    #[test]
    fn without_an_exporter_nothing_is_injected() {
        let mut map = HashMap::new();
        inject_map(&mut map);
        assert!(map.is_empty());
    }
}
