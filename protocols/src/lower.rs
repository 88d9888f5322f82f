//! Lower: high-level operations to device-class tasks and commands.
//!
//! Rules (stated in `docs/protocol-language.md`, tested below and in the compiler tests):
//! - A step becomes one task for one instrument class. Consecutive pipetting steps share one
//!   liquid-handler task, so the plates stay on the deck, unless a step has an `id` (something
//!   may refer to it, so it gets its own task).
//! - The pipette for a pipetting step is the one with the smallest capacity that takes every
//!   volume of the step in one go; if none does, the largest whose minimum fits, splitting volumes.
//! - A volume larger than the tip holds is split the Opentrons way: whole tips while more than two
//!   tips remain, then the rest in two equal parts (120 µL on a 50 µL tip: 50 + 35 + 35), so the
//!   last part is never a tiny, inaccurate one.
//! - Tips come from the protocol's tip racks of a matching size, rack by rack, column by column.
//! - Column-wise work runs on a multi-channel head where the site has one taking the same tips
//!   ([`Lowerer::columns`]); consecutive steps share a task only while one liquid handler
//!   carries every pipette they use.

use crate::ast::*;
use crate::capability;
use crate::diag::{Diagnostic, Diagnostics};
use crate::plan::{Command, CommandOp, Settings};
use crate::resolve::{Env, Loc};
use crate::source::Span;
use labware::site::{ReadMode, SealMode};
use labware::{InstrumentClass, Site};
use std::collections::{BTreeMap, BTreeSet};

/// A pipette the lowering may use.
#[derive(Debug, Clone, PartialEq)]
pub struct PipetteSpec {
    pub name: String,
    pub channels: u32,
    pub min_ul: f64,
    pub max_ul: f64,
    pub tip_ul: f64,
    pub flow_ul_per_s: f64,
}

/// A task before dependencies are computed.
#[derive(Debug, Clone)]
pub struct LTask {
    pub class: Option<InstrumentClass>,
    pub label: String,
    pub holds: BTreeSet<usize>,
    pub commands: Vec<Command>,
    /// Span of each command's step, parallel to `commands`, for liquid-tracking diagnostics.
    pub spans: Vec<Span>,
    pub settings: Settings,
    pub pipettes: BTreeSet<String>,
    pub span: Span,
    pub ids: Vec<Named>,
    pub after: Vec<Named>,
    /// A task that touches no labware (wait, a manual step without labware) orders everything.
    pub barrier: bool,
    mergeable: bool,
}

/// Splits `v` into parts no larger than `cap` (see the module rules).
pub fn split_volume(v: f64, cap: f64) -> Vec<f64> {
    let mut out = Vec::new();
    if cap.is_nan() || cap <= 0.0 || !v.is_finite() || v <= 0.0 {
        return out;
    }
    let mut rest = v;
    // Bound the loop: a pathological volume/capacity ratio is reported, not looped over.
    while rest > cap * 2.0 + 1e-9 && out.len() < 1_000_000 {
        out.push(cap);
        rest -= cap;
    }
    if rest > cap + 1e-9 {
        out.push(rest / 2.0);
        out.push(rest / 2.0);
    } else {
        out.push(rest);
    }
    out
}

struct Rack {
    slot: usize,
    tip_ul: f64,
    next: usize,
}

/// Shortfall of tips of one size.
struct Shortage {
    needed: usize,
    first_span: Span,
    rack_load_name: Option<String>,
    per_rack: usize,
    have_racks: usize,
}

/// Whether the arm drivers can take a lid off and put it back (the scheduler models lid tasks;
/// no arm driver carries them out yet, so `cover` and `uncover` are refused).
const ARMS_HANDLE_LIDS: bool = false;

/// Per-command duration estimates, seconds.
mod est {
    pub const PICK_UP_TIP: f64 = 2.3;
    pub const DROP_TIP: f64 = 3.2;
    pub const MOVE_TO_WELL: f64 = 1.75;
    /// From one well to the next of the same labware, dispensing on (the simulators' motion
    /// measures 1.41 s; see devices' quoted-timing test).
    pub const MOVE_NEXT_WELL: f64 = 1.45;
    pub const BLOW_OUT: f64 = 1.0;
    pub const HOME: f64 = 5.0;
    pub const MOVE_LABWARE: f64 = 15.0;
    pub const ADD_REAGENT: f64 = 3.0;
    /// A read: the door twice (load, eject) and setting up, then each well and wavelength
    /// measured (0.05 s, moving to it included); luminescence integrates each well for 1 s (the
    /// drivers' setting).
    const READ_SETUP: f64 = 13.0;
    const PER_WELL: f64 = 0.05;
    pub fn read_absorbance(wells: usize, wavelengths: usize) -> f64 {
        READ_SETUP + PER_WELL * (wells * wavelengths.max(1)) as f64
    }
    pub fn read_fluorescence(wells: usize) -> f64 {
        READ_SETUP + PER_WELL * wells as f64
    }
    pub fn read_luminescence(wells: usize) -> f64 {
        READ_SETUP + (PER_WELL + 1.0) * wells as f64
    }
    pub const SEAL: f64 = 12.0;
    pub const PEEL: f64 = 15.0;
    pub const LID: f64 = 8.0;
    pub const SPIN_UP_DOWN: f64 = 90.0;
    pub const SHAKE_SETTLE: f64 = 10.0;
    pub const SET_POINT: f64 = 2.0;
}

/// The output of lowering.
#[derive(Debug, Default)]
pub struct Lowered {
    pub tasks: Vec<LTask>,
    /// Channels of every pipette the commands name (the liquid check follows each channel).
    pub channels: BTreeMap<String, u32>,
}

/// Lowers all steps of a protocol.
pub fn lower(p: &Protocol, env: &Env, site: &Site, d: &mut Diagnostics) -> Lowered {
    let mut l = Lowerer::new(p, env, site);
    for step in &p.steps {
        l.step(step, d);
        if l.emitted > MAX_COMMANDS {
            d.push(
                Diagnostic::error(
                    "P0111",
                    step.span,
                    format!("the protocol comes to more than {MAX_COMMANDS} device commands by this step"),
                )
                .with_hint("split the experiment into several runs"),
            );
            l.tasks.clear();
            break;
        }
    }
    l.finish(d)
}

/// Device commands one protocol may come to: far beyond any real run (a 384-well plate with a
/// fresh tip per well is a few thousand), and a bound on the compiler's memory and time.
pub const MAX_COMMANDS: usize = 250_000;

struct Lowerer<'a> {
    env: &'a Env,
    site: &'a Site,
    /// The site's single-channel pipettes, for work well by well.
    pipettes: Vec<PipetteSpec>,
    /// The site's multi-channel heads, for work column by column (see [`Lowerer::columns`]).
    multis: Vec<PipetteSpec>,
    /// Pipettes named by the protocol (Opentrons), by id, as this site runs them.
    declared: BTreeMap<String, PipetteSpec>,
    /// What became of each declared pipette on this site, said once at its first use.
    fitted: BTreeMap<String, Fit>,
    said: std::cell::RefCell<BTreeSet<String>>,
    racks: Vec<Rack>,
    lab_tips: bool,
    shortages: BTreeMap<u64, Shortage>,
    tasks: Vec<LTask>,
    no_rack_reported: bool,
    /// Commands emitted so far (bounded by `MAX_COMMANDS`).
    emitted: usize,
}

