//! Simulated liquid handler: the motion-controller side of the OT-2-style G-code.
//!
//! It keeps its own account of liquid, independent of the compiler: where the head is, which tips
//! are on which channel and what they hold, and the volume in every well — all derived from the
//! moves and plunger positions it receives. It refuses physically impossible motion with a
//! Smoothie-style `error:` (and then stays halted until `M999`, as Smoothie does): a tip driven
//! below a well's bottom, drawing liquid with no tip, a plunger past its travel, aspirating more
//! than a well holds, overfilling a well or a tip, dropping a tip outside the trash.

use super::bench::{self, Mixture, SharedBench};
use super::{LineDevice, Response};
use crate::deck::{slot_origin, Deck, CHANNEL_PITCH_MM, TRASH_SLOT};
use crate::driver::liquid::{ul_per_mm, PLUNGER_BOTTOM, PLUNGER_DROP_TIP, PLUNGER_TOP};
use labware::site::Pipette;
use labware::Library;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Volumes are compared with this tolerance, µL: G-code positions carry 6 decimals of a mm, so
/// sums of many moves differ from exact arithmetic by far less than this.
const EPS_UL: f64 = 1e-3;
/// Axis speeds, mm per second (device time). The plunger moves at the pipette's flow rate (the
/// site's `flow_ul_per_s`, Opentrons' defaults on the shipped site), as a pipette's default
/// aspirate and dispense speeds do.
const XY_MM_S: f64 = 400.0;
const Z_MM_S: f64 = 125.0;

/// A tip on one channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tip {
    pub length_mm: f64,
    pub capacity_ul: f64,
    pub liquid_ul: f64,
}

/// Everything the simulator knows; shared so tests and `labd sim` can inspect it.
#[derive(Debug, Default)]
pub struct LiquidState {
    pub deck: Deck,
    /// What every well holds, by liquid: the site's bench, shared with its other simulators.
    pub bench: SharedBench,
    /// What each channel's tip holds, by liquid.
    pub tip_contents: Vec<Mixture>,
    /// Tips already taken from racks: (rack, well).
    pub tips_used: BTreeSet<(String, String)>,
    pub x: f64,
    pub y: f64,
    pub z: f64,
    pub plunger: f64,
    pub tool: usize,
    /// One entry per channel of the current pipette.
    pub tips: Vec<Option<Tip>>,
    /// Liquid that went to the trash, µL.
    pub waste_ul: f64,
    pub halted: Option<String>,
    /// Device seconds of motion queued since the last `M400`.
    pub pending_motion_s: f64,
    /// Device seconds of motion carried out since the simulator started (what timing tests
    /// compare the compiler's estimates with).
    pub busy_s: f64,
    pub commands: u64,
    /// When set, every liquid movement is appended here as `aspirate|dispense LABWARE WELL UL`,
    /// one unbuffered write per line, so the record survives the process being killed.
    pub log: Option<std::fs::File>,
}

impl LiquidState {
    fn record(&mut self, what: &str, labware: &str, well: &str, ul: f64) {
        if let Some(f) = self.log.as_mut() {
            use std::io::Write;
            let _ = f.write_all(format!("{what} {labware} {well} {ul:.3}\n").as_bytes());
        }
    }

    /// Puts liquid in a well before a run (the technician filling a reservoir).
    pub fn fill(&mut self, labware: &str, well: &str, ul: f64) {
        if let Ok(mut b) = self.bench.lock() {
            b.fill(labware, well, bench::UNNAMED, ul);
        }
    }

    /// Volume in a well.
    pub fn volume(&self, labware: &str, well: &str) -> f64 {
        self.bench.lock().map_or(0.0, |b| b.volume(labware, well))
    }
}

/// The simulated controller.
#[derive(Debug)]
pub struct LiquidSim {
    pub state: Arc<Mutex<LiquidState>>,
    pipettes: Vec<Pipette>,
    library: Library,
}

impl LiquidSim {
    /// A liquid handler with a bench of its own.
    pub fn new(instrument: &labware::site::Instrument, library: Library) -> Self {
        Self::on_bench(instrument, library, SharedBench::default())
    }

