//! Liquid-handler driver: plan commands → OT-2-style motion G-code over serial.
//!
//! Geometry comes from the deck ([`crate::deck::Deck`]: slot positions and labware definitions);
//! plunger travel from volume (µL per mm of the pipette). Every command is a short block of
//! moves followed by `M400` (wait for the motion queue to drain). The head carries one pipette at
//! a time; `M6 T<n>` swaps to pipette `n` of the instrument (an automatic tool changer — on an OT-2
//! a person swaps pipettes), allowed only without a tip.

use super::{spawn, Cancel};
use crate::codec::smoothie::{self, ReplyReader};
use crate::deck::{slot_origin, Deck, Point, CHANNEL_PITCH_MM, TRASH_SLOT};
use crate::error::InstrumentError;
use crate::instrument::{unsupported, Execution, Identity, Instrument, Outcome, Settled, State, Status, Whereabouts};
use crate::link::Link;
use labware::site::Pipette;
use labware::Library;
use protocols::plan::{CommandOp, RunPlan};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Travel height of the nozzle, mm above the deck.
pub const SAFE_Z: f64 = 150.0;
/// Plunger positions, mm: ready to aspirate, fully up, blow-out, tip ejection.
pub const PLUNGER_BOTTOM: f64 = 2.0;
pub const PLUNGER_TOP: f64 = 19.5;
pub const PLUNGER_BLOW_OUT: f64 = 0.5;
pub const PLUNGER_DROP_TIP: f64 = -2.0;
/// Aspirate and dispense this far above the well bottom, mm.
pub const WELL_CLEARANCE: f64 = 1.0;

/// Where the nozzle travels: at least [`SAFE_Z`], and high enough that the tip on it clears the
/// tallest labware on the deck (a 1000 µL tip over a 1000 µL rack needs about 190 mm).
fn safe_z(head: &Head) -> f64 {
    let tallest = head.deck.items.iter().map(|p| p.def.footprint.z_mm).fold(0.0, f64::max);
    SAFE_Z.max(tallest + head.tip_mm.unwrap_or(0.0) + TIP_CLEARANCE_MM)
}

/// Where the nozzle ejects a tip over the trash: 80 mm, or higher so that a long tip's end
/// stays above the deck.
fn drop_z(tip_mm: f64) -> f64 {
    80.0_f64.max(tip_mm + 10.0)
}

/// How far a travelling tip's end stays above the tallest labware, mm.
const TIP_CLEARANCE_MM: f64 = 2.0;

/// µL moved per mm of plunger travel.
pub fn ul_per_mm(p: &Pipette) -> f64 {
    p.max_ul / (PLUNGER_TOP - PLUNGER_BOTTOM)
}

/// Link timing.
#[derive(Debug, Clone)]
pub struct LiquidConfig {
    /// Wait for an ack (the Opentrons host uses 5 s).
    pub ack_timeout: Duration,
    /// Wait for queued motion to finish (`M400`).
    pub motion_timeout: Duration,
}

impl Default for LiquidConfig {
    fn default() -> Self {
        LiquidConfig { ack_timeout: Duration::from_secs(5), motion_timeout: Duration::from_secs(600) }
    }
}

/// What the driver knows about the head.
#[derive(Debug, Default, Clone)]
struct Head {
    tool: Option<usize>,
    /// Length of the tip on the head, mm.
    tip_mm: Option<f64>,
    /// Capacity of that tip, µL.
    tip_ul: f64,
    plunger: f64,
    deck: Deck,
    homed: bool,
    /// Where the last block of G-code left the head (known only after a replay: see
    /// [`Instrument::replay`]; recovery compares it with `M114.2`).
    at: Axes,
}

/// The head in words for the people at the bench (the console's instrument row): the tip on or
/// off, whether it is homed, what is on the deck, where the head is — not the firmware's string.
fn in_words(head: &Head, at: Option<Axes>) -> String {
    let mut said = vec![match head.tip_mm {
        Some(_) => format!("a {} µL tip on", protocols::units::trim(head.tip_ul)),
        None => "no tip on".to_string(),
    }];
    said.push(if head.homed { "homed" } else { "not homed yet" }.to_string());
    said.push(match head.deck.items.len() {
        0 => "nothing on the deck".to_string(),
        1 => "1 labware on the deck".to_string(),
        n => format!("{n} labware on the deck"),
    });
    if let Some(a) = at {
        let mm = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.1}"));
        said.push(format!("head at X {} Y {} Z {} mm", mm(a.x), mm(a.y), mm(a.z)));
    }
    said.join(", ")
}

