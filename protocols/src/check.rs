//! Check: liquid tracking through the whole protocol, on the lowered commands.
//!
//! Tracking runs on commands rather than on steps so every front end (Labwright, Autoprotocol,
//! Opentrons) is checked the same way, and what is checked is exactly what will run. Mixtures are
//! tracked by composition: aspirating takes each liquid in proportion.

use crate::ast::{Protocol, UnlistedWells};
use crate::diag::{did_you_mean, Diagnostic, Diagnostics};
use crate::lower::LTask;
use crate::plan::CommandOp;
use crate::resolve::{Env, Loc};
use crate::source::Span;
use labware::WellSelection;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const EPS: f64 = 1e-6;

/// Name of the liquid drawn from a well whose contents the protocol does not state.
pub const UNSPECIFIED: &str = "(unspecified)";

/// What is in one well.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WellState {
    /// Liquid by name, µL.
    pub contents: BTreeMap<String, f64>,
    /// Contents before the protocol are unknown (imported protocols): under-draws are not errors.
    pub unknown: bool,
    /// Started empty though unlisted wells are unknown (an Autoprotocol `new` container): once an
    /// instruction puts liquid in, the well holds exactly what was put in and is tracked.
    pub fresh: bool,
}

impl WellState {
    /// Total volume, µL.
    pub fn volume(&self) -> f64 {
        self.contents.values().sum()
    }

    /// Removes `v` µL in proportion to the composition, returning what was taken.
    fn take(&mut self, v: f64) -> BTreeMap<String, f64> {
        let total = self.volume();
        let mut out = BTreeMap::new();
        if total <= EPS {
            return out;
        }
        let f = (v / total).min(1.0);
        for (name, amount) in self.contents.iter_mut() {
            let part = *amount * f;
            *amount -= part;
            out.insert(name.clone(), part);
        }
        self.contents.retain(|_, a| *a > EPS * 1e-3);
        out
    }

    fn add(&mut self, mix: &BTreeMap<String, f64>) {
        for (name, amount) in mix {
            *self.contents.entry(name.clone()).or_insert(0.0) += amount;
        }
    }
}

/// The liquid state after the protocol ran, for tests and result reports.
#[derive(Debug, Clone, Default)]
pub struct Tracked {
    /// Per slot, per well.
    pub wells: Vec<Vec<WellState>>,
    /// Liquid left in tips when they were dropped, µL.
    pub waste_ul: f64,
    /// Reagent added by the lab (provision/dispense), µL.
    pub added_ul: f64,
    /// Liquid drawn from wells of unknown content beyond what the protocol put there, µL.
    pub unspecified_drawn_ul: f64,
    /// Where each liquid first reached each labware it was moved into: (liquid, slot) →
    /// (task, command), for how long it then waits (`crate::waiting`).
    pub arrivals: BTreeMap<(String, usize), (usize, usize)>,
}

impl Tracked {
    /// Total volume in all wells.
    pub fn total_in_wells(&self) -> f64 {
        self.wells.iter().flatten().map(WellState::volume).sum()
    }
}

/// Sets up the initial contents and checks declared liquids.
pub fn initial(p: &Protocol, env: &Env, d: &mut Diagnostics) -> Tracked {
    let mut t = Tracked {
        wells: env
            .slots
            .iter()
            .map(|s| {
                let unknown = p.unlisted_wells == UnlistedWells::Unknown;
                let fresh = unknown && p.labware.iter().any(|l| l.name.name == s.name && l.starts_empty);
                vec![WellState { unknown, fresh, ..Default::default() }; s.def.wells.len()]
            })
            .collect(),
        ..Default::default()
    };
    let declared: BTreeSet<&str> = p.liquids.iter().map(|l| l.name.as_str()).collect();
    let strict = p.unlisted_wells == UnlistedWells::Empty;
    let mut over_full = PerStep::default();
    for decl in &p.labware {
        let Some(slot) = env.lookup(&decl.name.name) else { continue };
        let def = &env.slots[slot].def;
        for c in &decl.contents {
            if strict && !declared.contains(c.liquid.as_str()) {
                let hint = did_you_mean(&c.liquid, declared.iter().copied())
                    .unwrap_or_else(|| format!("declare it under `liquids:`, e.g. `{}: description`", c.liquid));
                d.push(Diagnostic::error("P0204", c.span, format!("unknown liquid `{}`", c.liquid)).with_hint(hint));
            }
            let wells = match WellSelection::parse(&c.selection).and_then(|s| s.resolve(def)) {
                Ok(w) => w,
                Err(e) => {
                    d.push(
                        Diagnostic::error("P0203", c.span, format!("{}/{}: {e}", decl.name.name, c.selection))
                            .with_hint(format!("`{}` has {}", decl.name.name, def.grid_description())),
                    );
                    continue;
                }
            };
            for w in wells {
                let state = &mut t.wells[slot][w];
                state.unknown = false;
                *state.contents.entry(c.liquid.clone()).or_insert(0.0) += c.volume_ul;
                let max = def.wells[w].max_volume_ul;
                if state.volume() > max + EPS {
                    let well = format!("{}/{}", decl.name.name, def.wells[w].name);
                    over_full.add(
                        well,
                        state.volume() - max,
                        Diagnostic::error(
                            "P0301",
                            c.span,
                            format!(
                                "{}/{} starts with {} but holds at most {}",
                                decl.name.name,
                                def.wells[w].name,
                                crate::units::fmt_ul(state.volume()),
                                crate::units::fmt_ul(max)
                            ),
                        )
                        .with_hint("lower the starting volume or use a larger well"),
                    );
                }
            }
        }
    }
    over_full.emit(d);
    t
}