    /// A liquid handler working on a site's shared bench.
    pub fn on_bench(instrument: &labware::site::Instrument, library: Library, bench: SharedBench) -> Self {
        let channels = instrument.pipettes.first().map_or(1, |p| p.channels.max(1) as usize);
        let state = LiquidState {
            plunger: PLUNGER_BOTTOM,
            z: 150.0,
            tips: vec![None; channels],
            tip_contents: vec![Mixture::new(); channels],
            bench,
            ..Default::default()
        };
        LiquidSim { state: Arc::new(Mutex::new(state)), pipettes: instrument.pipettes.clone(), library }
    }
}

fn ok() -> Response {
    Response::Reply(b"ok\r\nok\r\n".to_vec())
}

/// A Smoothie-style error reply.
pub fn error_reply(_line: &str, text: &str) -> Vec<u8> {
    format!("error: {text}\r\nok\r\nok\r\n").into_bytes()
}

impl LiquidSim {
    fn pipette(&self, s: &LiquidState) -> Option<&Pipette> {
        self.pipettes.get(s.tool)
    }

    /// Positions of the channels' nozzles in x, y (channel 0 at the back, the rest towards the front).
    fn channels(s: &LiquidState) -> Vec<(f64, f64)> {
        (0..s.tips.len()).map(|c| (s.x, s.y - c as f64 * CHANNEL_PITCH_MM)).collect()
    }

    fn in_trash(x: f64, y: f64) -> bool {
        let (ox, oy) = slot_origin(TRASH_SLOT);
        (ox..=ox + 128.0).contains(&x) && (oy..=oy + 86.0).contains(&y)
    }

    fn z_move(&self, s: &mut LiquidState, z: f64) -> Result<(), String> {
        for (c, (x, y)) in Self::channels(s).into_iter().enumerate() {
            let tip = s.tips[c].map_or(0.0, |t| t.length_mm);
            let end = z - tip;
            if let Some((i, j)) = s.deck.well_at(x, y) {
                let placed = &s.deck.items[i];
                let w = &placed.def.wells[j];
                // Picking up a tip: the bare nozzle comes down onto a tip's top.
                if tip == 0.0 && placed.def.tip.is_some() {
                    let top = w.z_mm + w.depth_mm;
                    let key = (placed.name.clone(), w.name.clone());
                    if end <= top + 0.5 && !s.tips_used.contains(&key) {
                        let spec = placed.def.tip.unwrap_or(labware::TipSpec { volume_ul: 0.0, length_mm: 0.0 });
                        s.tips_used.insert(key);
                        s.tips[c] =
                            Some(Tip { length_mm: spec.length_mm, capacity_ul: spec.volume_ul, liquid_ul: 0.0 });
                        s.tip_contents[c].clear();
                        continue;
                    }
                    if end < top - 1e-6 {
                        return Err(format!(
                            "channel {c}: nozzle driven into {} {} where there is no tip",
                            placed.name, w.name
                        ));
                    }
                    continue;
                }
                if end < w.z_mm - 1e-6 {
                    return Err(format!(
                        "channel {c}: tip end at z={end:.2} mm is below the bottom of {} {} (z={:.2} mm)",
                        placed.name, w.name, w.z_mm
                    ));
                }
            } else if end < 0.0 {
                return Err(format!("channel {c}: tip end at z={end:.2} mm is below the deck"));
            }
        }
        s.pending_motion_s += (s.z - z).abs() / Z_MM_S;
        s.z = z;
        Ok(())
    }

    /// The well a channel's tip end is in (below its rim), or just above (for dispensing).
    fn well_under(s: &LiquidState, x: f64, y: f64, end: f64, above_mm: f64) -> Option<(String, String, f64, f64)> {
        let (i, j) = s.deck.well_at(x, y)?;
        let p = &s.deck.items[i];
        let w = &p.def.wells[j];
        (end <= w.z_mm + w.depth_mm + above_mm).then(|| (p.name.clone(), w.name.clone(), w.max_volume_ul, w.z_mm))
    }