/// Head axes as a block of G-code leaves them; `None` where a block homed the axis (or nothing
/// is known yet).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Axes {
    x: Option<f64>,
    y: Option<f64>,
    z: Option<f64>,
    b: Option<f64>,
}

impl Axes {
    /// Where `lines` leave the head that was at `self`: the axes each `G0` sets; a homing
    /// (`G28.2`) leaves the axes it homes unknown.
    fn after(mut self, lines: &[String]) -> Axes {
        for line in lines {
            let mut words = line.split_whitespace();
            let code = words.next().unwrap_or("");
            for w in words {
                let (axis, value) = w.split_at(1.min(w.len()));
                let slot = match axis {
                    "X" => &mut self.x,
                    "Y" => &mut self.y,
                    "Z" => &mut self.z,
                    "B" => &mut self.b,
                    _ => continue,
                };
                match code {
                    "G0" => *slot = value.parse().ok(),
                    "G28.2" => *slot = None,
                    _ => {}
                }
            }
        }
        self
    }

    /// Whether the controller's report agrees with every axis known here (0.01 mm).
    fn agrees(&self, reported: &Axes) -> bool {
        let pairs = [(self.x, reported.x), (self.y, reported.y), (self.z, reported.z), (self.b, reported.b)];
        pairs.iter().all(|(mine, theirs)| match (mine, theirs) {
            (Some(a), Some(b)) => (a - b).abs() < 0.01,
            (Some(_), None) => false,
            (None, _) => true,
        })
    }

    /// Whether some axis known in both differs: only then can a report tell them apart.
    fn differs(&self, other: &Axes) -> bool {
        let pairs = [(self.x, other.x), (self.y, other.y), (self.z, other.z), (self.b, other.b)];
        pairs.iter().any(|(a, b)| matches!((a, b), (Some(a), Some(b)) if (a - b).abs() >= 0.01))
    }

    /// `M114.2`'s `MCS: X:… Y:… Z:… A:… B:… C:…`.
    fn parse_mcs(mcs: &str) -> Axes {
        let field = |name: &str| {
            mcs.split_whitespace()
                .find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
                .and_then(|v| v.parse().ok())
        };
        Axes { x: field("X"), y: field("Y"), z: field("Z"), b: field("B") }
    }
}

impl std::fmt::Display for Axes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |a: Option<f64>| a.map_or("?".to_string(), |v| format!("{v:.3}"));
        write!(f, "X:{} Y:{} Z:{} B:{}", v(self.x), v(self.y), v(self.z), v(self.b))
    }
}

#[derive(Debug)]
struct Inner {
    id: String,
    pipettes: Vec<Pipette>,
    library: Library,
    config: LiquidConfig,
    slots: u32,
    link: Mutex<(Link, Head)>,
    cancel: Cancel,
}

/// One liquid handler.
#[derive(Debug, Clone)]
pub struct LiquidHandlerDriver {
    inner: Arc<Inner>,
}

impl LiquidHandlerDriver {
    pub fn new(instrument: &labware::site::Instrument, library: Library, link: Link, config: LiquidConfig) -> Self {
        LiquidHandlerDriver {
            inner: Arc::new(Inner {
                id: instrument.id.clone(),
                pipettes: instrument.pipettes.clone(),
                library,
                config,
                slots: instrument.deck_slots.unwrap_or(11),
                link: Mutex::new((link, Head { plunger: PLUNGER_BOTTOM, ..Head::default() })),
                cancel: Cancel::default(),
            }),
        }
    }

    /// Sends one raw G-code line and returns its data lines (service use and tests).
    pub async fn gcode(&self, line: &str) -> Result<Vec<String>, InstrumentError> {
        let mut g = self.inner.link.lock().await;
        send(&mut g.0, line, self.inner.config.ack_timeout).await
    }
}