impl<'a> Lowerer<'a> {
    fn new(p: &Protocol, env: &'a Env, site: &'a Site) -> Lowerer<'a> {
        let racks: Vec<Rack> = env
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| s.def.tip.map(|t| Rack { slot, tip_ul: t.volume_ul, next: 0 }))
            .collect();
        let mut declared = BTreeMap::new();
        let mut fitted = BTreeMap::new();
        for pd in &p.pipettes {
            let fit = fit_pipette(site, pd);
            let name = match &fit {
                Fit::Runs { site, .. } => site.clone(),
                Fit::Same | Fit::Nothing => pd.name.clone(),
            };
            // The protocol's own volume range stays: it is what its author wrote against.
            declared.insert(
                pd.id.clone(),
                PipetteSpec {
                    name,
                    channels: pd.channels,
                    min_ul: pd.min_ul,
                    max_ul: pd.max_ul,
                    tip_ul: pd.max_ul,
                    flow_ul_per_s: pd.max_ul / 3.0,
                },
            );
            fitted.insert(pd.id.clone(), fit);
        }
        let (mut pipettes, mut multis): (Vec<PipetteSpec>, Vec<PipetteSpec>) = (Vec::new(), Vec::new());
        for inst in site.instruments_of(InstrumentClass::LiquidHandler) {
            for pp in &inst.pipettes {
                let list = if pp.channels == 1 { &mut pipettes } else { &mut multis };
                if !list.iter().any(|x| x.name == pp.name) {
                    list.push(PipetteSpec {
                        name: pp.name.clone(),
                        channels: pp.channels,
                        min_ul: pp.min_ul,
                        max_ul: pp.max_ul,
                        tip_ul: pp.tip_ul,
                        flow_ul_per_s: pp.flow_ul_per_s,
                    });
                }
            }
        }
        Lowerer {
            env,
            site,
            pipettes,
            multis,
            declared,
            fitted,
            said: Default::default(),
            racks,
            lab_tips: p.tips == TipSource::Lab,
            shortages: BTreeMap::new(),
            tasks: Vec::new(),
            no_rack_reported: false,
            emitted: 0,
        }
    }

    fn rack_fits(p: &PipetteSpec, tip_ul: f64) -> bool {
        tip_ul <= p.tip_ul + 1e-9 && tip_ul >= p.tip_ul / 2.0 - 1e-9
    }

    /// Capacity of one aspiration with this pipette, given the protocol's racks.
    fn capacity(&self, p: &PipetteSpec) -> Option<f64> {
        if self.lab_tips {
            return Some(p.max_ul);
        }
        self.racks.iter().filter(|r| Self::rack_fits(p, r.tip_ul)).map(|r| p.max_ul.min(r.tip_ul)).reduce(f64::max)
    }

    /// Chooses the pipette for a step moving these volumes (see module rules).
    fn choose(&mut self, vols: &[f64], span: Span, d: &mut Diagnostics) -> Option<(PipetteSpec, f64)> {
        let vmin = vols.iter().copied().fold(f64::INFINITY, f64::min);
        let vmax = vols.iter().copied().fold(0.0, f64::max);
        if vols.is_empty() || vmax <= 0.0 {
            return None;
        }
        let with_racks: Vec<(PipetteSpec, f64)> =
            self.pipettes.iter().filter_map(|p| self.capacity(p).map(|c| (p.clone(), c))).collect();
        if with_racks.is_empty() {
            if !self.no_rack_reported {
                self.no_rack_reported = true;
                let sizes: Vec<String> =
                    self.pipettes.iter().map(|p| format!("{} µL", crate::units::trim(p.tip_ul))).collect();
                let hint = if self.pipettes.is_empty() {
                    "this site has no liquid handler; pipetting steps cannot run here".to_string()
                } else {
                    format!("add a tip rack for one of the site's pipettes ({}), e.g. `tips: {{ type: opentrons_96_tiprack_300ul }}`", sizes.join(", "))
                };
                d.push(
                    Diagnostic::error("P0306", span, "no tip rack in this protocol fits a pipette of the site")
                        .with_hint(hint),
                );
            }
            return None;
        }
        if let Some(best) = pick(&with_racks, vmin, vmax) {
            return Some(best);
        }
        let smallest = with_racks.iter().min_by(|a, b| a.0.min_ul.total_cmp(&b.0.min_ul)).map(|(p, _)| p.clone());
        if let Some(s) = smallest {
            d.push(
                Diagnostic::error(
                    "P0303",
                    span,
                    format!(
                        "volume {} is below the minimum of every usable pipette (smallest: {} from {})",
                        crate::units::fmt_ul(vmin),
                        s.name,
                        crate::units::fmt_ul(s.min_ul)
                    ),
                )
                .with_hint("raise the volume, or add a tip rack for a smaller pipette (e.g. opentrons_96_tiprack_20ul for p20_single)"),
            );
        }
        None
    }

    /// Starts a task, or continues the previous one when both are mergeable pipetting and one
    /// liquid handler of the site carries every pipette both use (`pipette`: this step's).
    fn task(&mut self, class: Option<InstrumentClass>, label: String, step: &Step) -> usize {
        self.task_with(class, label, step, None)
    }

    fn task_with(
        &mut self,
        class: Option<InstrumentClass>,
        label: String,
        step: &Step,
        pipette: Option<&str>,
    ) -> usize {
        let mergeable = class == Some(InstrumentClass::LiquidHandler) && step.id.is_none() && step.after.is_empty();
        let site = self.site;
        let one_carries = |used: &BTreeSet<String>| {
            let Some(p) = pipette else { return true };
            site.instruments_of(InstrumentClass::LiquidHandler)
                .any(|i| used.iter().map(String::as_str).chain([p]).all(|n| i.pipettes.iter().any(|x| x.name == n)))
        };
        if let Some(last) = self.tasks.last_mut() {
            if mergeable && last.mergeable && last.class == class && one_carries(&last.pipettes) {
                last.span = last.span.join(step.span);
                if !last.label.contains(&label) && last.label.len() < 120 {
                    last.label = format!("{}, {label}", last.label);
                }
                return self.tasks.len() - 1;
            }
        }
        self.tasks.push(LTask {
            class,
            label,
            holds: BTreeSet::new(),
            commands: Vec::new(),
            spans: Vec::new(),
            settings: Settings::default(),
            pipettes: BTreeSet::new(),
            span: step.span,
            ids: step.id.iter().cloned().collect(),
            after: step.after.clone(),
            barrier: false,
            mergeable,
        });
        self.tasks.len() - 1
    }

    fn emit(&mut self, t: usize, op: CommandOp, repeatable: bool, duration_s: f64, span: Span) {
        // Estimates are rounded to 10 ms: finer digits are noise and make plans hard to diff.
        let duration_s = (duration_s * 100.0).round() / 100.0;
        self.emitted += 1;
        let task = &mut self.tasks[t];
        task.commands.push(Command { op, repeatable, estimate_s: duration_s });
        task.spans.push(span);
    }

    fn name(&self, loc: Loc) -> (String, String) {
        (self.env.slots[loc.slot].name.clone(), self.env.well_name(loc).to_string())
    }

    fn pick_up(&mut self, t: usize, p: &PipetteSpec, span: Span) {
        if self.lab_tips {
            let rack = format!("lab:tips_{}ul", crate::units::trim(p.tip_ul));
            self.tasks[t].pipettes.insert(p.name.clone());
            self.emit(
                t,
                CommandOp::PickUpTip { pipette: p.name.clone(), rack, well: "next".into() },
                false,
                est::PICK_UP_TIP,
                span,
            );
            return;
        }
        // A multi-channel head takes a whole column of tips: from the next full column.
        let take = p.channels.max(1) as usize;
        let env = self.env;
        let column_start = |r: &Rack| {
            let rows = env.slots[r.slot].def.rows().len().max(1);
            if take == 1 {
                r.next
            } else {
                r.next.div_ceil(rows) * rows
            }
        };
        let rack = self
            .racks
            .iter_mut()
            .find(|r| Self::rack_fits(p, r.tip_ul) && column_start(r) + take <= env.slots[r.slot].def.wells.len());
        let (rack_name, well) = match rack {
            Some(r) => {
                let def = &self.env.slots[r.slot].def;
                let first = column_start(r);
                let w = def.wells[first].name.clone();
                r.next = first + take;
                self.tasks[t].holds.insert(r.slot);
                (self.env.slots[r.slot].name.clone(), w)
            }
            None => {
                let fitting: Vec<&Rack> = self.racks.iter().filter(|r| Self::rack_fits(p, r.tip_ul)).collect();
                let key = (p.tip_ul * 1000.0) as u64;
                let per_rack = fitting.first().map_or(96, |r| self.env.slots[r.slot].def.wells.len());
                let load = fitting.first().map(|r| self.env.slots[r.slot].def.load_name.clone());
                let have = fitting.len();
                let s = self.shortages.entry(key).or_insert(Shortage {
                    needed: 0,
                    first_span: span,
                    rack_load_name: load,
                    per_rack,
                    have_racks: have,
                });
                s.needed += take;
                ("(missing rack)".to_string(), "-".to_string())
            }
        };
        self.tasks[t].pipettes.insert(p.name.clone());
        self.emit(
            t,
            CommandOp::PickUpTip { pipette: p.name.clone(), rack: rack_name, well },
            false,
            est::PICK_UP_TIP,
            span,
        );
    }

    fn drop_tip(&mut self, t: usize, p: &PipetteSpec, span: Span) {
        self.emit(t, CommandOp::DropTip { pipette: p.name.clone() }, true, est::DROP_TIP, span);
    }

    fn aspirate(&mut self, t: usize, p: &PipetteSpec, at: Loc, v: f64, span: Span) {
        let (labware, well) = self.name(at);
        self.tasks[t].holds.insert(at.slot);
        let dur = est::MOVE_TO_WELL + v / p.flow_ul_per_s;
        self.emit(t, CommandOp::Aspirate { pipette: p.name.clone(), labware, well, volume_ul: v }, false, dur, span);
    }

    fn dispense(&mut self, t: usize, p: &PipetteSpec, at: Loc, v: f64, span: Span) {
        let (labware, well) = self.name(at);
        self.tasks[t].holds.insert(at.slot);
        // Dispensing on along the same labware (a distribute) moves a well's width, not across the deck.
        let next_door = matches!(self.tasks[t].commands.last().map(|c| &c.op),
            Some(CommandOp::Dispense { labware: l, .. }) if *l == labware);
        let moving = if next_door { est::MOVE_NEXT_WELL } else { est::MOVE_TO_WELL };
        let dur = moving + v / p.flow_ul_per_s;
        self.emit(t, CommandOp::Dispense { pipette: p.name.clone(), labware, well, volume_ul: v }, false, dur, span);
    }

    fn mix(&mut self, t: usize, p: &PipetteSpec, cap: f64, at: Loc, m: MixSpec, span: Span) {
        let (labware, well) = self.name(at);
        self.tasks[t].holds.insert(at.slot);
        // Mixing more than a tip holds is done with a full tip: say so instead of failing.
        let volume_ul = m.volume_ul.min(cap);
        let dur = est::MOVE_TO_WELL + f64::from(m.times) * 2.0 * volume_ul / p.flow_ul_per_s;
        self.emit(
            t,
            CommandOp::Mix { pipette: p.name.clone(), labware, well, volume_ul, times: m.times },
            false,
            dur,
            span,
        );
    }

    fn labware_task(
        &mut self,
        step: &Step,
        lw: &Named,
        class: InstrumentClass,
        label: &str,
        d: &mut Diagnostics,
    ) -> Option<(usize, String)> {
        let slot = self.env.slot(lw, d)?;
        let kind = self.env.slots[slot].def.kind;
        self.require(
            class,
            step.field_span(&["labware"]),
            d,
            &format!("{label} {}", lw.name),
            |i| i.accepts(kind),
            &format!("accepts {}", kind.as_str()),
        )?;
        let t = self.task(Some(class), format!("{label} {}", lw.name), step);
        self.tasks[t].holds.insert(slot);
        Some((t, lw.name.clone()))
    }

    /// Checks that some instrument of `class` satisfies `ok`; reports P0401 otherwise.
    fn require(
        &self,
        class: InstrumentClass,
        span: Span,
        d: &mut Diagnostics,
        what: &str,
        ok: impl Fn(&labware::site::Instrument) -> bool,
        need: &str,
    ) -> Option<()> {
        let all: Vec<_> = self.site.instruments_of(class).collect();
        if all.is_empty() {
            d.push(Diagnostic::error("P0401", span, format!("{what}: this site has no {class}")).with_hint(format!(
                "site `{}` cannot run this step; ask the lab, or validate against another --site",
                self.site.site.name
            )));
            return None;
        }
        if all.iter().any(|i| ok(i)) {
            return Some(());
        }
        let ids: Vec<&str> = all.iter().map(|i| i.id.as_str()).collect();
        let caps: Vec<String> = all.iter().map(|i| format!("{}: {}", i.id, capabilities(i))).collect();
        d.push(
            Diagnostic::error(
                "P0401",
                span,
                format!("{what}: no {class} of this site {need} (checked {})", ids.join(", ")),
            )
            .with_hint(format!("what this site offers — {}", caps.join("; "))),
        );
        None
    }

    fn step(&mut self, step: &Step, d: &mut Diagnostics) {
        let span = step.span;
        match &step.op {
            Op::Transfer(tr) => self.transfer(step, tr, d),
            Op::SerialDilution { series, volume_ul, mix, tips, diluent } => {
                // The diluent first, into every well but each series' first, from one tip.
                if let Some((source, final_ul)) = diluent {
                    let from = self.env.wells(source, d).and_then(|w| (w.len() == 1).then(|| w[0]));
                    let Some(from) = from else {
                        d.push(Diagnostic::error("P0206", source.span, "the `diluent` is one well"));
                        return;
                    };
                    let mut pairs: Vec<(Loc, Loc, f64)> = Vec::new();
                    for s in series {
                        let Some(wells) = self.env.wells(s, d) else { continue };
                        pairs.extend(wells.iter().skip(1).map(|&w| (from, w, *final_ul)));
                    }
                    let spans = (source.span, source.span);
                    match self.columns(&pairs) {
                        Some((head, columns)) => {
                            self.pairs(step, "diluent", &columns, TipPolicy::Once, None, None, spans, Some(head), d)
                        }
                        None => self.pairs(step, "diluent", &pairs, TipPolicy::Once, None, None, spans, None, d),
                    }
                }
                let mut all: Vec<(Vec<Loc>, Span)> = Vec::new();
                for s in series {
                    let Some(wells) = self.env.wells(s, d) else { continue };
                    if wells.len() < 2 {
                        d.push(Diagnostic::error("P0206", s.span, "a dilution series needs at least two wells"));
                        continue;
                    }
                    all.push((wells, s.span));
                }
                // Series side by side (rows of one plate, the same columns) are diluted a
                // column at a time by a multi-channel head where one fits.
                if let Some((head, columns)) = self.series_columns(&all, *volume_ul) {
                    let span = all.iter().map(|s| s.1).reduce(Span::join).unwrap_or(step.span);
                    self.pairs(step, "serial dilution", &columns, *tips, None, *mix, (span, span), Some(head), d);
                    return;
                }
                for (wells, span) in &all {
                    let pairs: Vec<(Loc, Loc, f64)> = wells.windows(2).map(|w| (w[0], w[1], *volume_ul)).collect();
                    self.pairs(step, "serial dilution", &pairs, *tips, None, *mix, (*span, *span), None, d);
                }
            }
            Op::Mix { wells, mix, tips } => {
                let Some(locs) = self.env.wells(wells, d) else { return };
                let Some((p, cap)) = self.choose(&[mix.volume_ul], span, d) else { return };
                let t = self.task(Some(InstrumentClass::LiquidHandler), "mix".into(), step);
                let mut has_tip = false;
                for loc in locs {
                    if !has_tip || *tips == TipPolicy::Always || *tips == TipPolicy::PerSource {
                        if has_tip {
                            self.drop_tip(t, &p, span);
                        }
                        self.pick_up(t, &p, span);
                        has_tip = true;
                    }
                    self.mix(t, &p, cap, loc, *mix, wells.span);
                }
                if has_tip {
                    self.drop_tip(t, &p, span);
                }
            }
            Op::AddReagent { reagent, to } => {
                // Reagent from the lab's stock (Autoprotocol `provision`, `dispense`): a
                // technician adds it; no liquid handler here draws from the stock.
                let t = self.task(Some(InstrumentClass::Technician), format!("add {reagent}"), step);
                for (r, v) in to {
                    let Some(locs) = self.env.wells(r, d) else { continue };
                    for loc in locs {
                        let (labware, well) = self.name(loc);
                        self.tasks[t].holds.insert(loc.slot);
                        self.emit(
                            t,
                            CommandOp::AddReagent { reagent: reagent.clone(), labware, well, volume_ul: *v },
                            false,
                            est::ADD_REAGENT,
                            r.span,
                        );
                    }
                }
            }
            Op::Incubate { labware, temperature_c, duration_s, shake_rpm, co2_percent } => {
                let (temp, rpm, co2) = (*temperature_c, *shake_rpm, *co2_percent);
                let op = |lw: String| CommandOp::Incubate {
                    labware: lw,
                    temperature_c: temp,
                    duration_s: *duration_s,
                    shake_rpm: rpm,
                    co2_percent: co2,
                };
                let inc_ok = |i: &labware::site::Instrument| capability::can(i, &op(String::new()));
                let has_incubator = self.site.instruments_of(InstrumentClass::Incubator).any(inc_ok);
                let hs_ok = inc_ok;
                // An incubator is preferred; a heater-shaker can stand in when it covers the settings.
                let class = if has_incubator || !self.site.instruments_of(InstrumentClass::HeaterShaker).any(hs_ok) {
                    InstrumentClass::Incubator
                } else {
                    InstrumentClass::HeaterShaker
                };
                let mut need = match temp {
                    Some(t) => format!("holds {} °C", crate::units::trim(t)),
                    None => "holds a plate at ambient temperature".to_string(),
                };
                if let Some(s) = rpm {
                    need.push_str(&format!(" while shaking at {} rpm", crate::units::trim(s)));
                }
                if let Some(c) = co2 {
                    need.push_str(&format!(" in {} % CO₂", crate::units::trim(c)));
                }
                if self
                    .require(
                        class,
                        step.field_span(&["temperature", "shaking", "co2"]),
                        d,
                        &format!("incubate {}", labware.name),
                        inc_ok,
                        &need,
                    )
                    .is_none()
                {
                    return;
                }
                let Some((t, lw)) = self.labware_task(step, labware, class, "incubate", d) else { return };
                self.tasks[t].settings = Settings { temperature_c: temp, shake_rpm: rpm };
                self.emit(t, op(lw), false, *duration_s, span);
            }
            Op::Shake { labware, rpm, duration_s, temperature_c } => {
                let (s, temp) = (*rpm, *temperature_c);
                let ok = |i: &labware::site::Instrument| {
                    capability::shakes_at(i, s) && temp.is_none_or(|t| capability::holds_temperature(i, t))
                };
                if self
                    .require(
                        InstrumentClass::HeaterShaker,
                        step.field_span(&["speed"]),
                        d,
                        &format!("shake {}", labware.name),
                        ok,
                        &format!("shakes at {} rpm", crate::units::trim(s)),
                    )
                    .is_none()
                {
                    return;
                }
                let Some((t, lw)) = self.labware_task(step, labware, InstrumentClass::HeaterShaker, "shake", d) else {
                    return;
                };
                self.tasks[t].settings = Settings { temperature_c: temp, shake_rpm: Some(s) };
                self.emit(
                    t,
                    CommandOp::Shake { labware: lw, rpm: s, duration_s: *duration_s, temperature_c: temp },
                    false,
                    duration_s + est::SHAKE_SETTLE,
                    span,
                );
            }
            Op::Seal { labware } | Op::Unseal { labware } => {
                let seal = matches!(step.op, Op::Seal { .. });
                let mode = if seal { SealMode::Seal } else { SealMode::Peel };
                let verb = if seal { "seal" } else { "unseal" };
                if self
                    .require(
                        InstrumentClass::Sealer,
                        step.field_span(&["labware"]),
                        d,
                        &format!("{verb} {}", labware.name),
                        |i| capability::seals(i, mode),
                        &format!("can {}", if seal { "seal" } else { "peel" }),
                    )
                    .is_none()
                {
                    return;
                }
                let Some((t, lw)) = self.labware_task(step, labware, InstrumentClass::Sealer, verb, d) else { return };
                let (op, dur) = if seal {
                    (CommandOp::Seal { labware: lw }, est::SEAL)
                } else {
                    (CommandOp::Peel { labware: lw }, est::PEEL)
                };
                self.emit(t, op, false, dur, span);
            }
            Op::Cover { labware } | Op::Uncover { labware } => {
                let cover = matches!(step.op, Op::Cover { .. });
                let verb = if cover { "cover" } else { "uncover" };
                // Lids are handled by the plate arms, whose drivers cannot do it yet: refused here
                // rather than accepted and failed on the instrument.
                if !ARMS_HANDLE_LIDS {
                    d.push(
                        Diagnostic::error(
                            "P0401",
                            span,
                            format!("{verb} {}: the robot arms of this site do not handle lids yet", labware.name),
                        )
                        .with_hint("leave the lid to a `manual` step, or seal the plate instead"),
                    );
                    return;
                }
                if self.site.arms.is_empty() {
                    d.push(Diagnostic::error(
                        "P0401",
                        span,
                        format!("{verb} {}: this site has no robot arm to handle lids", labware.name),
                    ));
                    return;
                }
                let Some(slot) = self.env.slot(labware, d) else { return };
                let t = self.task(Some(InstrumentClass::RobotArm), format!("{verb} {}", labware.name), step);
                self.tasks[t].holds.insert(slot);
                let lw = labware.name.clone();
                let op = if cover { CommandOp::Cover { labware: lw } } else { CommandOp::Uncover { labware: lw } };
                self.emit(t, op, true, est::LID, span);
            }
            Op::ReadAbsorbance { labware, wells, wavelengths_nm } => {
                for &w in wavelengths_nm {
                    let ok = |i: &labware::site::Instrument| capability::reads_absorbance(i, w);
                    if self
                        .require(
                            InstrumentClass::PlateReader,
                            step.field_span(&["wavelength", "wavelengths"]),
                            d,
                            &format!("absorbance at {} nm", crate::units::trim(w)),
                            ok,
                            "reads that wavelength",
                        )
                        .is_none()
                    {
                        return;
                    }
                }
                let Some(ws) = self.read_wells(labware, wells.as_ref(), d) else { return };
                let Some((t, lw)) =
                    self.labware_task(step, labware, InstrumentClass::PlateReader, "read absorbance", d)
                else {
                    return;
                };
                let dur = est::read_absorbance(ws.len(), wavelengths_nm.len());
                self.emit(
                    t,
                    CommandOp::ReadAbsorbance { labware: lw, wells: ws, wavelengths_nm: wavelengths_nm.clone() },
                    true,
                    dur,
                    span,
                );
            }
            Op::ReadFluorescence { labware, wells, excitation_nm, emission_nm } => {
                let (ex, em) = (*excitation_nm, *emission_nm);
                let ok = |i: &labware::site::Instrument| capability::reads_fluorescence(i, ex, em);
                let what = format!("fluorescence {}/{} nm", crate::units::trim(ex), crate::units::trim(em));
                if self
                    .require(
                        InstrumentClass::PlateReader,
                        step.field_span(&["excitation", "emission"]),
                        d,
                        &what,
                        ok,
                        "covers that excitation and emission",
                    )
                    .is_none()
                {
                    return;
                }
                let Some(ws) = self.read_wells(labware, wells.as_ref(), d) else { return };
                let Some((t, lw)) =
                    self.labware_task(step, labware, InstrumentClass::PlateReader, "read fluorescence", d)
                else {
                    return;
                };
                let dur = est::read_fluorescence(ws.len());
                self.emit(
                    t,
                    CommandOp::ReadFluorescence { labware: lw, wells: ws, excitation_nm: ex, emission_nm: em },
                    true,
                    dur,
                    span,
                );
            }
            Op::ReadLuminescence { labware, wells } => {
                if self
                    .require(
                        InstrumentClass::PlateReader,
                        step.field_span(&["labware"]),
                        d,
                        "luminescence",
                        capability::reads_luminescence,
                        "reads luminescence",
                    )
                    .is_none()
                {
                    return;
                }
                let Some(ws) = self.read_wells(labware, wells.as_ref(), d) else { return };
                let Some((t, lw)) =
                    self.labware_task(step, labware, InstrumentClass::PlateReader, "read luminescence", d)
                else {
                    return;
                };
                let dur = est::read_luminescence(ws.len());
                self.emit(t, CommandOp::ReadLuminescence { labware: lw, wells: ws }, true, dur, span);
            }
            Op::Centrifuge { labware, g, duration_s } => {
                let g = *g;
                if self
                    .require(
                        InstrumentClass::Centrifuge,
                        step.field_span(&["force"]),
                        d,
                        &format!("centrifuge at {} ×g", crate::units::trim(g)),
                        |i| capability::spins_at(i, g),
                        "reaches that force",
                    )
                    .is_none()
                {
                    return;
                }
                let Some((t, lw)) = self.labware_task(step, labware, InstrumentClass::Centrifuge, "centrifuge", d)
                else {
                    return;
                };
                self.emit(
                    t,
                    CommandOp::Centrifuge { labware: lw, g, duration_s: *duration_s },
                    false,
                    duration_s + est::SPIN_UP_DOWN,
                    span,
                );
            }
            Op::Thermocycle { labware, stages } => {
                let temps: Vec<f64> = stages.iter().map(|s| s.0).collect();
                let ok = |i: &labware::site::Instrument| temps.iter().all(|&t| capability::holds_temperature(i, t));
                let (lo, hi) = temps.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &t| (a.min(t), b.max(t)));
                let need = format!("holds {}–{} °C", crate::units::trim(lo), crate::units::trim(hi));
                let span_t = step.field_span(&["profile"]);
                let what = format!("thermocycle {}", labware.name);
                if self.require(InstrumentClass::Thermocycler, span_t, d, &what, ok, &need).is_none() {
                    return;
                }
                let Some((t, lw)) = self.labware_task(step, labware, InstrumentClass::Thermocycler, "thermocycle", d)
                else {
                    return;
                };
                // One hold per command: the thermocycler's driver reaches each temperature and
                // keeps it (the estimate adds a set-point change for each).
                for &(temperature, hold_s) in stages {
                    let op = CommandOp::Incubate {
                        labware: lw.clone(),
                        temperature_c: Some(temperature),
                        duration_s: hold_s,
                        shake_rpm: None,
                        co2_percent: None,
                    };
                    self.emit(t, op, false, hold_s + est::SET_POINT, span);
                }
            }
            Op::Wait { duration_s } => {
                let t = self.task(None, format!("wait {}", crate::units::trim(*duration_s)), step);
                self.tasks[t].barrier = true;
                self.emit(t, CommandOp::Wait { duration_s: *duration_s }, true, *duration_s, span);
            }
            Op::Manual { instruction, labware, duration_s } => {
                let t = self.task(
                    Some(InstrumentClass::Technician),
                    format!("manual: {}", truncate(instruction, 40)),
                    step,
                );
                for lw in labware {
                    if let Some(s) = self.env.slot(lw, d) {
                        self.tasks[t].holds.insert(s);
                    }
                }
                self.tasks[t].barrier = labware.is_empty();
                self.emit(t, CommandOp::Manual { instruction: instruction.clone() }, false, *duration_s, span);
            }
            Op::Pipetting(cmds) => self.low_level(step, cmds, d),
            Op::HeaterShaker { labware, commands } => {
                let slot = labware.as_ref().and_then(|l| self.env.slot(l, d));
                let name = labware.as_ref().map(|l| l.name.clone());
                let t = self.task(
                    Some(InstrumentClass::HeaterShaker),
                    format!("heater-shaker {}", name.clone().unwrap_or_default()),
                    step,
                );
                if let Some(s) = slot {
                    self.tasks[t].holds.insert(s);
                }
                for c in commands {
                    let (op, dur) = match c {
                        ModuleCommand::SetTemperature(x) => {
                            if self
                                .require(
                                    InstrumentClass::HeaterShaker,
                                    span,
                                    d,
                                    &format!("heat to {} °C", crate::units::trim(*x)),
                                    |i| capability::holds_temperature(i, *x),
                                    "reaches that temperature",
                                )
                                .is_none()
                            {
                                continue;
                            }
                            (CommandOp::SetTemperature { labware: name.clone(), temperature_c: *x }, est::SET_POINT)
                        }
                        ModuleCommand::WaitForTemperature => {
                            (CommandOp::WaitForTemperature { labware: name.clone() }, 120.0)
                        }
                        ModuleCommand::SetShakeSpeed(x) => {
                            if self
                                .require(
                                    InstrumentClass::HeaterShaker,
                                    span,
                                    d,
                                    &format!("shake at {} rpm", crate::units::trim(*x)),
                                    |i| capability::shakes_at(i, *x),
                                    "shakes at that speed",
                                )
                                .is_none()
                            {
                                continue;
                            }
                            (CommandOp::SetShakeSpeed { labware: name.clone(), rpm: *x }, est::SHAKE_SETTLE)
                        }
                        ModuleCommand::StopShaking => (CommandOp::StopShaking, est::SHAKE_SETTLE),
                        ModuleCommand::StopHeating => (CommandOp::StopHeating, est::SET_POINT),
                        ModuleCommand::Latch { open } => (CommandOp::Latch { open: *open }, est::SET_POINT),
                    };
                    let repeatable = matches!(
                        op,
                        CommandOp::WaitForTemperature { .. }
                            | CommandOp::StopShaking
                            | CommandOp::StopHeating
                            | CommandOp::Latch { .. }
                    );
                    self.emit(t, op, repeatable, dur, span);
                }
            }
        }
    }

    fn read_wells(&self, labware: &Named, wells: Option<&WellRef>, d: &mut Diagnostics) -> Option<Vec<String>> {
        match wells {
            Some(r) => {
                if r.labware != labware.name {
                    d.push(Diagnostic::error(
                        "P0203",
                        r.span,
                        format!("`wells` are in `{}`, but the step reads `{}`", r.labware, labware.name),
                    ));
                    return None;
                }
                Some(self.env.wells(r, d)?.into_iter().map(|l| self.env.well_name(l).to_string()).collect())
            }
            None => {
                let slot = self.env.slot(labware, d)?;
                Some(self.env.slots[slot].def.wells.iter().map(|w| w.name.clone()).collect())
            }
        }
    }

    fn transfer(&mut self, step: &Step, tr: &Transfer, d: &mut Diagnostics) {
        let (Some(src), Some(dst)) = (self.env.wells(&tr.from, d), self.env.wells(&tr.to, d)) else { return };
        let n = src.len().max(dst.len());
        let vols: Vec<f64> = match &tr.volumes {
            Volumes::Same(v) => vec![*v; n],
            Volumes::PerPair(vs) => {
                if vs.len() != n {
                    d.push(
                        Diagnostic::error(
                            "P0206",
                            tr.volume_span,
                            format!("{} volumes given for {n} well pairs", vs.len()),
                        )
                        .with_hint("give one volume per destination well, or a single volume for all"),
                    );
                    return;
                }
                vs.clone()
            }
        };
        let pairs: Vec<(Loc, Loc, f64)> = match (src.len(), dst.len()) {
            (a, b) if a == b => src.iter().zip(&dst).zip(&vols).map(|((s, t), v)| (*s, *t, *v)).collect(),
            (1, _) => dst.iter().zip(&vols).map(|(t, v)| (src[0], *t, *v)).collect(),
            (_, 1) => src.iter().zip(&vols).map(|(s, v)| (*s, dst[0], *v)).collect(),
            (a, b) => {
                d.push(
                    Diagnostic::error("P0206", step.span, format!("{a} source wells and {b} destination wells cannot be paired"))
                        .with_hint("use as many sources as destinations, one source for many destinations, or many sources for one destination"),
                );
                return;
            }
        };
        let label = match tr.kind {
            TransferKind::Transfer => "transfer",
            TransferKind::Distribute => "distribute",
            TransferKind::Consolidate => "consolidate",
        };
        let head = if tr.kind == TransferKind::Consolidate { None } else { self.columns(&pairs) };
        match tr.kind {
            TransferKind::Transfer => {
                let spans = (tr.from.span, tr.to.span);
                match head {
                    Some((head, columns)) => {
                        self.pairs(step, label, &columns, tr.tips, tr.mix_before, tr.mix_after, spans, Some(head), d)
                    }
                    None => self.pairs(step, label, &pairs, tr.tips, tr.mix_before, tr.mix_after, spans, None, d),
                }
            }
            TransferKind::Distribute | TransferKind::Consolidate => match head {
                Some((head, columns)) => self.multi(step, tr, &columns, Some(head), d),
                None => self.multi(step, tr, &pairs, None, d),
            },
        }
    }

    /// The same well pairs as column moves of a multi-channel head, when a head of the site
    /// can do every one of them (see docs/protocol-language.md, "Multi-channel heads"): the
    /// destinations fall into whole channel sets (a column of an 8-row plate; alternate rows of
    /// a 16-row plate's column), each moving one volume, from a trough well or from a channel
    /// set of the source in the same row order; no well is both drawn from and filled in the
    /// step, so moving column by column changes nothing. Returns the head and one pair per
    /// channel set (its first channel's wells), in the order of each set's first pair.
    fn columns(&self, pairs: &[(Loc, Loc, f64)]) -> Option<(Head, Vec<Move>)> {
        let vols: Vec<f64> = pairs.iter().map(|p| p.2).filter(|v| *v > 0.0).collect();
        let head = self.choose_multi(&vols)?;
        let n = head.0.channels as usize;
        let live: Vec<&(Loc, Loc, f64)> = pairs.iter().filter(|p| p.2 > 0.0).collect();
        if live.is_empty() || live.len() % n != 0 {
            return None;
        }
        let sources: BTreeSet<Loc> = live.iter().map(|p| p.0).collect();
        if live.iter().any(|p| sources.contains(&p.1)) {
            return None;
        }
        let mut out = Vec::new();
        let mut done: BTreeSet<Loc> = BTreeSet::new();
        for p in &live {
            if done.contains(&p.1) {
                continue;
            }
            // The set this destination belongs to, from its first channel.
            let set = self.channel_set_of(p.1, n)?;
            let members: Vec<&&(Loc, Loc, f64)> =
                set.iter().map(|w| live.iter().find(|q| q.1 == *w)).collect::<Option<Vec<_>>>()?;
            let v = members[0].2;
            if members.iter().any(|m| (m.2 - v).abs() > 1e-9) {
                return None;
            }
            let src: Vec<Loc> = members.iter().map(|m| m.0).collect();
            if self.env.channel_wells(src[0], n as u32)? != src {
                return None;
            }
            done.extend(set.iter().copied());
            out.push((src[0], set[0], v));
        }
        Some((head, out))
    }

    /// Dilution series of equal length, one move per column step: every series' k-th well
    /// to its (k+1)-th, for k in order, each step done column-wise (see [`Self::columns`]).
    fn series_columns(&self, all: &[(Vec<Loc>, Span)], volume_ul: f64) -> Option<(Head, Vec<Move>)> {
        let len = all.first()?.0.len();
        if all.iter().any(|s| s.0.len() != len) {
            return None;
        }
        let mut head = None;
        let mut out = Vec::new();
        for k in 0..len - 1 {
            let step: Vec<(Loc, Loc, f64)> = all.iter().map(|s| (s.0[k], s.0[k + 1], volume_ul)).collect();
            let (h, cols) = self.columns(&step)?;
            head = Some(h);
            out.extend(cols);
        }
        Some((head?, out))
    }

    /// The channel set `loc` is in: the wells the head reaches with its first channel at the
    /// set's first row (`None` on labware a head cannot fill one well per channel).
    fn channel_set_of(&self, loc: Loc, n: usize) -> Option<Vec<Loc>> {
        let def = &self.env.slots[loc.slot].def;
        let rows = def.rows().len();
        if rows < n || rows % n != 0 {
            return None;
        }
        let step = rows / n;
        let name = &def.wells[loc.well].name;
        let row =
            def.rows().iter().position(|r| name.starts_with(r.as_str()) && name[r.len()..].parse::<u32>().is_ok())?;
        let first = def.well_index(&format!("{}{}", def.rows()[row % step], &name[def.rows()[row].len()..]))?;
        self.env.channel_wells(Loc { slot: loc.slot, well: first }, n as u32)
    }

    /// A multi-channel head for these volumes, chosen like a single-channel pipette (the
    /// smallest that takes every volume in one go, else the largest whose minimum fits);
    /// `None` without one, or without a tip rack that fits it.
    ///
    /// It uses the tips the single-channel choice would: the protocol's racks were chosen for
    /// those (a 20 µL step stays on 20 µL tips when only a 300 µL head has 8 channels).
    fn choose_multi(&self, vols: &[f64]) -> Option<(PipetteSpec, f64)> {
        let vmin = vols.iter().copied().fold(f64::INFINITY, f64::min);
        let vmax = vols.iter().copied().fold(0.0, f64::max);
        if vols.is_empty() || vmax <= 0.0 {
            return None;
        }
        let with_racks = |ps: &[PipetteSpec]| -> Vec<(PipetteSpec, f64)> {
            ps.iter().filter_map(|p| self.capacity(p).map(|c| (p.clone(), c))).collect()
        };
        let single = pick(&with_racks(&self.pipettes), vmin, vmax).map(|(p, _)| p.tip_ul);
        let usable: Vec<(PipetteSpec, f64)> = with_racks(&self.multis)
            .into_iter()
            .filter(|(p, _)| single.is_none_or(|tip| (p.tip_ul - tip).abs() < 1e-9))
            .collect();
        pick(&usable, vmin, vmax)
    }

    /// One aspirate and one dispense per pair (split by tip capacity).
    #[allow(clippy::too_many_arguments)]
    fn pairs(
        &mut self,
        step: &Step,
        label: &str,
        pairs: &[(Loc, Loc, f64)],
        tips: TipPolicy,
        mix_before: Option<MixSpec>,
        mix_after: Option<MixSpec>,
        (from_span, to_span): (Span, Span),
        head: Option<(PipetteSpec, f64)>,
        d: &mut Diagnostics,
    ) {
        // Tips and pipette choice belong to the step; volumes are blamed on the wells involved.
        let span = step.span;
        let vols: Vec<f64> = pairs.iter().map(|p| p.2).filter(|v| *v > 0.0).collect();
        let Some((p, cap)) = head.or_else(|| self.choose(&vols, span, d)) else { return };
        let t = self.task_with(Some(InstrumentClass::LiquidHandler), label.to_string(), step, Some(&p.name));
        let mut tip_source: Option<Loc> = None;
        let mut has_tip = false;
        for &(s, dst, v) in pairs {
            if v <= 0.0 {
                continue;
            }
            for part in split_volume(v, cap) {
                let fresh = match tips {
                    TipPolicy::Always => true,
                    TipPolicy::PerSource => tip_source != Some(s),
                    TipPolicy::Once => !has_tip,
                };
                if fresh {
                    if has_tip {
                        self.drop_tip(t, &p, span);
                    }
                    self.pick_up(t, &p, span);
                    has_tip = true;
                    tip_source = Some(s);
                }
                if let Some(m) = mix_before {
                    self.mix(t, &p, cap, s, m, from_span);
                }
                self.aspirate(t, &p, s, part, from_span);
                self.dispense(t, &p, dst, part, to_span);
                if let Some(m) = mix_after {
                    self.mix(t, &p, cap, dst, m, to_span);
                }
            }
        }
        if has_tip {
            self.drop_tip(t, &p, span);
        }
    }

    /// Distribute (one aspirate, many dispenses) or consolidate (many aspirates, one dispense).
    fn multi(
        &mut self,
        step: &Step,
        tr: &Transfer,
        pairs: &[(Loc, Loc, f64)],
        head: Option<(PipetteSpec, f64)>,
        d: &mut Diagnostics,
    ) {
        let vols: Vec<f64> = pairs.iter().map(|p| p.2).filter(|v| *v > 0.0).collect();
        let span = step.span;
        let Some((p, cap)) = head.or_else(|| self.choose(&vols, span, d)) else { return };
        let distribute = tr.kind == TransferKind::Distribute;
        let label = if distribute { "distribute" } else { "consolidate" };
        let t = self.task_with(Some(InstrumentClass::LiquidHandler), label.to_string(), step, Some(&p.name));
        // Flatten into parts no larger than a tip, then pack consecutive parts into tip loads.
        let parts: Vec<(Loc, Loc, f64)> =
            pairs.iter().flat_map(|&(s, dd, v)| split_volume(v, cap).into_iter().map(move |x| (s, dd, x))).collect();
        let mut has_tip = false;
        let mut i = 0;
        while i < parts.len() {
            let mut load = 0.0;
            let mut j = i;
            while j < parts.len() && load + parts[j].2 <= cap + 1e-9 {
                load += parts[j].2;
                j += 1;
            }
            if tr.tips == TipPolicy::Always || !has_tip {
                if has_tip {
                    self.drop_tip(t, &p, span);
                }
                self.pick_up(t, &p, span);
                has_tip = true;
            }
            if distribute {
                let src = parts[i].0;
                if let Some(m) = tr.mix_before {
                    self.mix(t, &p, cap, src, m, tr.from.span);
                }
                self.aspirate(t, &p, src, load, tr.from.span);
                for &(_, dst, v) in &parts[i..j] {
                    self.dispense(t, &p, dst, v, tr.to.span);
                    if let Some(m) = tr.mix_after {
                        self.mix(t, &p, cap, dst, m, tr.to.span);
                    }
                }
            } else {
                for &(src, _, v) in &parts[i..j] {
                    if let Some(m) = tr.mix_before {
                        self.mix(t, &p, cap, src, m, tr.from.span);
                    }
                    self.aspirate(t, &p, src, v, tr.from.span);
                }
                let dst = parts[i].1;
                self.dispense(t, &p, dst, load, tr.to.span);
                if let Some(m) = tr.mix_after {
                    self.mix(t, &p, cap, dst, m, tr.to.span);
                }
            }
            i = j;
        }
        if has_tip {
            self.drop_tip(t, &p, span);
        }
    }

    /// Opentrons-style commands, checked against the pipette the protocol names.
    fn low_level(&mut self, step: &Step, cmds: &[LowLevel], d: &mut Diagnostics) {
        let t = self.task(Some(InstrumentClass::LiquidHandler), "pipetting".to_string(), step);
        for c in cmds {
            match c {
                LowLevel::PickUpTip { pipette, rack } => {
                    let Some(p) = self.pipette(pipette, rack.span, d) else { continue };
                    let Some(locs) = self.env.wells(rack, d) else { continue };
                    if let Some(&loc) = locs.first() {
                        if self.env.slots[loc.slot].def.tip.is_none() {
                            d.push(Diagnostic::error(
                                "P0306",
                                rack.span,
                                format!("`{}` is not a tip rack", rack.labware),
                            ));
                            continue;
                        }
                        let (r, w) = self.name(loc);
                        self.tasks[t].holds.insert(loc.slot);
                        self.tasks[t].pipettes.insert(p.name.clone());
                        self.emit(
                            t,
                            CommandOp::PickUpTip { pipette: p.name.clone(), rack: r, well: w },
                            false,
                            est::PICK_UP_TIP,
                            rack.span,
                        );
                    }
                }
                LowLevel::Aspirate { pipette, at, volume_ul } | LowLevel::Dispense { pipette, at, volume_ul } => {
                    let Some(p) = self.pipette(pipette, at.span, d) else { continue };
                    if *volume_ul > p.max_ul + 1e-9 {
                        d.push(Diagnostic::error(
                            "P0304",
                            at.span,
                            format!(
                                "{} exceeds {}'s maximum of {}",
                                crate::units::fmt_ul(*volume_ul),
                                p.name,
                                crate::units::fmt_ul(p.max_ul)
                            ),
                        ));
                    } else if *volume_ul > 0.0 && *volume_ul + 1e-9 < p.min_ul {
                        d.push(Diagnostic::error(
                            "P0303",
                            at.span,
                            format!(
                                "{} is below {}'s minimum of {}",
                                crate::units::fmt_ul(*volume_ul),
                                p.name,
                                crate::units::fmt_ul(p.min_ul)
                            ),
                        ));
                    }
                    let Some(locs) = self.env.wells(at, d) else { continue };
                    let Some(&loc) = locs.first() else { continue };
                    if matches!(c, LowLevel::Aspirate { .. }) {
                        self.aspirate(t, &p, loc, *volume_ul, at.span);
                    } else {
                        self.dispense(t, &p, loc, *volume_ul, at.span);
                    }
                }
                LowLevel::BlowOut { pipette, at } => {
                    let Some(p) = self.pipette(pipette, at.span, d) else { continue };
                    let Some(loc) = self.env.wells(at, d).and_then(|l| l.first().copied()) else { continue };
                    let (labware, well) = self.name(loc);
                    self.emit(
                        t,
                        CommandOp::BlowOut { pipette: p.name.clone(), labware, well },
                        false,
                        est::BLOW_OUT,
                        at.span,
                    );
                }
                LowLevel::MoveTo { pipette, at } => {
                    let span = at.as_ref().map_or(step.span, |a| a.span);
                    let Some(p) = self.pipette(pipette, span, d) else { continue };
                    let target = match at {
                        Some(a) => match self.env.wells(a, d).and_then(|l| l.first().copied()) {
                            Some(loc) => {
                                let (l, w) = self.name(loc);
                                (Some(l), Some(w))
                            }
                            None => continue,
                        },
                        None => (None, None),
                    };
                    self.emit(
                        t,
                        CommandOp::MoveTo { pipette: p.name.clone(), labware: target.0, well: target.1 },
                        true,
                        est::MOVE_TO_WELL,
                        span,
                    );
                }
                LowLevel::DropTip { pipette } => {
                    let Some(p) = self.pipette(pipette, step.span, d) else { continue };
                    self.drop_tip(t, &p, step.span);
                }
                LowLevel::Home => self.emit(t, CommandOp::Home, true, est::HOME, step.span),
                LowLevel::MoveLabware { labware, to } => {
                    if let Some(s) = self.env.slot(labware, d) {
                        self.tasks[t].holds.insert(s);
                        self.emit(
                            t,
                            CommandOp::MoveLabware { labware: labware.name.clone(), to: to.clone() },
                            false,
                            est::MOVE_LABWARE,
                            labware.span,
                        );
                    }
                }
            }
        }
    }

    fn pipette(&self, id: &str, span: Span, d: &mut Diagnostics) -> Option<PipetteSpec> {
        let p = self.declared.get(id).cloned();
        let Some(p) = p else {
            d.push(Diagnostic::error("P0202", span, format!("no pipette `{id}` is loaded in this protocol")));
            return None;
        };
        let first_use = self.said.borrow_mut().insert(id.to_string());
        match self.fitted.get(id) {
            Some(Fit::Nothing) => {
                if first_use {
                    let carried = site_pipettes(self.site)
                        .map(|sp| format!("{} ({} channel(s), {}–{} µL)", sp.name, sp.channels, sp.min_ul, sp.max_ul))
                        .collect::<BTreeSet<_>>();
                    d.push(
                        Diagnostic::error(
                            "P0401",
                            span,
                            format!(
                                "pipette `{}` ({} channel(s), {}–{} µL): no liquid handler of this site carries one like it",
                                p.name, p.channels, p.min_ul, p.max_ul
                            ),
                        )
                        .with_hint(format!(
                            "this site's pipettes: {}; load one of them or one these cover",
                            carried.into_iter().collect::<Vec<_>>().join(", ")
                        )),
                    );
                }
                None
            }
            Some(Fit::Runs { model, site }) => {
                if first_use {
                    d.push(Diagnostic::warning(
                        "P0512",
                        span,
                        format!(
                            "pipette `{model}` is run with this site's `{site}`, which covers its {}–{} µL with the same channels",
                            p.min_ul, p.max_ul
                        ),
                    ));
                }
                Some(p)
            }
            _ => Some(p),
        }
    }

    fn finish(self, d: &mut Diagnostics) -> Lowered {
        for s in self.shortages.values() {
            let total = s.needed + s.have_racks * s.per_rack;
            let missing_racks = s.needed.div_ceil(s.per_rack.max(1));
            let what = s.rack_load_name.clone().unwrap_or_else(|| "a matching tip rack".into());
            d.push(
                Diagnostic::error(
                    "P0305",
                    s.first_span,
                    format!(
                        "the protocol runs out of tips here: it needs {total} tips, its {} rack(s) hold {}",
                        s.have_racks,
                        s.have_racks * s.per_rack
                    ),
                )
                .with_hint(format!(
                    "add {missing_racks} more rack(s) of {what}, or reuse tips with `tips: per_source` or `tips: once`"
                )),
            );
        }
        let channels = self
            .pipettes
            .iter()
            .chain(&self.multis)
            .chain(self.declared.values())
            .map(|p| (p.name.clone(), p.channels))
            .collect();
        Lowered { tasks: self.tasks, channels }
    }
}

