//! Importers: other labs' protocol formats into Labwright's experiment tree.

pub mod autoprotocol;
pub mod opentrons;
pub mod opentrons_analysis;
