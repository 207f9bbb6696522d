//! OpenTelemetry traces and metrics over OTLP/gRPC, the one setup msched, msagent and msctl
//! share.
//!
//! [`init`] sets a signal up only when an endpoint is given (`--otlp-endpoint`) or the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT` is
//! set (and `OTEL_SDK_DISABLED` is not `true`); otherwise it returns `None`, no provider
//! exists, the global tracer and meter are the API's no-op ones and [`enabled`] /
//! [`metrics_enabled`] are false, so nothing costs. The other
//! standard `OTEL_*` variables (headers, timeout, sampler, resource attributes, batch sizes)
//! are read by the SDK and the exporter themselves. Spans leave in batches from the SDK's
//! own thread; [`Telemetry::shutdown`] exports what is left before a process exits.
//!
//! The trace context travels as W3C `traceparent` (the [`TraceContextPropagator`]): in gRPC
//! metadata msctl -> msched ([`inject`], [`extract`]), then as text in the stored job and in
//! the assignment ([`traceparent`], [`parse_traceparent`]). The scheduler builds a job's and
//! an attempt's spans when they end, with times and ids chosen earlier ([`with_ids`]), so
//! nothing is held open across core turns or lost with a restart.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceId};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use opentelemetry;
pub use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether [`init`] set up trace / metric export in this process.
static TRACES: AtomicBool = AtomicBool::new(false);
static METRICS: AtomicBool = AtomicBool::new(false);

/// How a daemon writes its log lines (`--log-format`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The one place a daemon's tracing subscriber is built: the log layer (stderr, `text` or
/// `json`, its own `RUST_LOG` filter, default `info`) and, when `telemetry` exports
/// traces, the OpenTelemetry span layer beside it. The log filter is the log layer's own,
/// so RUST_LOG=warn keeps the spans. `json_span`: JSON lines carry the current span's
/// fields (msagent: an attempt's job and attempt); msched's lines do without.
pub fn init_logging(format: LogFormat, json_span: bool, telemetry: Option<&Telemetry>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(json_span)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(telemetry.and_then(|t| t.layer()))
        .init();
}

/// True once [`init`] set up trace export: callers skip building spans otherwise.
pub fn enabled() -> bool {
    TRACES.load(Ordering::Relaxed)
}

/// True once [`init`] set up metric export: callers skip recording otherwise.
pub fn metrics_enabled() -> bool {
    METRICS.load(Ordering::Relaxed)
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--otlp-endpoint '{0}': use a URL such as http://collector:4317")]
    BadEndpoint(String),
    #[error("setting up the OTLP exporter failed: {0}")]
    Exporter(String),
}

/// The providers of a process that exports; [`Telemetry::shutdown`] flushes them.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    service: &'static str,
}

/// Where one signal goes: `Some(Some(url))` for `--otlp-endpoint`, `Some(None)` when the
/// standard variables name an endpoint (the exporter reads them itself: the signal's own,
/// `signal_var`, first), `None` for no export.
fn endpoint_wanted(flag: Option<&str>, signal_var: &str) -> Option<Option<String>> {
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    if let Some(url) = flag.filter(|u| !u.trim().is_empty()) {
        return Some(Some(url.trim().to_string()));
    }
    if set(signal_var).is_some() || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        return Some(None);
    }
    None
}

/// `--otlp-endpoint`, checked: an http(s) URL.
fn checked(url: String) -> Result<String, TelemetryError> {
    if (url.starts_with("http://") || url.starts_with("https://")) && url.len() <= 2048 {
        Ok(url)
    } else {
        Err(TelemetryError::BadEndpoint(url.chars().take(80).collect()))
    }
}

fn resource(service: &'static str) -> opentelemetry_sdk::Resource {
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    resource.build()
}