/// A pipette with the most one aspiration of it takes (given the protocol's tips).
type Head = (PipetteSpec, f64);

/// Liquid from a well to a well: source, destination, µL.
type Move = (Loc, Loc, f64);

/// Among pipettes with their capacities: the smallest that takes every volume in one go, else
/// the largest whose minimum fits (volumes are then split).
fn pick(candidates: &[(PipetteSpec, f64)], vmin: f64, vmax: f64) -> Option<(PipetteSpec, f64)> {
    let fits_all = candidates
        .iter()
        .filter(|(p, c)| p.min_ul <= vmin + 1e-9 && *c + 1e-9 >= vmax)
        .min_by(|a, b| a.1.total_cmp(&b.1));
    fits_all
        .or_else(|| candidates.iter().filter(|(p, _)| p.min_ul <= vmin + 1e-9).max_by(|a, b| a.1.total_cmp(&b.1)))
        .cloned()
}

/// What a pipette an Opentrons protocol loads becomes on this site.
#[derive(Debug, Clone, PartialEq)]
enum Fit {
    /// A liquid handler carries it by that name.
    Same,
    /// None carries it by name (`model`); this one (the same channels, covering its volume
    /// range, the smallest such) does its work.
    Runs { model: String, site: String },
    /// None can.
    Nothing,
}

