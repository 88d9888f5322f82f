//! Compiles the `.proto` contracts with protox (pure Rust), so no system `protoc` is needed.
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    let files = ["labwright/v1/protocols.proto"];
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = match protox::compile(files, [&root]) {
        Ok(fds) => fds,
        Err(e) => panic!("cannot compile protos: {e}"),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(fds) {
        panic!("cannot generate Rust from protos: {e}");
    }
}