/// Replays every command, reporting over-full wells, under-drawn wells and tips that dispense
/// more than they hold. A well is reported once per problem; the wells one step gets wrong the
/// same way are one diagnostic (the worst well, the count and the wells), so an over-full
/// `distribute` to 384 wells reads as one error, not 384.
///
/// A multi-channel head's command moves liquid in every well its channels reach
/// ([`Env::channel_wells`]), each channel with its own tip.
pub fn liquids(
    env: &Env,
    tasks: &[LTask],
    channels: &BTreeMap<String, u32>,
    mut t: Tracked,
    d: &mut Diagnostics,
) -> Tracked {
    // What each channel's tip holds, by pipette and channel.
    let mut tips: HashMap<(String, usize), BTreeMap<String, f64>> = HashMap::new();
    // The wells a command reaches, one per channel.
    let reach = |pipette: &str, labware: &str, well: &str| -> Vec<Loc> {
        let Some(loc) = locate(env, labware, well) else { return Vec::new() };
        let n = channels.get(pipette).copied().unwrap_or(1);
        env.channel_wells(loc, n).unwrap_or_else(|| vec![loc])
    };
    let mut reported: BTreeSet<(&'static str, Loc)> = BTreeSet::new();
    let mut per_step = PerStep::default();
    let mut report = |code: &'static str, loc: Loc, by_ul: f64, diag: Diagnostic| {
        if reported.insert((code, loc)) {
            per_step.add(env.describe(loc), by_ul, diag);
        }
    };
    let mut arrivals: BTreeMap<(String, usize), (usize, usize)> = BTreeMap::new();
    let mut arrived = |given: &BTreeMap<String, f64>, loc: Loc, at: (usize, usize)| {
        for (liquid, ul) in given {
            if *ul > EPS {
                arrivals.entry((liquid.clone(), loc.slot)).or_insert(at);
            }
        }
    };
    for (ti, task) in tasks.iter().enumerate() {
        for (ci, (cmd, &span)) in task.commands.iter().zip(&task.spans).enumerate() {
            match &cmd.op {
                CommandOp::Aspirate { pipette, labware, well, volume_ul } => {
                    for (channel, loc) in reach(pipette, labware, well).into_iter().enumerate() {
                        let state = &mut t.wells[loc.slot][loc.well];
                        let have = state.volume();
                        let mut drawn = state.take(*volume_ul);
                        let short = volume_ul - have;
                        if short > EPS {
                            // The tip is credited with what is missing, so one under-draw is
                            // reported once and does not cascade into "dispenses more than the
                            // tip holds".
                            *drawn.entry(UNSPECIFIED.to_string()).or_insert(0.0) += short;
                            t.unspecified_drawn_ul += short;
                            if !state.unknown {
                                report("P0302", loc, short, under_drawn(env, loc, *volume_ul, have, span));
                            }
                        }
                        let tip = tips.entry((pipette.clone(), channel)).or_default();
                        for (k, v) in drawn {
                            *tip.entry(k).or_insert(0.0) += v;
                        }
                    }
                }
                CommandOp::Dispense { pipette, labware, well, volume_ul } => {
                    for (channel, loc) in reach(pipette, labware, well).into_iter().enumerate() {
                        let tip = tips.entry((pipette.clone(), channel)).or_default();
                        let in_tip: f64 = tip.values().sum();
                        if *volume_ul > in_tip + 1e-3 {
                            report(
                                "P0308",
                                loc,
                                volume_ul - in_tip,
                                Diagnostic::error(
                                    "P0308",
                                    span,
                                    format!(
                                        "dispenses {} into {} but the tip holds only {}",
                                        crate::units::fmt_ul(*volume_ul),
                                        env.describe(loc),
                                        crate::units::fmt_ul(in_tip)
                                    ),
                                )
                                .with_hint("aspirate at least as much as you dispense"),
                            );
                        }
                        let mut tip_state = WellState { contents: std::mem::take(tip), ..Default::default() };
                        let given = tip_state.take(*volume_ul);
                        *tip = tip_state.contents;
                        arrived(&given, loc, (ti, ci));
                        fill(env, &mut t, loc, &given, span, &mut report);
                    }
                }
                CommandOp::BlowOut { pipette, labware, well } => {
                    for (channel, loc) in reach(pipette, labware, well).into_iter().enumerate() {
                        let given = std::mem::take(tips.entry((pipette.clone(), channel)).or_default());
                        arrived(&given, loc, (ti, ci));
                        fill(env, &mut t, loc, &given, span, &mut report);
                    }
                }
                CommandOp::AddReagent { reagent, labware, well, volume_ul } => {
                    let Some(loc) = locate(env, labware, well) else { continue };
                    t.added_ul += volume_ul;
                    let given = BTreeMap::from([(reagent.clone(), *volume_ul)]);
                    arrived(&given, loc, (ti, ci));
                    fill(env, &mut t, loc, &given, span, &mut report);
                }
                CommandOp::DropTip { pipette } => {
                    let n = channels.get(pipette).copied().unwrap_or(1) as usize;
                    for channel in 0..n {
                        if let Some(tip) = tips.remove(&(pipette.clone(), channel)) {
                            t.waste_ul += tip.values().sum::<f64>();
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for tip in tips.values() {
        t.waste_ul += tip.values().sum::<f64>();
    }
    per_step.emit(d);
    t.arrivals = arrivals;
    t
}

/// Per-well diagnostics grouped by problem and step (code and span).
#[derive(Default)]
struct PerStep {
    groups: Vec<Group>,
}

struct Group {
    /// The worst well's diagnostic.
    worst: Diagnostic,
    /// By how much the worst well is wrong (µL).
    by_ul: f64,
    /// Every well, in the order they went wrong.
    wells: Vec<String>,
}

impl PerStep {
    fn add(&mut self, well: String, by_ul: f64, diag: Diagnostic) {
        match self.groups.iter_mut().find(|g| g.worst.code == diag.code && g.worst.span == diag.span) {
            Some(g) => {
                if by_ul > g.by_ul + EPS {
                    g.worst = diag;
                    g.by_ul = by_ul;
                }
                g.wells.push(well);
            }
            None => self.groups.push(Group { worst: diag, by_ul, wells: vec![well] }),
        }
    }

    fn emit(self, d: &mut Diagnostics) {
        for mut g in self.groups {
            if g.wells.len() > 1 {
                g.worst.message = format!(
                    "{} — the worst of {} wells this step gets wrong the same way: {}",
                    g.worst.message,
                    g.wells.len(),
                    well_list(&g.wells)
                );
            }
            d.push(g.worst);
        }
    }
}

/// Wells for a message: all of a few; the first three and the last of many.
fn well_list(wells: &[String]) -> String {
    match wells {
        [first, second, third, .., last] if wells.len() > 6 => format!("{first}, {second}, {third}, …, {last}"),
        _ => wells.join(", "),
    }
}

fn fill(
    env: &Env,
    t: &mut Tracked,
    loc: Loc,
    given: &BTreeMap<String, f64>,
    span: Span,
    report: &mut impl FnMut(&'static str, Loc, f64, Diagnostic),
) {
    let state = &mut t.wells[loc.slot][loc.well];
    if state.fresh {
        // What a `new` container's well holds is what instructions put in.
        state.unknown = false;
        state.fresh = false;
    }
    state.add(given);
    let max = env.slots[loc.slot].def.wells[loc.well].max_volume_ul;
    let vol = state.volume();
    if vol > max + 1e-3 {
        let def = &env.slots[loc.slot].def;
        report(
            "P0301",
            loc,
            vol - max,
            Diagnostic::error(
                "P0301",
                span,
                format!(
                    "{} would hold {} but holds at most {}",
                    env.describe(loc),
                    crate::units::fmt_ul(vol),
                    crate::units::fmt_ul(max)
                ),
            )
            .with_hint(format!(
                "{} wells of {} hold {}; lower the volumes or use deeper labware",
                def.display_name,
                def.load_name,
                crate::units::fmt_ul(max)
            )),
        );
    }
}

fn under_drawn(env: &Env, loc: Loc, want: f64, have: f64, span: Span) -> Diagnostic {
    Diagnostic::error(
        "P0302",
        span,
        format!(
            "draws {} from {}, which holds only {} at this point",
            crate::units::fmt_ul(want),
            env.describe(loc),
            crate::units::fmt_ul(have.max(0.0))
        ),
    )
    .with_hint("start the well with more liquid, or draw less; earlier steps may already have taken from it")
}

fn locate(env: &Env, labware: &str, well: &str) -> Option<Loc> {
    let slot = env.lookup(labware)?;
    let w = env.slots[slot].def.well_index(well)?;
    Some(Loc { slot, well: w })
}
