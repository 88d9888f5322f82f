//! The physical world as data: labware definitions, well geometry, well addresses and the site.
//!
//! Main types: [`LabwareDef`] (one labware type: footprint and wells), [`Library`] (the labware
//! Labwright ships, embedded in the binary), [`WellSelection`] (the one well-address parser of the
//! project) and [`Site`] (what a lab has: instruments, nests, arms, prices — read from `lab.toml`).
//!
//! This crate does no IO of its own: callers hand it text, it hands back data or an error that
//! names what and where. It never depends on tokio, a database or a network crate.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod address;
pub mod def;
pub mod library;
pub mod opentrons;
pub mod optics;
pub mod service;
pub mod site;

pub use address::{AddressError, WellSelection};
pub use def::{Footprint, LabwareDef, LabwareError, LabwareKind, TipSpec, Well, WellShape};
pub use library::Library;
pub use service::ServiceClass;
pub use site::{InstrumentClass, Site, SiteError, StorageUnit, STORAGE_CONDITIONS};
