//! Where labd's log goes: `tracing` events to stderr, as text for people or JSON lines for a log
//! collector, at the level `log_level` (labd.toml) or `RUST_LOG` (which wins) says. Events
//! carry structured fields (`run`, `tenant`, `instrument`, `cell`, …); no event holds a token or
//! a password.

use serde::Deserialize;

/// `log_format` in labd.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A log filter (`log_level` in labd.toml, or `RUST_LOG`) that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}{hint}")]
pub struct BadFilter {
    setting: String,
    message: String,
    hint: &'static str,
}

/// Installs the subscriber once; a second call (tests, `labd demo` inside a test) is a no-op.
pub fn init(level: &str, format: LogFormat) -> Result<(), BadFilter> {
    use tracing_subscriber::EnvFilter;
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
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).with_ansi(false);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    // Already installed: the first subscriber stays.
    drop(installed);
    Ok(())
}
