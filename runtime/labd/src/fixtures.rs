//! What unit tests share: the shipped ELISA example compiled for the shipped simulated site.

/// `protocols/examples/elisa.yaml` compiled for `sites/sim.toml`.
pub fn elisa() -> protocols::RunPlan {
    let site = labware::Site::from_toml(include_str!("../../../sites/sim.toml")).unwrap();
    let source = protocols::SourceFile::new("elisa.yaml", include_str!("../../../protocols/examples/elisa.yaml"));
    protocols::compile(&source, protocols::Format::Auto, &site, &labware::Library::shipped())
        .plan
        .expect("elisa compiles")
}
