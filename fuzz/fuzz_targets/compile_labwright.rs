//! Parse and compile arbitrary bytes as a Labwright protocol: must never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn env() -> &'static (labware::Site, labware::Library) {
    static ENV: OnceLock<(labware::Site, labware::Library)> = OnceLock::new();
    ENV.get_or_init(|| (labware::Site::sim().expect("shipped site"), labware::Library::shipped()))
}

fuzz_target!(|data: &[u8]| {
    let (site, lib) = env();
    if let Ok(src) = protocols::SourceFile::from_bytes("fuzz", data.to_vec()) {
        let c = protocols::compile(&src, protocols::Format::Labwright, site, lib);
        for d in &c.diagnostics {
            let _ = d.render(&src);
        }
    }
});