async fn send(link: &mut Link, line: &str, within: Duration) -> Result<Vec<String>, InstrumentError> {
    link.send(&smoothie::encode(line)).await?;
    let mut reader = ReplyReader::new();
    let r = link.read_reply(within, |b| reader.poll(b)).await;
    if let Err(InstrumentError::Device { .. }) = &r {
        // Smoothie halts after an error until reset; reset so the next command can run.
        link.send(&smoothie::encode("M999")).await?;
        let mut reset = ReplyReader::new();
        let _ = link.read_reply(within, |b| reset.poll(b)).await;
    }
    r
}

/// Sends a block of lines in one write and reads their acks in order. The controller executes
/// lines in order and halts at the first error, so pipelining is safe: after an error the
/// remaining replies (refusals while halted) are drained and the controller is reset.
async fn send_block(link: &mut Link, lines: &[String], config: &LiquidConfig) -> Result<(), InstrumentError> {
    let mut bytes = Vec::new();
    for l in lines {
        bytes.extend_from_slice(&smoothie::encode(l));
    }
    link.send(&bytes).await?;
    let mut first_error = None;
    for l in lines {
        let within = if l == "M400" || l.starts_with("G28") { config.motion_timeout } else { config.ack_timeout };
        let mut reader = ReplyReader::new();
        match link.read_reply(within, |b| reader.poll(b)).await {
            Ok(_) => {}
            Err(e @ InstrumentError::Device { .. }) => {
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(first_error.unwrap_or(e)),
        }
    }
    match first_error {
        None => Ok(()),
        Some(e) => {
            link.send(&smoothie::encode("M999")).await?;
            let mut reset = ReplyReader::new();
            let _ = link.read_reply(config.ack_timeout, |b| reset.poll(b)).await;
            Err(e)
        }
    }
}

fn invalid(parameter: &str, message: String) -> InstrumentError {
    InstrumentError::Validation { parameter: parameter.into(), message }
}

fn mm(v: f64) -> String {
    format!("{v:.6}")
}

impl Inner {
    fn pipette(&self, name: &str) -> Result<(usize, &Pipette), InstrumentError> {
        self.pipettes
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
            .ok_or_else(|| invalid("pipette", format!("{} has no pipette `{name}`", self.id)))
    }

    /// Plans the G-code for one command, updating the head model. Pure: nothing is sent.
    fn plan(&self, head: &mut Head, op: &CommandOp) -> Result<Vec<String>, InstrumentError> {
        use CommandOp::*;
        let mut out = Vec::new();
        if !head.homed {
            out.extend(["G28.2 Z A B C".to_string(), "G28.2 X".into(), "G28.2 Y".into()]);
            out.push(format!("G0 B{}", mm(PLUNGER_BOTTOM)));
            head.homed = true;
            head.plunger = PLUNGER_BOTTOM;
        }
        let channels = |name: &str| self.pipettes.iter().find(|p| p.name == name).map_or(1, |p| p.channels.max(1));
        let at = |deck: &Deck, lw: &str, well: &str| deck.well_bottom(lw, well).map_err(|m| invalid("well", m));
        // Where channel 0 goes: the named well; for a multi-channel head over a labware with fewer
        // rows than channels (a reservoir trough), the head is centred on the well instead.
        let aim = |deck: &Deck, pipette: &str, lw: &str, well: &str| -> Result<Point, InstrumentError> {
            let mut p = at(deck, lw, well)?;
            let n = channels(pipette);
            let rows = deck.get(lw).map_or(0, |d| d.def.rows().len());
            if n > 1 && rows < n as usize {
                p.y += (n - 1) as f64 * CHANNEL_PITCH_MM / 2.0;
            }
            Ok(p)
        };
        match op {
            PickUpTip { pipette, rack, well } => {
                let (tool, _) = self.pipette(pipette)?;
                self.select(head, tool, &mut out)?;
                if head.tip_mm.is_some() {
                    return Err(invalid("pick_up_tip", format!("{pipette} already has a tip; drop it first")));
                }
                let placed = head.deck.get(rack).ok_or_else(|| invalid("rack", format!("`{rack}` is not on the deck")))?;
                let tip = placed.def.tip.ok_or_else(|| invalid("rack", format!("`{rack}` is not a tip rack")))?;
                let w = placed.def.well(well).ok_or_else(|| invalid("well", format!("`{rack}` has no position {well}")))?;
                let top = w.z_mm + w.depth_mm;
                let p = at(&head.deck, rack, well)?;
                travel(&mut out, p, safe_z(head));
                out.push(format!("G0 Z{}", mm(top)));
                head.tip_mm = Some(tip.length_mm);
                head.tip_ul = tip.volume_ul;
                out.push(format!("G0 Z{}", mm(safe_z(head))));
            }
            Aspirate { pipette, labware, well, volume_ul } | Dispense { pipette, labware, well, volume_ul } => {
                let sign = if matches!(op, Aspirate { .. }) { 1.0 } else { -1.0 };
                let (tool, p) = self.pipette(pipette)?;
                let per_mm = ul_per_mm(p);
                self.need_tip(head, tool, pipette)?;
                let target = head.plunger + sign * volume_ul / per_mm;
                self.check_plunger(target, *volume_ul, pipette)?;
                let pt = aim(&head.deck, pipette, labware, well)?;
                travel(&mut out, pt, safe_z(head));
                out.push(format!("G0 Z{}", mm(pt.z + WELL_CLEARANCE + head.tip_mm.unwrap_or(0.0))));
                out.push(format!("G0 B{}", mm(target)));
                out.push(format!("G0 Z{}", mm(safe_z(head))));
                head.plunger = target;
            }
            Mix { pipette, labware, well, volume_ul, times } => {
                let (tool, p) = self.pipette(pipette)?;
                let per_mm = ul_per_mm(p);
                self.need_tip(head, tool, pipette)?;
                let up = head.plunger + volume_ul / per_mm;
                self.check_plunger(up, *volume_ul, pipette)?;
                let pt = aim(&head.deck, pipette, labware, well)?;
                travel(&mut out, pt, safe_z(head));
                out.push(format!("G0 Z{}", mm(pt.z + WELL_CLEARANCE + head.tip_mm.unwrap_or(0.0))));
                for _ in 0..*times {
                    out.push(format!("G0 B{}", mm(up)));
                    out.push(format!("G0 B{}", mm(head.plunger)));
                }
                out.push(format!("G0 Z{}", mm(safe_z(head))));
            }
            BlowOut { pipette, labware, well } => {
                let (tool, _) = self.pipette(pipette)?;
                self.need_tip(head, tool, pipette)?;
                let pt = aim(&head.deck, pipette, labware, well)?;
                let placed = head.deck.get(labware).map(|p| p.def.well(well).map_or(0.0, |w| w.depth_mm)).unwrap_or(0.0);
                travel(&mut out, pt, safe_z(head));
                // Tip end just below the well's rim.
                out.push(format!("G0 Z{}", mm(pt.z + placed - 1.0 + head.tip_mm.unwrap_or(0.0))));
                out.push(format!("G0 B{}", mm(PLUNGER_BLOW_OUT)));
                out.push(format!("G0 Z{}", mm(safe_z(head))));
                out.push(format!("G0 B{}", mm(PLUNGER_BOTTOM)));
                head.plunger = PLUNGER_BOTTOM;
            }
            DropTip { pipette } => {
                let (tool, p) = self.pipette(pipette)?;
                self.need_tip(head, tool, pipette)?;
                let (x, y) = slot_origin(TRASH_SLOT);
                // Centre the head's channels over the trash.
                let spread = (p.channels.max(1) - 1) as f64 * CHANNEL_PITCH_MM / 2.0;
                travel(&mut out, Point { x: x + 64.0, y: y + 43.0 + spread, z: 0.0 }, safe_z(head));
                out.push(format!("G0 Z{}", mm(drop_z(head.tip_mm.unwrap_or(0.0)))));
                out.push(format!("G0 B{}", mm(PLUNGER_DROP_TIP)));
                out.push(format!("G0 B{}", mm(PLUNGER_BOTTOM)));
                out.push(format!("G0 Z{}", mm(safe_z(head))));
                head.tip_mm = None;
                head.plunger = PLUNGER_BOTTOM;
            }
            MoveTo { labware: Some(lw), well, .. } => {
                let well = well.clone().unwrap_or_else(|| "A1".into());
                let pt = at(&head.deck, lw, &well)?;
                travel(&mut out, pt, safe_z(head));
            }
            MoveTo { labware: None, .. } => out.push(format!("G0 Z{}", mm(safe_z(head)))),
            Home => {
                out.extend(["G28.2 Z A B C".to_string(), "G28.2 X".into(), "G28.2 Y".into()]);
                out.push(format!("G0 B{}", mm(head.plunger)));
            }
            AddReagent { .. } => {
                return Err(invalid(
                    "add_reagent",
                    "adding a reagent from the lab's stock is a technician's task, not a liquid-handler move; route it to a technician".into(),
                ))
            }
            other => return Err(unsupported("a liquid handler", other)),
        }
        out.push("M400".into());
        Ok(out)
    }

    fn select(&self, head: &mut Head, tool: usize, out: &mut Vec<String>) -> Result<(), InstrumentError> {
        if head.tool == Some(tool) {
            return Ok(());
        }
        if head.tip_mm.is_some() {
            return Err(invalid("pipette", "cannot change pipettes with a tip on; drop it first".into()));
        }
        out.push(format!("G0 Z{}", mm(safe_z(head))));
        out.push(format!("M6 T{tool}"));
        out.push(format!("G0 B{}", mm(PLUNGER_BOTTOM)));
        head.tool = Some(tool);
        head.plunger = PLUNGER_BOTTOM;
        Ok(())
    }

    fn need_tip(&self, head: &Head, tool: usize, name: &str) -> Result<(), InstrumentError> {
        if head.tool != Some(tool) || head.tip_mm.is_none() {
            return Err(invalid("pipette", format!("{name} has no tip; pick one up first")));
        }
        Ok(())
    }

    fn check_plunger(&self, target: f64, volume: f64, pipette: &str) -> Result<(), InstrumentError> {
        if target > PLUNGER_TOP + 1e-9 {
            return Err(invalid("volume_ul", format!("{volume} µL more does not fit in {pipette}'s tip")));
        }
        if target < PLUNGER_BOTTOM - 1e-6 {
            return Err(invalid("volume_ul", format!("{pipette} holds less than {volume} µL")));
        }
        Ok(())
    }
}

/// Up to travel height `z`, across; down to just above the target's rim is left to the caller.
fn travel(out: &mut Vec<String>, p: Point, z: f64) {
    out.push(format!("G0 Z{}", mm(z)));
    out.push(format!("G0 X{} Y{}", mm(p.x), mm(p.y)));
}

#[async_trait::async_trait]
impl Instrument for LiquidHandlerDriver {
    async fn identify(&self) -> Result<Identity, InstrumentError> {
        let lines = self.gcode("version").await?;
        let text = lines.join(" ");
        let firmware = text
            .split(',')
            .next()
            .and_then(|s| s.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .ok_or_else(|| InstrumentError::Protocol(format!("unexpected version reply {text:?}")))?;
        Ok(Identity { model: "OT-2-style motion controller".into(), serial: self.inner.id.clone(), firmware })
    }

    async fn prepare(&self, plan: &RunPlan) -> Result<(), InstrumentError> {
        let deck = Deck::for_plan(plan, &self.inner.library, self.inner.slots).map_err(|m| invalid("labware", m))?;
        let mut g = self.inner.link.lock().await;
        for line in deck.declaration() {
            send(&mut g.0, &line, self.inner.config.ack_timeout).await?;
        }
        g.1.deck = deck;
        Ok(())
    }

    async fn start(&self, op: &CommandOp) -> Result<Execution, InstrumentError> {
        let inner = self.inner.clone();
        inner.cancel.reset();
        // Plan against a copy of the head so a rejected command changes nothing.
        let lines = {
            let g = inner.link.lock().await;
            let mut head = g.1.clone();
            let lines = inner.plan(&mut head, op)?;
            head.at = head.at.after(&lines);
            (lines, head)
        };
        Ok(spawn(move |tx| async move {
            let (lines, head) = lines;
            let mut g = inner.link.lock().await;
            let sent = match inner.cancel.check() {
                Ok(()) => send_block(&mut g.0, &lines, &inner.config).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                // Where the head is now is uncertain: home before the next command.
                g.1.homed = false;
                return Err(e);
            }
            tx.progress(1.0, format!("{} G-code lines", lines.len()));
            g.1 = head;
            Ok(Outcome::default())
        }))
    }

    async fn status(&self) -> Result<Status, InstrumentError> {
        let (lines, head) = {
            let mut g = self.inner.link.lock().await;
            (send(&mut g.0, "M114.2", self.inner.config.ack_timeout).await?, g.1.clone())
        };
        let at = lines.iter().find_map(|l| l.split_once("MCS:")).map(|(_, p)| Axes::parse_mcs(p.trim()));
        let busy = self.inner.link.try_lock().is_err();
        Ok(Status {
            state: if busy { State::Busy } else { State::Idle },
            temperature_c: None,
            detail: in_words(&head, at),
        })
    }

    async fn abort(&self) -> Result<(), InstrumentError> {
        self.inner.cancel.fire();
        Ok(())
    }

    /// Plans each command as it was sent before the restart, keeping what the head model
    /// learns (tool, tip, plunger, where each block left the head). The controller kept its
    /// homing across the restart, so nothing is homed again.
    async fn replay(&self, done: &[CommandOp]) -> Result<(), InstrumentError> {
        let mut g = self.inner.link.lock().await;
        let head = &mut g.1;
        for op in done {
            let lines = self.inner.plan(head, op)?;
            head.at = head.at.after(&lines);
        }
        Ok(())
    }

    /// Tip pick-ups and drops by the tip switch (`M119`); every other command by where the
    /// head is (`M114.2`, answered once the controller's queue has run out): at the position
    /// the command's block ends at, it happened; still where the block before it ended, it did
    /// not. Where the two positions are the same (a mix in the well just dispensed into), or
    /// the head is anywhere else, nobody can tell from the instrument.
    async fn settle(&self, op: &CommandOp) -> Result<Settled, InstrumentError> {
        let inner = &self.inner;
        let mut g = inner.link.lock().await;
        let mut after = g.1.clone();
        let lines = inner.plan(&mut after, op)?;
        after.at = g.1.at.after(&lines);
        let before = g.1.at;
        let t = inner.config.ack_timeout;
        // Late acknowledgements of what the controller was still doing come first: the position
        // is the reply that carries it.
        let mut position = send(&mut g.0, "M114.2", t).await?;
        let mcs = |lines: &[String]| lines.iter().find_map(|l| l.split_once("MCS:").map(|(_, p)| p.trim().to_string()));
        for _ in 0..64 {
            if mcs(&position).is_some() {
                break;
            }
            let mut reader = ReplyReader::new();
            position = g.0.read_reply(t, |b| reader.poll(b)).await?;
        }
        let mcs = mcs(&position)
            .ok_or_else(|| InstrumentError::Protocol(format!("M114.2 reply without MCS: {position:?}")))?;
        let now = Axes::parse_mcs(&mcs);
        let tips = switches(&mut g.0, t).await?.tips;
        let said = format!("head at {now}, {tips} channel(s) carrying a tip");
        let verdict = match op {
            CommandOp::PickUpTip { .. } if tips > 0 => Settled::Happened(format!("{tips} channel(s) carry a tip")),
            CommandOp::PickUpTip { .. } => Settled::NotDone("no channel carries a tip".into()),
            CommandOp::DropTip { .. } if tips == 0 => Settled::Happened("no channel carries a tip".into()),
            CommandOp::DropTip { .. } => Settled::NotDone(format!("{tips} channel(s) still carry a tip")),
            _ if !before.differs(&after.at) => Settled::Unknown(format!(
                "{said}; the command would leave the head where it already was ({}), so its position cannot say",
                after.at
            )),
            _ if after.at.agrees(&now) => Settled::Happened(format!("{said}, where the command leaves it")),
            _ if before.agrees(&now) => Settled::NotDone(format!("{said}, where it was before the command")),
            _ => Settled::Unknown(format!(
                "{said}: neither where the command leaves it ({}) nor where it was before ({before})",
                after.at
            )),
        };
        if matches!(verdict, Settled::Happened(_)) {
            after.at = now;
            g.1 = after;
        }
        Ok(verdict)
    }

    /// The head's position and plunger (`M114.2`) and which channels carry a tip (`M119`'s tip
    /// switch), as the controller reports them.
    async fn whereabouts(&self) -> Result<Whereabouts, InstrumentError> {
        let inner = &self.inner;
        let mut g = inner.link.lock().await;
        let link = &mut g.0;
        let t = inner.config.ack_timeout;
        let position = send(link, "M114.2", t).await?;
        let mcs = position.iter().find_map(|l| l.split_once("MCS:").map(|(_, p)| p.trim().to_string()));
        let mcs = mcs.ok_or_else(|| InstrumentError::Protocol(format!("M114.2 reply without MCS: {position:?}")))?;
        let sw = switches(link, t).await?;
        let text =
            format!("head at {mcs} ({}); {} channel(s) carrying a tip", if sw.z_up { "up" } else { "not up" }, sw.tips);
        Ok(Whereabouts { text, tips_on: Some(sw.tips) })
    }

    /// Clears a halt, drops any tip in the trash, homes, and checks with the switches (`M119`)
    /// that no tip is left and the head is up.
    async fn make_safe(&self) -> Result<String, InstrumentError> {
        let inner = &self.inner;
        let mut g = inner.link.lock().await;
        let (link, head) = &mut *g;
        let t = inner.config.ack_timeout;
        send(link, "M999", t).await?;
        let mut did = Vec::new();
        if switches(link, t).await?.tips > 0 {
            let channels = head.tool.and_then(|i| inner.pipettes.get(i)).map_or(1, |p| p.channels.max(1));
            let (x, y) = slot_origin(TRASH_SLOT);
            let spread = (channels - 1) as f64 * CHANNEL_PITCH_MM / 2.0;
            // Which tip is on is not known for sure (a pick-up may have failed half-way): travel
            // as high as the longest tip on the deck needs.
            let longest = head.deck.items.iter().filter_map(|p| p.def.tip.map(|t| t.length_mm)).fold(0.0, f64::max);
            let tip = head.tip_mm.unwrap_or(0.0).max(longest);
            let z = safe_z(&Head { tip_mm: Some(tip), deck: head.deck.clone(), ..Head::default() });
            let mut lines = Vec::new();
            travel(&mut lines, Point { x: x + 64.0, y: y + 43.0 + spread, z: 0.0 }, z);
            lines.push(format!("G0 Z{}", mm(drop_z(tip))));
            lines.push(format!("G0 B{}", mm(PLUNGER_DROP_TIP)));
            lines.push(format!("G0 B{}", mm(PLUNGER_BOTTOM)));
            lines.push(format!("G0 Z{}", mm(SAFE_Z)));
            lines.push("M400".into());
            send_block(link, &lines, &inner.config).await?;
            did.push("dropped the tip in the trash");
        }
        let home = ["G28.2 Z A B C", "G28.2 X", "G28.2 Y"].map(String::from);
        let mut lines = home.to_vec();
        lines.push(format!("G0 B{}", mm(PLUNGER_BOTTOM)));
        lines.push("M400".into());
        send_block(link, &lines, &inner.config).await?;
        did.push("homed");
        let after = switches(link, t).await?;
        if after.tips > 0 {
            return Err(crate::instrument::unsafe_state(&format!(
                "{} channel(s) still carry a tip after dropping into the trash",
                after.tips
            )));
        }
        if !after.z_up {
            return Err(crate::instrument::unsafe_state("the head is not up after homing"));
        }
        head.tip_mm = None;
        head.plunger = PLUNGER_BOTTOM;
        head.homed = true;
        head.at = Axes::default();
        Ok(did.join(", "))
    }
}

/// What the controller's switches say (`M119`).
struct Switches {
    z_up: bool,
    /// Channels with a tip on.
    tips: u32,
}

async fn switches(link: &mut Link, within: Duration) -> Result<Switches, InstrumentError> {
    let lines = send(link, "M119", within).await?;
    let text = lines.join(" ");
    let field = |name: &str| -> Result<u32, InstrumentError> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| InstrumentError::Protocol(format!("M119 reply without {name}: {text:?}")))
    };
    Ok(Switches { z_up: field("Z_max")? == 1, tips: field("Tip")? })
}
