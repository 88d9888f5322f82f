//! End-to-end suites across crates. Today: the dependency invariants of DESIGN.md, checked on
//! the real dependency graph with `cargo metadata`.

mod invariants;