/// Sets up OTLP/gRPC export of traces and, with `with_metrics` (a process that records
/// some), metrics for `service` (`service.name`, unless `OTEL_SERVICE_NAME` says otherwise)
/// when an endpoint is wanted, else returns `None` and sets up nothing. Must run inside a
/// Tokio runtime (the gRPC channel's worker lives there).
pub fn init(
    service: &'static str,
    endpoint: Option<&str>,
    with_metrics: bool,
) -> Result<Option<Telemetry>, TelemetryError> {
    let traces = endpoint_wanted(endpoint, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let metrics =
        endpoint_wanted(endpoint, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").filter(|_| with_metrics);
    if traces.is_none() && metrics.is_none() {
        return Ok(None);
    }
    let exporter_error =
        |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter(e.to_string());
    let tracer = match traces {
        None => None,
        Some(url) => {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(url) = url {
                exporter = exporter.with_endpoint(checked(url)?);
            }
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter.build().map_err(exporter_error)?)
                .with_id_generator(ChosenIds::default())
                .with_resource(resource(service))
                .build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            TRACES.store(true, Ordering::Relaxed);
            Some(provider)
        }
    };
    let meter = match metrics {
        None => None,
        Some(url) => {
            let mut exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic();
            if let Some(url) = url {
                exporter = exporter.with_endpoint(checked(url)?);
            }
            // Every OTEL_METRIC_EXPORT_INTERVAL (default 60 s) and at shutdown.
            let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(
                exporter.build().map_err(exporter_error)?,
            )
            .build();
            let provider = SdkMeterProvider::builder()
                .with_reader(reader)
                .with_resource(resource(service))
                .build();
            opentelemetry::global::set_meter_provider(provider.clone());
            METRICS.store(true, Ordering::Relaxed);
            Some(provider)
        }
    };
    Ok(Some(Telemetry {
        tracer,
        meter,
        service,
    }))
}

impl Telemetry {
    /// The `tracing` layer that turns this process's own `tracing` spans (target = the
    /// service's crate, info and up, whatever `RUST_LOG` says of the logs) into OpenTelemetry
    /// spans; `None` when only metrics are exported. Add it beside the log layer, whose
    /// filter should be its own (`Layer::with_filter`), so that quiet logs keep the spans.
    /// Spans with the target `<service>::log` only give log lines their fields (the agent's
    /// name, an attempt's job) and are not exported.
    pub fn layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::Layer as _;
        let tracer = self.tracer.as_ref()?.tracer(self.service);
        let own = tracing_subscriber::filter::Targets::new()
            .with_target(self.service, tracing::Level::INFO)
            .with_target(
                format!("{}::log", self.service),
                tracing_subscriber::filter::LevelFilter::OFF,
            );
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(own),
        )
    }

    /// Exports the spans and metrics still held and stops the exporters (at most 5 s each).
    /// Runs the blocking flush on a blocking thread, so the runtime keeps serving the gRPC
    /// channel it needs.
    pub async fn shutdown(self) {
        let Telemetry { tracer, meter, .. } = self;
        let done = tokio::task::spawn_blocking(move || {
            let mut errors = Vec::new();
            if let Some(p) = tracer {
                if let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5)) {
                    errors.push(format!("spans: {e}"));
                }
            }
            if let Some(p) = meter {
                if let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5)) {
                    errors.push(format!("metrics: {e}"));
                }
            }
            errors
        })
        .await;
        for e in done.unwrap_or_default() {
            tracing::warn!(error = %e, "exporting the last telemetry failed");
        }
    }
}

thread_local! {
    /// Ids the next span built on this thread takes (see [`with_ids`]).
    static CHOSEN: Cell<(Option<TraceId>, Option<SpanId>)> = const { Cell::new((None, None)) };
}

/// The provider's id generator: random ids, unless [`with_ids`] chose them.
#[derive(Debug, Default)]
struct ChosenIds {
    random: RandomIdGenerator,
}

impl IdGenerator for ChosenIds {
    fn new_trace_id(&self) -> TraceId {
        CHOSEN
            .with(|c| {
                let (t, s) = c.get();
                c.set((None, s));
                t
            })
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        CHOSEN
            .with(|c| {
                let (t, s) = c.get();
                c.set((t, None));
                s
            })
            .unwrap_or_else(|| self.random.new_span_id())
    }
}

