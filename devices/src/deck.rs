//! Deck geometry shared by the liquid-handler driver and its simulator: where each slot is, which
//! labware sits in it, and where every well is in deck coordinates.
//!
//! Coordinates are millimetres from the deck's front-left corner; `z` is height above the deck.
//! The layout follows the OT-2: twelve 128 × 86 mm slots on a 132.5 × 90.5 mm pitch, three per
//! row, slot 1 front-left, slot 12 (back-right) the fixed trash.

use labware::{LabwareDef, LabwareKind, Library};
use protocols::plan::RunPlan;

/// Slot pitch in x and y.
pub const SLOT_PITCH: (f64, f64) = (132.5, 90.5);
/// The trash slot.
pub const TRASH_SLOT: u32 = 12;
/// Distance between the channels of a multi-channel head (one row of a 96-well plate).
pub const CHANNEL_PITCH_MM: f64 = 9.0;

/// Front-left corner of a slot (1-based).
pub fn slot_origin(slot: u32) -> (f64, f64) {
    let i = slot.saturating_sub(1);
    ((i % 3) as f64 * SLOT_PITCH.0, (i / 3) as f64 * SLOT_PITCH.1)
}

/// One labware item on the deck.
#[derive(Debug, Clone)]
pub struct Placed {
    pub slot: u32,
    pub name: String,
    pub def: LabwareDef,
}

/// What sits where.
#[derive(Debug, Clone, Default)]
pub struct Deck {
    pub items: Vec<Placed>,
}

/// A point in deck coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

impl Deck {
    /// Places the run's deck labware in slots 1, 2, … in plan order (the trash is slot 12).
    pub fn for_plan(plan: &RunPlan, lib: &Library, slots: u32) -> Result<Deck, String> {
        let mut deck = Deck::default();
        let mut next = 1;
        for lw in &plan.labware {
            if matches!(lw.kind, LabwareKind::Trash) {
                continue;
            }
            let def = plan.labware_def(&lw.load_name, lib).ok_or_else(|| {
                format!("labware `{}` has type `{}`, which is not in the library", lw.name, lw.load_name)
            })?;
            if next > slots.min(TRASH_SLOT - 1) {
                return Err(format!(
                    "the run needs more than {} deck slots (at `{}`)",
                    slots.min(TRASH_SLOT - 1),
                    lw.name
                ));
            }
            deck.items.push(Placed { slot: next, name: lw.name.clone(), def: def.clone() });
            next += 1;
        }
        Ok(deck)
    }

    pub fn get(&self, name: &str) -> Option<&Placed> {
        self.items.iter().find(|p| p.name == name)
    }

    /// Bottom centre of a well in deck coordinates.
    pub fn well_bottom(&self, name: &str, well: &str) -> Result<Point, String> {
        let p = self.get(name).ok_or_else(|| format!("labware `{name}` is not on this deck"))?;
        let w = p.def.well(well).ok_or_else(|| format!("`{name}` ({}) has no well {well}", p.def.load_name))?;
        let (ox, oy) = slot_origin(p.slot);
        Ok(Point { x: ox + w.x_mm, y: oy + w.y_mm, z: w.z_mm })
    }

    /// The deck declaration lines the driver sends before a run (G-code comments: a real
    /// controller ignores them; the simulator learns its deck from them, as a technician's
    /// loading sheet would tell a person).
    pub fn declaration(&self) -> Vec<String> {
        self.items.iter().map(|p| format!("; deck slot={} name={} load={}", p.slot, p.name, p.def.load_name)).collect()
    }

    /// Rebuilds a deck from declaration lines (the simulator's side).
    pub fn declare(&mut self, line: &str, lib: &Library) -> Result<(), String> {
        let mut slot = None;
        let mut name = None;
        let mut load = None;
        for tok in line.trim_start_matches(';').split_whitespace().skip(1) {
            match tok.split_once('=') {
                Some(("slot", v)) => slot = v.parse::<u32>().ok(),
                Some(("name", v)) => name = Some(v.to_string()),
                Some(("load", v)) => load = Some(v.to_string()),
                _ => {}
            }
        }
        let (Some(slot), Some(name), Some(load)) = (slot, name, load) else {
            return Err(format!("bad deck declaration `{line}`"));
        };
        let def = lib.get(&load).ok_or_else(|| format!("unknown labware `{load}`"))?.clone();
        self.items.retain(|p| p.slot != slot && p.name != name);
        self.items.push(Placed { slot, name, def });
        Ok(())
    }

    /// The labware and well whose opening contains the point (x, y), if any.
    pub fn well_at(&self, x: f64, y: f64) -> Option<(usize, usize)> {
        for (i, p) in self.items.iter().enumerate() {
            let (ox, oy) = slot_origin(p.slot);
            for (j, w) in p.def.wells.iter().enumerate() {
                let (hx, hy) = match w.shape {
                    labware::WellShape::Circular { diameter_mm } => (diameter_mm / 2.0, diameter_mm / 2.0),
                    labware::WellShape::Rectangular { length_mm, width_mm } => (length_mm / 2.0, width_mm / 2.0),
                };
                if (x - ox - w.x_mm).abs() <= hx && (y - oy - w.y_mm).abs() <= hy {
                    return Some((i, j));
                }
            }
        }
        None
    }
}
