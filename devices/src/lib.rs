//! Instruments: the contract every driver meets, the wire codecs, the transports, the drivers and
//! the simulators that speak the device side of the same wire.
//!
//! - [`Instrument`]: one async trait for every family, shaped like a SiLA 2 observable command.
//! - [`codec`]: sans-IO codecs per wire protocol (Opentrons module G-code, OT-2 motion G-code,
//!   PF400 text lines, Labwright's station line protocol).
//! - [`link`]: the thin tokio transport (serial, PTY, TCP) with deadlines, resync and reconnect.
//! - [`driver`]: plan commands → wire exchanges, one driver per family.
//! - [`sim`]: the device side, with state, device time and fault injection.
//! - [`sila`]: SiLA 2 over gRPC (client helpers, error mapping, the simulated plate reader server).
//! - [`InstrumentError`]: every wire error mapped to one classification for the executor.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod codec;
pub mod deck;
pub mod driver;
pub mod error;
pub mod instrument;
pub mod link;
pub mod route;
pub mod sila;
pub mod sim;

pub use error::{InstrumentError, Recovery};
pub use instrument::{
    Arm, Execution, Identity, Instrument, Measurement, Outcome, Progress, Settled, State, Status, TimeScale,
    Whereabouts,
};
pub use route::{deadline, family, Family};

/// Locks a mutex whose guarded state stays usable after a panic elsewhere (plain data).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