/// Runs `build` (which starts one span) so that the span gets `span` as its id and, if it
/// has no parent, `trace` as its trace id: spans whose ids were handed out before they are
/// built (a job's, an attempt's).
pub fn with_ids<R>(trace: TraceId, span: SpanId, build: impl FnOnce() -> R) -> R {
    CHOSEN.with(|c| c.set((Some(trace), Some(span))));
    let r = build();
    CHOSEN.with(|c| c.set((None, None)));
    r
}

/// A fresh random span id (never invalid).
pub fn new_span_id() -> SpanId {
    RandomIdGenerator::default().new_span_id()
}

/// A fresh random trace id (never invalid).
pub fn new_trace_id() -> TraceId {
    RandomIdGenerator::default().new_trace_id()
}

/// The span id of the `n`th child of `parent`, the same every time (a job's attempt spans:
/// the scheduler hands the id to the agent when it assigns the attempt and builds the span
/// with it when the attempt ends, after restarts too). SplitMix64, never zero.
pub fn derived_span_id(parent: SpanId, n: u32) -> SpanId {
    let mut z = u64::from_be_bytes(parent.to_bytes())
        .wrapping_add(u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    SpanId::from_bytes(z.max(1).to_be_bytes())
}

/// The span `span` of trace `trace` as a W3C `traceparent` value (sampled).
pub fn traceparent(trace: TraceId, span: SpanId) -> String {
    format!("00-{trace}-{span}-01")
}

/// A W3C `traceparent` value as a remote span context; `None` when it is not one.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    if value.is_empty() || value.len() > 128 {
        return None;
    }
    let carrier = HashMap::from([("traceparent".to_string(), value.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// A context whose (remote) parent is `sc`.
pub fn remote_context(sc: SpanContext) -> Context {
    Context::new().with_remote_span_context(sc)
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Puts `cx`'s span context into a request's metadata (`traceparent`, `tracestate`).
pub fn inject(cx: &Context, metadata: &mut tonic::metadata::MetadataMap) {
    TraceContextPropagator::new().inject_context(cx, &mut MetadataInjector(metadata));
}

/// The caller's span context from a request's metadata, if it sent a valid one.
pub fn extract(metadata: &tonic::metadata::MetadataMap) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_garbage_is_none() {
        let (t, s) = (new_trace_id(), new_span_id());
        let sc = parse_traceparent(&traceparent(t, s)).expect("valid");
        assert_eq!((sc.trace_id(), sc.span_id()), (t, s));
        assert!(sc.is_remote());
        for bad in [
            "",
            "00-zz-yy-01",
            "00-00000000000000000000000000000000-0000000000000001-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        assert!(parse_traceparent(&"0".repeat(200)).is_none());
    }

    #[test]
    fn metadata_carries_the_context() {
        let (t, s) = (new_trace_id(), new_span_id());
        let sc = parse_traceparent(&traceparent(t, s)).unwrap();
        let mut md = tonic::metadata::MetadataMap::new();
        inject(&remote_context(sc), &mut md);
        assert_eq!(
            md.get("traceparent").and_then(|v| v.to_str().ok()),
            Some(traceparent(t, s).as_str())
        );
        let got = extract(&md).expect("extracted");
        assert_eq!((got.trace_id(), got.span_id()), (t, s));
        assert!(extract(&tonic::metadata::MetadataMap::new()).is_none());
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let p = SpanId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(derived_span_id(p, 1), derived_span_id(p, 1));
        assert_ne!(derived_span_id(p, 1), derived_span_id(p, 2));
        assert_ne!(derived_span_id(p, 1), p);
        assert_ne!(derived_span_id(SpanId::INVALID, 0), SpanId::INVALID);
    }

    #[test]
    fn chosen_ids_are_taken_once() {
        let g = ChosenIds::default();
        let (t, s) = (new_trace_id(), new_span_id());
        with_ids(t, s, || {
            assert_eq!(g.new_span_id(), s);
            assert_eq!(g.new_trace_id(), t);
            assert_ne!(g.new_span_id(), s, "the next one is random again");
        });
        assert_ne!(g.new_trace_id(), t);
    }
}
