//! Logs and traces.
//!
//! **Logs** go to stderr, as text or (`--log-format json`, `KESSAI_LOG_FORMAT=json`)
//! one JSON object per line; `RUST_LOG` overrides the default filter (sqlx logs every
//! statement at INFO, so it is held at WARN). Lines logged while a saga is handled
//! carry its `saga_id` and `trace_id` (the fields of the span they are logged in).
//!
//! **Traces** are OpenTelemetry, configured by the standard variables:
//! `OTEL_SDK_DISABLED=true` turns tracing off altogether (no trace ids either);
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns the
//! OTLP exporter on; `OTEL_EXPORTER_OTLP_PROTOCOL` picks `grpc` or `http/protobuf`
//! (the default); `OTEL_SERVICE_NAME` names the service; `OTEL_TRACES_SAMPLER` (and
//! `_ARG`) samples. Spans go through a batch processor on its own thread: a full
//! queue drops spans, it never blocks a saga. With no endpoint there is no exporter at
//! all: trace ids are still made (stored with each saga, carried in messages, logged)
//! but no span is recorded.
//!
//! Why the OpenTelemetry API directly rather than through `tracing` spans: a saga's
//! spans are made in different processes at different times, each with an explicit
//! remote parent read from a message or the database, some with a start time in the
//! past (the `saga` span covers its whole life); the API says that directly, and does
//! not tie what is exported to a log level filter.

use opentelemetry::global;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`, and the
    /// current span's fields such as `saga_id` and `trace_id`).
    Json,
}

/// Quiet logging (warn), for commands that print a report, and tests.
pub fn init_logging() {
    init_logging_for(false);
}

/// `services`: long-running services log their lifecycle (info); one-shot commands
/// whose output is a report stay quiet (warn).
pub fn init_logging_for(services: bool) {
    init_logs(services, LogFormat::Text);
}

/// Installs the log subscriber (once per process; later calls do nothing).
pub fn init_logs(services: bool, format: LogFormat) {
    let default = if services {
        "info,sqlx=warn,sea_orm=warn"
    } else {
        "warn,sqlx=warn,sea_orm=warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// The installed tracer provider; [`Traces::shutdown`] flushes what is queued.
pub struct Traces {
    provider: Option<SdkTracerProvider>,
    exporting: bool,
}

impl Traces {
    /// Whether spans are exported (an OTLP endpoint is configured).
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports what is still queued (bounded by the exporter's timeout).
    pub fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        if self.exporting {
            let _ = provider.force_flush();
        }
        let _ = provider.shutdown();
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the environment configures an OTLP trace exporter.
pub fn exporter_configured() -> bool {
    let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let exporter = env("OTEL_TRACES_EXPORTER").unwrap_or_else(|| "otlp".into());
    endpoint.is_some() && exporter != "none"
}

/// Installs the global tracer provider for `service` (the default service name when
/// `OTEL_SERVICE_NAME` is unset). Call it inside the Tokio runtime: the gRPC exporter
/// needs one. Errors name what is wrong in the `OTEL_*` configuration.
pub fn init_traces(service: &str) -> anyhow::Result<Traces> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        // Tracing off altogether: no ids, no spans, no `traceparent` on messages.
        return Ok(Traces {
            provider: None,
            exporting: false,
        });
    }
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    let builder = SdkTracerProvider::builder().with_resource(resource.build());
    let exporting = exporter_configured();
    let provider = if exporting {
        let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        let exporter = match protocol.as_str() {
            "grpc" => opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?,
            "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build()?,
            other => {
                anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: kessai speaks \"grpc\" and \"http/protobuf\"")
            }
        };
        // The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
        builder.with_batch_exporter(exporter).build()
    } else {
        // Ids without recording: nothing to export them to.
        builder.with_sampler(Sampler::AlwaysOff).build()
    };
    global::set_tracer_provider(provider.clone());
    Ok(Traces {
        provider: Some(provider),
        exporting,
    })
}
