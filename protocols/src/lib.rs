//! The experiment language, its importers, the compiler and the plan IR.
//!
//! The pipeline reads like the module tree: [`syntax`] (YAML/JSON with spans) → [`lang`] or
//! [`import`] (into [`ast`]) → [`resolve`] (labware and wells) → [`lower`] (device-class tasks
//! and commands, capability checks) → [`check`] (liquid tracking) → [`compile`] (dependencies,
//! time constraints, the [`plan::RunPlan`]) → [`quote`].
//!
//! The compiler never fails with `Err` on a user's mistake: [`compile::compile`] returns its output
//! together with every [`diag::Diagnostic`] it found. This crate does no IO and never depends on
//! tokio, tonic, prost or a database.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod ast;
pub mod capability;
pub mod check;
pub mod compile;
pub mod consumables;
pub mod design;
pub mod diag;
pub mod held;
pub mod import;
pub mod lang;
pub mod lower;
pub mod plan;
pub mod quote;
mod read;
pub mod resolve;
pub mod shape;
pub mod source;
pub mod syntax;
pub mod units;
pub mod waiting;

pub use compile::{compile, compile_bytes, compile_bytes_with, compile_with, Compilation, Format};
pub use diag::{Diagnostic, Severity};
pub use plan::RunPlan;
pub use source::SourceFile;
