//! Shared by the compile targets: compile arbitrary bytes in one format and render every
//! diagnostic. Must never panic or hang.

use std::sync::OnceLock;

fn env() -> &'static (labware::Site, labware::Library) {
    static ENV: OnceLock<(labware::Site, labware::Library)> = OnceLock::new();
    ENV.get_or_init(|| (labware::Site::sim().expect("shipped site"), labware::Library::shipped()))
}

/// Compiles `data` as a protocol of `format` (invalid UTF-8 is the caller's diagnostic, skipped).
pub fn compile(data: &[u8], format: protocols::Format) {
    let (site, lib) = env();
    if let Ok(src) = protocols::SourceFile::from_bytes("fuzz", data.to_vec()) {
        let c = protocols::compile(&src, format, site, lib);
        for d in &c.diagnostics {
            let _ = d.render(&src);
        }
    }
}
