//! `labd`: the Labwright runtime. Today: `labd sim`, the simulated instruments of a site as
//! separate endpoints.
fn main() {
    std::process::exit(labd::daemon::main());
}
