//! What an instrument must be able to do for a command: one predicate per capability, used by
//! the compiler twice — to refuse a step no instrument of the site can do (P0401, in `lower`),
//! and to list, for every task, the instruments that can do *all* of it (`Task::instruments`),
//! which the scheduler keeps to in the first plan and in every repair. So work is never routed
//! to an instrument the compiler did not check (a luminescence read to an absorbance-only
//! reader when the luminescence reader is in maintenance).

use crate::plan::{CommandOp, Task};
use labware::site::{Instrument, ReadMode, SealMode};
use labware::{InstrumentClass, LabwareKind, Site};

pub fn reads_absorbance(i: &Instrument, nm: f64) -> bool {
    i.modes.contains(&ReadMode::Absorbance) && i.absorbance_nm.is_some_and(|r| r.contains(nm))
}

pub fn reads_fluorescence(i: &Instrument, excitation_nm: f64, emission_nm: f64) -> bool {
    i.modes.contains(&ReadMode::Fluorescence)
        && i.excitation_nm.is_some_and(|r| r.contains(excitation_nm))
        && i.emission_nm.is_some_and(|r| r.contains(emission_nm))
}

pub fn reads_luminescence(i: &Instrument) -> bool {
    i.modes.contains(&ReadMode::Luminescence)
}

pub fn holds_temperature(i: &Instrument, c: f64) -> bool {
    i.temperature_c.is_some_and(|r| r.contains(c))
}

/// Whether it keeps a CO₂ atmosphere of `percent` (a cell-culture incubator).
pub fn holds_co2(i: &Instrument, percent: f64) -> bool {
    i.co2_percent.is_some_and(|r| r.contains(percent))
}

pub fn shakes_at(i: &Instrument, rpm: f64) -> bool {
    i.shaking_rpm.is_some_and(|r| r.contains(rpm))
}

pub fn seals(i: &Instrument, mode: SealMode) -> bool {
    i.seal_modes.contains(&mode)
}

pub fn spins_at(i: &Instrument, g: f64) -> bool {
    i.max_g.is_some_and(|m| g <= m)
}

/// Deck slots a liquid handler offers labware: an OT-2-style deck has twelve, the twelfth the
/// fixed trash (the drivers place a run's labware in slots 1, 2, … in plan order).
pub const DECK_SLOTS: u32 = 11;

/// Whether a liquid handler's deck takes `labware` items (trash not counted) at once.
pub fn deck_holds(i: &Instrument, labware: usize) -> bool {
    labware <= i.deck_slots.unwrap_or(DECK_SLOTS).min(DECK_SLOTS) as usize
}

/// Whether `i` can carry out `op` (commands that need no particular capability: yes).
pub fn can(i: &Instrument, op: &CommandOp) -> bool {
    use CommandOp::*;
    match op {
        ReadAbsorbance { wavelengths_nm, .. } => wavelengths_nm.iter().all(|&nm| reads_absorbance(i, nm)),
        ReadFluorescence { excitation_nm, emission_nm, .. } => reads_fluorescence(i, *excitation_nm, *emission_nm),
        ReadLuminescence { .. } => reads_luminescence(i),
        Incubate { temperature_c, shake_rpm, co2_percent, .. } => {
            temperature_c.is_none_or(|t| holds_temperature(i, t))
                && shake_rpm.is_none_or(|s| shakes_at(i, s))
                && co2_percent.is_none_or(|c| holds_co2(i, c))
        }
        Shake { rpm, temperature_c, .. } => shakes_at(i, *rpm) && temperature_c.is_none_or(|t| holds_temperature(i, t)),
        SetTemperature { temperature_c, .. } => holds_temperature(i, *temperature_c),
        SetShakeSpeed { rpm, .. } => *rpm == 0.0 || shakes_at(i, *rpm),
        Seal { .. } => seals(i, SealMode::Seal),
        Peel { .. } => seals(i, SealMode::Peel),
        Centrifuge { g, .. } => spins_at(i, *g),
        // Pipettes are matched by the scheduler from `Task::pipettes` (an imported protocol
        // names its own pipette models, which a site may not carry under that name).
        PickUpTip { .. }
        | Aspirate { .. }
        | Dispense { .. }
        | Mix { .. }
        | BlowOut { .. }
        | MoveTo { .. }
        | DropTip { .. }
        | Home
        | MoveLabware { .. }
        | AddReagent { .. }
        | WaitForTemperature { .. }
        | StopShaking
        | StopHeating
        | Latch { .. }
        | Cover { .. }
        | Uncover { .. }
        | Wait { .. }
        | Manual { .. } => true,
    }
}

/// The instruments of the site that can run every command of `task` on labware of `kinds`,
/// in site order. Empty for tasks no instrument runs (delays, manual steps, lid handling).
pub fn instruments_for(site: &Site, task: &Task, kinds: &[LabwareKind]) -> Vec<String> {
    let Some(class) = task.class else { return Vec::new() };
    if matches!(class, InstrumentClass::Technician | InstrumentClass::RobotArm) {
        return Vec::new();
    }
    site.instruments_of(class)
        .filter(|i| kinds.iter().all(|&k| i.accepts(k)) && task.commands.iter().all(|c| can(i, &c.op)))
        .map(|i| i.id.clone())
        .collect()
}
