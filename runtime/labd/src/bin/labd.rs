//! `labd`: the Labwright runtime. Today: `labd sim`, the simulated instruments of a site as
//! separate endpoints.
fn main() {
    // What labd logs through `tracing` goes to stderr, informational and up.
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(tracing::Level::INFO).with_ansi(false).init();
    std::process::exit(labd::daemon::main());
}
