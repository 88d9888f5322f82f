//! Compiles the `.proto` contracts with protox (pure Rust), so no system `protoc` is needed.
//! Messages come from prost; gRPC clients and servers for the SiLA 2 features from tonic.
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let api = compile(
        &root,
        &[
            "labwright/v1/protocols.proto",
            "labwright/v1/runs.proto",
            "labwright/v1/admin.proto",
            "labwright/v1/lab.proto",
            "labwright/v1/inventory.proto",
        ],
    );
    // The encoded descriptors, for the gRPC reflection service.
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("labwright_descriptor.bin");
    if let Err(e) = std::fs::write(&out, prost::Message::encode_to_vec(&api)) {
        panic!("cannot write {}: {e}", out.display());
    }
    // The API's messages also serialise to JSON: the technician console speaks JSON over HTTP.
    let api_builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .type_attribute(".labwright.v1", "#[derive(serde::Serialize)]");
    if let Err(e) = api_builder.compile_fds(api) {
        panic!("cannot generate Rust from the API protos: {e}");
    }
    let sila = compile(&root, &["sila2/SiLAFramework.proto", "sila2/SiLAService.proto", "sila2/PlateReader.proto"]);
    if let Err(e) = tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(sila) {
        panic!("cannot generate Rust from the SiLA 2 protos: {e}");
    }
}

fn compile(root: &Path, files: &[&str]) -> tonic_prost_build::FileDescriptorSet {
    match protox::compile(files, [root]) {
        Ok(fds) => fds,
        Err(e) => panic!("cannot compile protos {files:?}: {e}"),
    }
}
