//! `labd`: the Labwright runtime. Today: `labd sim`, the simulated instruments of a site as
//! separate endpoints.
fn main() {
    // The log goes to stderr; `labd serve` sets its level and format from labd.toml.
    std::process::exit(labd::daemon::main());
}
