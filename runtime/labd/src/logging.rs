//! Where labd's log goes: `tracing` events to stderr, as text for people or JSON lines for a log
//! collector, at the level `log_level` (labd.toml) or `RUST_LOG` (which wins) says. Events
//! carry structured fields (`run`, `tenant`, `instrument`, `cell`, …); no event holds a token or
//! a password. With `otlp_endpoint`, the spans (a run's tasks and plate moves, each command)
//! also go to an OpenTelemetry collector over OTLP/gRPC.

use serde::Deserialize;

/// `log_format` in labd.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A logging setting (`log_level`, `RUST_LOG`, `otlp_endpoint`) that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}{hint}")]
pub struct BadFilter {
    setting: String,
    message: String,
    hint: &'static str,
}

/// The installed log; [`Logging::shutdown`] sends the spans still buffered for the collector.
#[derive(Debug)]
#[must_use = "shut it down so the last spans reach the collector"]
pub struct Logging {
    otlp: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Logging {
    /// Sends what the exporter still holds (waits for the collector at most its timeout).
    /// Call it from a thread that may block, with the tokio runtime that [`init`] ran in
    /// still running: the exporter's connection lives there.
    pub fn shutdown(self) {
        if let Some(provider) = self.otlp {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "the last spans did not reach the OpenTelemetry collector");
            }
        }
    }
}

/// Installs the subscriber once; a second call (tests, `labd demo` inside a test) keeps the
/// first. With `otlp`, call it inside a tokio runtime (the exporter's gRPC channel runs there).
pub fn init(level: &str, format: LogFormat, otlp: Option<&str>) -> Result<Logging, BadFilter> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).map_err(|e| BadFilter {
            setting: format!("RUST_LOG={spec:?}"),
            message: e.to_string(),
            hint: "",
        })?,
        _ => EnvFilter::try_new(level).map_err(|e| BadFilter {
            setting: format!("log_level = {level:?}"),
            message: e.to_string(),
            hint: "; give error, warn, info, debug or trace",
        })?,
    };
    let provider = otlp.map(exporter).transpose()?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).boxed(),
    };
    let spans = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer("labd"))
    });
    let installed = tracing_subscriber::registry().with(fmt).with(spans).with(filter).try_init();
    // Already installed: the first subscriber stays, and this exporter has nothing to send.
    if installed.is_err() {
        if let Some(p) = provider {
            drop(p.shutdown());
        }
        return Ok(Logging { otlp: None });
    }
    Ok(Logging { otlp: provider })
}

/// The span exporter for `otlp_endpoint`: batches spans on its own thread and sends them to
/// the collector's OTLP/gRPC port.
fn exporter(endpoint: &str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, BadFilter> {
    use opentelemetry_otlp::WithExportConfig;
    let bad = |message: String| BadFilter {
        setting: format!("otlp_endpoint = {endpoint:?}"),
        message,
        hint: "; give the collector's OTLP/gRPC address, such as http://127.0.0.1:4317",
    };
    if !endpoint.starts_with("http://") {
        return Err(bad(if endpoint.starts_with("https://") {
            "TLS to the collector is not supported: run the collector on this host or a private network".into()
        } else {
            "not an http:// address".into()
        }));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("labd").build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_otlp_endpoint_that_is_not_plain_http_is_refused_with_what_to_write() {
        for (endpoint, says) in [("localhost:4317", "not an http:// address"), ("https://otel:4317", "TLS")] {
            let e = super::exporter(endpoint).unwrap_err().to_string();
            assert!(e.starts_with(&format!("otlp_endpoint = {endpoint:?}: ")), "{e}");
            assert!(e.contains(says) && e.contains("http://127.0.0.1:4317"), "{e}");
        }
    }
}
