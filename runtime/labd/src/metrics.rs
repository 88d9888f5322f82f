//! labd's Prometheus metrics, served at `/metrics` beside the probes. Lab-level figures only: no
//! label names a tenant, a run or a protocol, since the endpoint is not signed in.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use std::sync::LazyLock;

/// Every metric labd keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub runs_submitted: IntCounter,
    /// By final state: succeeded, failed, cancelled.
    pub runs_ended: IntCounterVec,
    /// Runs that succeeded by their promised time, or after it.
    pub promises: IntCounterVec,
    pub runs_queued: IntGauge,
    pub runs_running: IntGauge,
    /// Commands sent to instruments, by instrument family and outcome (ok, failed, unknown).
    pub commands: IntCounterVec,
    /// From the journaled intent to the recorded outcome, by family.
    pub command_seconds: HistogramVec,
    /// The durable write of a command's intent.
    pub journal_seconds: Histogram,
    pub repairs: IntCounterVec,
    pub repair_seconds: Histogram,
    pub interventions_opened: IntCounter,
    pub instruments_available: IntGauge,
    pub instruments: IntGauge,
    pub mqtt_connections: IntGauge,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new_custom(Some("labwright".into()), None)?;
    let latency = vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0];
    let m = Metrics {
        runs_submitted: IntCounter::new("runs_submitted_total", "Runs accepted by Submit (new runs only)")?,
        runs_ended: IntCounterVec::new(Opts::new("runs_ended_total", "Runs that reached a final state"), &["state"])?,
        promises: IntCounterVec::new(
            Opts::new(
                "promises_total",
                "Runs that succeeded by the completion promised at admission (kept) or after it (broken)",
            ),
            &["outcome"],
        )?,
        runs_queued: IntGauge::new("runs_queued", "Runs waiting to be admitted")?,
        runs_running: IntGauge::new("runs_running", "Runs in the plan being carried out")?,
        commands: IntCounterVec::new(
            Opts::new("commands_total", "Commands sent to instruments"),
            &["family", "outcome"],
        )?,
        command_seconds: HistogramVec::new(
            HistogramOpts::new("command_seconds", "Wall time of a command, journal included").buckets(latency.clone()),
            &["family"],
        )?,
        journal_seconds: Histogram::with_opts(
            HistogramOpts::new("journal_write_seconds", "Durable write of a command's intent").buckets(latency.clone()),
        )?,
        repairs: IntCounterVec::new(Opts::new("plan_repairs_total", "Plan repairs, taken or not"), &["result"])?,
        repair_seconds: Histogram::with_opts(
            HistogramOpts::new("plan_repair_seconds", "Time to repair the plan").buckets(latency),
        )?,
        interventions_opened: IntCounter::new("interventions_opened_total", "Interventions opened for technicians")?,
        instruments_available: IntGauge::new("instruments_available", "Instruments and arms available to the plan")?,
        instruments: IntGauge::new("instruments", "Instruments and arms of the site")?,
        mqtt_connections: IntGauge::new("mqtt_connections", "Connections to the embedded MQTT broker")?,
        registry,
    };
    m.registry.register(Box::new(m.runs_submitted.clone()))?;
    m.registry.register(Box::new(m.runs_ended.clone()))?;
    m.registry.register(Box::new(m.promises.clone()))?;
    m.registry.register(Box::new(m.runs_queued.clone()))?;
    m.registry.register(Box::new(m.runs_running.clone()))?;
    m.registry.register(Box::new(m.commands.clone()))?;
    m.registry.register(Box::new(m.command_seconds.clone()))?;
    m.registry.register(Box::new(m.journal_seconds.clone()))?;
    m.registry.register(Box::new(m.repairs.clone()))?;
    m.registry.register(Box::new(m.repair_seconds.clone()))?;
    m.registry.register(Box::new(m.interventions_opened.clone()))?;
    m.registry.register(Box::new(m.instruments_available.clone()))?;
    m.registry.register(Box::new(m.instruments.clone()))?;
    m.registry.register(Box::new(m.mqtt_connections.clone()))?;
    Ok(m)
}

static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| match build() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "metrics are off: cannot build them");
        None
    }
});

/// Records into labd's metrics (nothing when they could not be built).
pub fn with(f: impl FnOnce(&Metrics)) {
    if let Some(m) = METRICS.as_ref() {
        f(m);
    }
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let Some(m) = METRICS.as_ref() else { return String::new() };
    let mut out = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_what_was_recorded() {
        super::with(|m| {
            m.runs_ended.with_label_values(&["succeeded"]).inc();
            m.command_seconds.with_label_values(&["liquid handler"]).observe(0.003);
        });
        let text = super::render();
        assert!(text.contains("labwright_runs_ended_total{state=\"succeeded\"}"), "{text}");
        assert!(text.contains("labwright_command_seconds_bucket{family=\"liquid handler\",le=\"0.005\"}"), "{text}");
    }
}
