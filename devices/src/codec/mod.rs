//! Sans-IO codecs: bytes in, typed replies and classified errors out; never a panic.

pub mod lines;
pub mod module;
pub mod opentrons;
pub mod opentrons_module;
pub mod pf400;
pub mod smoothie;
pub mod station;
