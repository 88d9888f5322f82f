//! Resolve: labware names to definitions, well references to concrete wells.

use crate::ast::{Named, Protocol, WellRef};
use crate::diag::{did_you_mean, Diagnostic, Diagnostics};
use labware::{LabwareDef, Library, WellSelection};
use std::collections::HashMap;

/// One labware item of the run.
#[derive(Debug, Clone)]
pub struct Slot {
    pub name: String,
    pub def: LabwareDef,
}

/// A well of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc {
    pub slot: usize,
    pub well: usize,
}

/// The labware of a run, resolved against the library.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
}

impl Env {
    /// Resolves every labware declaration; unknown types get a diagnostic and no slot.
    pub fn build(p: &Protocol, lib: &Library, d: &mut Diagnostics) -> Env {
        let mut local = Library::new();
        for def in &p.custom_labware {
            local.insert(def.clone());
        }
        let mut env = Env::default();
        for decl in &p.labware {
            if env.by_name.contains_key(&decl.name.name) {
                d.push(Diagnostic::error(
                    "P0201",
                    decl.name.span,
                    format!("labware `{}` is declared twice", decl.name.name),
                ));
                continue;
            }
            let def = local.get(&decl.load_name.name).or_else(|| lib.get(&decl.load_name.name));
            match def {
                Some(def) => {
                    env.by_name.insert(decl.name.name.clone(), env.slots.len());
                    env.slots.push(Slot { name: decl.name.name.clone(), def: def.clone() });
                }
                None => {
                    let sugg = lib.suggest(&decl.load_name.name);
                    let hint = if sugg.is_empty() {
                        "run `labctl labware list` to see the labware this lab knows, or import a definition with `labctl labware import`".to_string()
                    } else {
                        format!("did you mean `{}`?", sugg.join("`, `"))
                    };
                    d.push(
                        Diagnostic::error(
                            "P0201",
                            decl.load_name.span,
                            format!("unknown labware type `{}`", decl.load_name.name),
                        )
                        .with_hint(hint),
                    );
                }
            }
        }
        env
    }

    /// The slot of a labware name, with a "did you mean" diagnostic when there is none.
    pub fn slot(&self, name: &Named, d: &mut Diagnostics) -> Option<usize> {
        self.slot_by(&name.name, name.span, d)
    }

    fn slot_by(&self, name: &str, span: crate::source::Span, d: &mut Diagnostics) -> Option<usize> {
        if let Some(&i) = self.by_name.get(name) {
            return Some(i);
        }
        let hint = did_you_mean(name, self.slots.iter().map(|s| s.name.as_str()))
            .unwrap_or_else(|| "declare it under `labware:`".to_string());
        d.push(Diagnostic::error("P0202", span, format!("no labware named `{name}` in this protocol")).with_hint(hint));
        None
    }

    /// Slot index without diagnostics.
    pub fn lookup(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The wells a reference names, in order.
    pub fn wells(&self, r: &WellRef, d: &mut Diagnostics) -> Option<Vec<Loc>> {
        let slot = self.slot_by(&r.labware, r.span, d)?;
        let def = &self.slots[slot].def;
        let sel = match WellSelection::parse(&r.selection) {
            Ok(s) => s,
            Err(e) => {
                d.push(Diagnostic::error("P0205", r.span, e.to_string()).with_hint(
                    "wells are written `A1`, `A1:H12`, `A1:H12 by row`, `A` (a row), `1` (a column) or a comma list",
                ));
                return None;
            }
        };
        match sel.resolve(def) {
            Ok(idx) => Some(idx.into_iter().map(|well| Loc { slot, well }).collect()),
            Err(e) => {
                d.push(
                    Diagnostic::error("P0203", r.span, format!("{}/{}: {e}", r.labware, r.selection))
                        .with_hint(format!("`{}` is a {} ({})", r.labware, def.load_name, def.grid_description())),
                );
                None
            }
        }
    }

    /// `plate/A1` for messages.
    pub fn describe(&self, loc: Loc) -> String {
        let s = &self.slots[loc.slot];
        format!("{}/{}", s.name, s.def.wells[loc.well].name)
    }

    /// Well name of a location.
    pub fn well_name(&self, loc: Loc) -> &str {
        &self.slots[loc.slot].def.wells[loc.well].name
    }

    /// The wells a head of `channels` channels reaches with its first channel at `loc`
    /// ([`labware::LabwareDef::head_wells`]). `None` when the head would reach past the last row.
    pub fn channel_wells(&self, loc: Loc, channels: u32) -> Option<Vec<Loc>> {
        let wells = self.slots[loc.slot].def.head_wells(loc.well, channels)?;
        Some(wells.into_iter().map(|well| Loc { slot: loc.slot, well }).collect())
    }
}
