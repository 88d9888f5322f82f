//! Parse and compile arbitrary bytes as an Opentrons protocol: must never panic or hang.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::compile(data, protocols::Format::Opentrons));
