//! Import arbitrary bytes as an Opentrons labware definition and as Labwright labware.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = labware::opentrons::import(text);
        let _ = labware::LabwareDef::from_json(text);
        if let Ok(sel) = labware::WellSelection::parse(text) {
            let _ = sel;
        }
    }
});