fn site_pipettes(site: &Site) -> impl Iterator<Item = &labware::site::Pipette> {
    site.instruments_of(InstrumentClass::LiquidHandler).flat_map(|i| i.pipettes.iter())
}

fn fit_pipette(site: &Site, pd: &crate::ast::PipetteDecl) -> Fit {
    // Autoprotocol's `liquid_handle` names no pipette (the lab chooses): left as it is.
    if pd.name == "liquid_handle" || site_pipettes(site).any(|sp| sp.name == pd.name) {
        return Fit::Same;
    }
    site_pipettes(site)
        .filter(|sp| sp.channels == pd.channels && sp.min_ul <= pd.min_ul + 1e-9 && sp.max_ul + 1e-9 >= pd.max_ul)
        .min_by(|a, b| a.max_ul.total_cmp(&b.max_ul))
        .map_or(Fit::Nothing, |sp| Fit::Runs { model: pd.name.clone(), site: sp.name.clone() })
}

impl LTask {
    /// Estimated duration: the sum of its commands.
    pub fn duration_s(&self) -> f64 {
        self.commands.iter().map(|c| c.estimate_s).sum()
    }
}

/// A one-line summary of what an instrument can do, for hints.
fn capabilities(i: &labware::site::Instrument) -> String {
    let r = |name: &str, r: Option<labware::site::Range>, unit: &str| {
        r.map(|r| format!("{name} {}–{} {unit}", crate::units::trim(r.min), crate::units::trim(r.max)))
    };
    let mut parts: Vec<String> = Vec::new();
    if !i.modes.is_empty() {
        let modes: Vec<&str> = i
            .modes
            .iter()
            .map(|m| match m {
                ReadMode::Absorbance => "absorbance",
                ReadMode::Fluorescence => "fluorescence",
                ReadMode::Luminescence => "luminescence",
            })
            .collect();
        parts.push(modes.join("/"));
    }
    parts.extend(r("absorbance", i.absorbance_nm, "nm"));
    parts.extend(r("excitation", i.excitation_nm, "nm"));
    parts.extend(r("emission", i.emission_nm, "nm"));
    parts.extend(r("temperature", i.temperature_c, "°C"));
    parts.extend(r("shaking", i.shaking_rpm, "rpm"));
    if let Some(g) = i.max_g {
        parts.push(format!("up to {} ×g", crate::units::trim(g)));
    }
    if !i.labware.is_empty() {
        let kinds: Vec<&str> = i.labware.iter().map(|k| k.as_str()).collect();
        parts.push(format!("takes {}", kinds.join(", ")));
    }
    if parts.is_empty() {
        "no stated capabilities".into()
    } else {
        parts.join(", ")
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::split_volume;

    #[test]
    fn splits_like_opentrons() {
        assert_eq!(split_volume(120.0, 50.0), vec![50.0, 35.0, 35.0]);
        assert_eq!(split_volume(100.0, 50.0), vec![50.0, 50.0]);
        assert_eq!(split_volume(50.0, 50.0), vec![50.0]);
        assert_eq!(split_volume(30.0, 50.0), vec![30.0]);
        assert_eq!(split_volume(260.0, 50.0), vec![50.0, 50.0, 50.0, 50.0, 30.0, 30.0]);
        assert!(split_volume(0.0, 50.0).is_empty());
    }
}
