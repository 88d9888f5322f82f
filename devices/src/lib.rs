//! Instruments: the contract every driver meets, and the routing from plan commands to the
//! instrument families that execute them.
//!
//! This crate will hold the sans-IO codecs (G-code, PF400, SiLA 2), their tokio transports and
//! the simulators. What is here today is what the executor needs to decide *what* to send and
//! *how to treat a failure*: [`Family`] routing with per-command deadlines, and the one
//! [`InstrumentError`] every family maps its wire errors to, classified for the executor.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod error;
pub mod route;

pub use error::{InstrumentError, Recovery};
pub use route::{deadline, family, Family};
