//! `labctl`: validate, compile and quote protocols; manage labware.
fn main() {
    std::process::exit(labd::labctl::main());
}