    fn plunger_move(&self, s: &mut LiquidState, b: f64) -> Result<(), String> {
        if !(PLUNGER_DROP_TIP - 1e-9..=PLUNGER_TOP + 1e-9).contains(&b) {
            return Err(format!(
                "plunger position {b:.3} mm is past its travel ({PLUNGER_DROP_TIP} to {PLUNGER_TOP} mm)"
            ));
        }
        let Some(p) = self.pipette(s) else { return Err("no pipette on the head".into()) };
        let per_mm = ul_per_mm(p);
        let delta = b - s.plunger;
        s.pending_motion_s += delta.abs() * per_mm / p.flow_ul_per_s;
        for (c, (x, y)) in Self::channels(s).into_iter().enumerate() {
            let tip = s.tips[c];
            let end = s.z - tip.map_or(0.0, |t| t.length_mm);
            if delta > 0.0 {
                // Drawing up: only the span above the bottom position moves liquid.
                let drawn = (b.min(PLUNGER_TOP) - s.plunger.max(PLUNGER_BOTTOM)).max(0.0) * per_mm;
                let inside = Self::well_under(s, x, y, end, 0.0);
                match (tip, inside) {
                    (None, Some((lw, well, _, _))) => {
                        return Err(format!(
                            "channel {c}: drawing up with no tip inside {lw} {well} would contaminate the pipette"
                        ))
                    }
                    (None, None) | (Some(_), None) => {} // air
                    (Some(mut t), Some((lw, well, _, _))) => {
                        let have = s.volume(&lw, &well);
                        if drawn > have + EPS_UL {
                            return Err(format!(
                                "channel {c}: aspirating {drawn:.2} uL from {lw} {well}, which holds {have:.2} uL (would draw air)"
                            ));
                        }
                        if t.liquid_ul + drawn > t.capacity_ul + EPS_UL {
                            return Err(format!(
                                "channel {c}: {:.2} uL does not fit in a {} uL tip",
                                t.liquid_ul + drawn,
                                t.capacity_ul
                            ));
                        }
                        s.record("aspirate", &lw, &well, drawn);
                        let taken = s.bench.lock().map_err(|_| "the bench's state is lost")?.take(&lw, &well, drawn);
                        bench::add(&mut s.tip_contents[c], &taken);
                        t.liquid_ul += drawn;
                        s.tips[c] = Some(t);
                    }
                }
            } else if delta < 0.0 {
                let pushed = (s.plunger - b).max(0.0) * per_mm;
                if let Some(mut t) = tip {
                    let out = pushed.min(t.liquid_ul);
                    t.liquid_ul -= out;
                    if t.liquid_ul < EPS_UL {
                        t.liquid_ul = 0.0;
                    }
                    s.tips[c] = Some(t);
                    if out > 0.0 {
                        let leaving = bench::take(&mut s.tip_contents[c], out);
                        if let Some((lw, well, max, _)) = Self::well_under(s, x, y, end, 10.0) {
                            s.record("dispense", &lw, &well, out);
                            let v = s.bench.lock().map_err(|_| "the bench's state is lost")?.add(&lw, &well, &leaving);
                            if v > max + EPS_UL {
                                return Err(format!(
                                    "channel {c}: {lw} {well} overflows: {v:.2} uL in a {max} uL well"
                                ));
                            }
                        } else if Self::in_trash(x, y) {
                            s.waste_ul += out;
                        } else {
                            return Err(format!(
                                "channel {c}: {out:.2} uL dispensed onto the deck at x={x:.1} y={y:.1}"
                            ));
                        }
                    }
                }
                if b < PLUNGER_DROP_TIP + 0.5 {
                    if let Some(t) = s.tips[c] {
                        if !Self::in_trash(x, y) {
                            return Err(format!("channel {c}: tip ejected outside the trash at x={x:.1} y={y:.1}"));
                        }
                        s.waste_ul += t.liquid_ul;
                        s.tips[c] = None;
                        s.tip_contents[c].clear();
                    }
                }
            }
        }
        s.plunger = b;
        Ok(())
    }

