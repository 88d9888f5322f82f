//! Integration tests of the devices crate: real drivers over real PTYs and sockets against the
//! simulators, and (when installed) against peers nobody here wrote.

mod arm_station;
mod liquid;
mod modules;
mod opentrons;
mod pylabrobot;
mod reader;
mod recovery;
mod roundtrip;
mod sila_mapped;
mod support;