    fn run(&self, s: &mut LiquidState, line: &str) -> Result<Option<String>, String> {
        let mut words = line.split_whitespace();
        let code = words.next().unwrap_or("").to_ascii_uppercase();
        let args: Vec<(char, Option<f64>)> = words
            .map(|w| {
                let mut c = w.chars();
                let axis = c.next().unwrap_or(' ').to_ascii_uppercase();
                (axis, c.as_str().parse::<f64>().ok().filter(|v| v.is_finite()))
            })
            .collect();
        let value = |axis: char| args.iter().find(|(a, _)| *a == axis).map(|(_, v)| *v);
        match code.as_str() {
            "G0" | "G1" => {
                for (axis, v) in &args {
                    if v.is_none() && *axis != 'F' {
                        return Err(format!("bad value for axis {axis} in `{line}`"));
                    }
                }
                if let (Some(x), Some(y)) = (value('X').flatten().or(Some(s.x)), value('Y').flatten().or(Some(s.y))) {
                    if (x, y) != (s.x, s.y) {
                        let tallest = s.deck.items.iter().map(|p| p.def.footprint.z_mm).fold(0.0, f64::max);
                        let high = s.tips.iter().all(|t| s.z - t.map_or(0.0, |t| t.length_mm) >= tallest);
                        if !high {
                            return Err(format!(
                                "moving sideways to x={x:.1} y={y:.1} with the tip low (z={:.1}) would hit labware",
                                s.z
                            ));
                        }
                        s.pending_motion_s += ((x - s.x).powi(2) + (y - s.y).powi(2)).sqrt() / XY_MM_S;
                        s.x = x;
                        s.y = y;
                    }
                }
                if let Some(Some(z)) = value('Z') {
                    self.z_move(s, z)?;
                }
                if let Some(Some(b)) = value('B') {
                    self.plunger_move(s, b)?;
                }
                Ok(None)
            }
            "M6" => {
                let t = value('T').flatten().ok_or_else(|| format!("`{line}` needs T<n>"))?;
                if s.tips.iter().any(Option::is_some) {
                    return Err("cannot change pipettes with tips on".into());
                }
                if t < 0.0 || t.fract() != 0.0 {
                    return Err(format!("`{line}`: T must be a whole tool number"));
                }
                let t = t as usize;
                let p = self.pipettes.get(t).ok_or_else(|| format!("no pipette T{t} on this instrument"))?;
                s.tool = t;
                s.tips = vec![None; p.channels.max(1) as usize];
                s.tip_contents = vec![Mixture::new(); s.tips.len()];
                Ok(None)
            }
            "G28.2" => {
                s.pending_motion_s += 3.0;
                s.z = 150.0;
                Ok(None)
            }
            "M400" => {
                s.busy_s += s.pending_motion_s;
                s.pending_motion_s = 0.0;
                Ok(None)
            }
            "M114.2" => {
                Ok(Some(format!("ok MCS: X:{:.3} Y:{:.3} Z:{:.3} A:0.000 B:{:.3} C:0.000", s.x, s.y, s.z, s.plunger)))
            }
            // Switch states, as Smoothie's M119 reports them, plus this controller's tip-presence
            // switch (channels carrying a tip), which the Flex's pipettes also have.
            "M119" => Ok(Some(format!(
                "X_max:0 Y_max:0 Z_max:{} A_max:0 B_min:0 C_min:0 Probe:0 Tip:{}",
                u8::from(s.z >= 150.0 - 1e-6),
                s.tips.iter().filter(|t| t.is_some()).count()
            ))),
            "VERSION" => {
                Ok(Some("Build version: lw-sim-1.0, Build date: 2026-11-26, MCU: sim, System Clock: 100MHz".into()))
            }
            "G90" | "G91" | "M92" | "M203.1" | "M204" | "M907" | "M18" | "G4" => Ok(None),
            _ => Err(format!("unsupported command `{code}`")),
        }
    }
}

impl LineDevice for LiquidSim {
    fn handle(&mut self, line: &str, _now: f64) -> Response {
        let Ok(mut s) = self.state.lock() else { return Response::Reply(error_reply(line, "simulator state lost")) };
        s.commands += 1;
        if let Some(decl) = line.strip_prefix(';') {
            if decl.trim_start().starts_with("deck") {
                let mut deck = std::mem::take(&mut s.deck);
                let r = deck.declare(line, &self.library);
                s.deck = deck;
                return match r {
                    Ok(()) => ok(),
                    Err(e) => Response::Reply(error_reply(line, &e)),
                };
            }
            return ok();
        }
        if line.eq_ignore_ascii_case("M999") {
            s.halted = None;
            return ok();
        }
        if let Some(why) = &s.halted {
            return Response::Reply(error_reply(line, &format!("halted after `{why}`; send M999")));
        }
        match self.run(&mut s, line) {
            Ok(None) => ok(),
            Ok(Some(data)) => Response::Reply(format!("{data}\r\nok\r\nok\r\n").into_bytes()),
            Err(e) => {
                s.halted = Some(e.clone());
                Response::Reply(error_reply(line, &e))
            }
        }
    }

    fn busy_for(&self, line: &str) -> f64 {
        if line.trim().eq_ignore_ascii_case("M400") {
            self.state.lock().map(|s| s.pending_motion_s).unwrap_or(0.0)
        } else {
            0.0
        }
    }
}
