//! The site model: what a lab has, read from `lab.toml` (reference in `docs/labware.md`).
//!
//! Instruments with their class and capabilities, the nests (locations) plates sit in, the robot
//! arms that move plates between nests with their move times, and the price table. The compiler
//! checks protocols against it, the scheduler plans on it, the runtime drives what it lists.

use crate::def::LabwareKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What kind of work an instrument does. The compiler emits tasks for a class; the scheduler
/// picks the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstrumentClass {
    LiquidHandler,
    PlateReader,
    Incubator,
    HeaterShaker,
    Sealer,
    Centrifuge,
    PlateHotel,
    Thermocycler,
    RobotArm,
    /// A person: manual steps are tasks for a technician.
    Technician,
}

impl InstrumentClass {
    /// The snake_case name used in files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            InstrumentClass::LiquidHandler => "liquid_handler",
            InstrumentClass::PlateReader => "plate_reader",
            InstrumentClass::Incubator => "incubator",
            InstrumentClass::HeaterShaker => "heater_shaker",
            InstrumentClass::Sealer => "sealer",
            InstrumentClass::Centrifuge => "centrifuge",
            InstrumentClass::PlateHotel => "plate_hotel",
            InstrumentClass::Thermocycler => "thermocycler",
            InstrumentClass::RobotArm => "robot_arm",
            InstrumentClass::Technician => "technician",
        }
    }
}

impl std::fmt::Display for InstrumentClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A closed interval `[min, max]` written as a two-element array in `lab.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f64; 2]", into = "[f64; 2]")]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

impl From<[f64; 2]> for Range {
    fn from(v: [f64; 2]) -> Range {
        Range { min: v[0], max: v[1] }
    }
}

impl From<Range> for [f64; 2] {
    fn from(r: Range) -> [f64; 2] {
        [r.min, r.max]
    }
}

impl Range {
    /// Whether `v` lies in the interval.
    pub fn contains(&self, v: f64) -> bool {
        v >= self.min && v <= self.max
    }
}

/// A pipette mounted on a liquid handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipette {
    pub name: String,
    pub channels: u32,
    pub min_ul: f64,
    pub max_ul: f64,
    /// Volume of the tips it takes; a protocol's tip racks must match.
    pub tip_ul: f64,
    /// Plunger flow rate used for duration estimates, µL/s.
    #[serde(default = "default_flow")]
    pub flow_ul_per_s: f64,
    /// The gantry mount it hangs on: a robot driven over the Opentrons HTTP API loads its
    /// pipettes by mount, so there every pipette names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<Mount>,
}

/// A plan command carried out by a command of a SiLA 2 feature the instrument's server
/// implements (any vendor's feature, checked against the server's own definition at connect).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilaCommand {
    /// The plan command it carries out: `seal`, `peel`, `centrifuge`, `incubate`, `shake`,
    /// `set_temperature`, `cover`, `uncover`, …
    pub op: String,
    /// The feature's fully qualified identifier, `originator/category/Feature/vMajor`.
    pub feature: String,
    /// The command's identifier in that feature.
    pub command: String,
    /// Every parameter of the command, each from a field of the plan command or a constant.
    #[serde(default)]
    pub parameters: Vec<SilaParameter>,
    /// Reads: the response that carries the values (a list of numbers, one per well in the
    /// order of the `wells` parameter, or one number for one well).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Reads: the unit of those values (`OD`, `RFU`, `RLU`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// One parameter of a mapped SiLA command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilaParameter {
    /// The parameter's identifier in the feature definition.
    pub name: String,
    /// The plan command's field it takes its value from (`temperature_c`, `duration_s`, `g`,
    /// `rpm`, `labware`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Or a constant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<SilaConstant>,
    /// With `from`: what to send when the plan command leaves that field empty (an incubation
    /// without shaking has no `shake_rpm`; a feature may take 0 for "none").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<SilaConstant>,
    /// A number is sent as field × scale + offset: `scale = 1000` turns seconds into
    /// milliseconds, `offset = 273.15` °C into kelvin.
    #[serde(default = "unit_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
}

fn unit_scale() -> f64 {
    1.0
}

/// A constant parameter value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SilaConstant {
    Flag(bool),
    Number(f64),
    Text(String),
}

/// A side of an Opentrons robot's gantry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mount {
    Left,
    Right,
}

impl Mount {
    pub fn as_str(self) -> &'static str {
        match self {
            Mount::Left => "left",
            Mount::Right => "right",
        }
    }
}

/// Where a labware type really sits on one instrument, relative to where its definition puts
/// it, in mm (Opentrons' Labware Position Check measures these per robot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabwareOffset {
    /// The labware type's load name.
    pub labware: String,
    /// Only in this deck slot (1–12, the OT-2's numbering); every slot when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

fn default_flow() -> f64 {
    100.0
}

/// Plate-reader detection modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    Absorbance,
    Fluorescence,
    Luminescence,
}

/// Sealer operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealMode {
    Seal,
    Peel,
}

/// One instrument instance and what it can do. Capability fields apply to the classes that use
/// them; the validator rejects a capability on a class that has no use for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instrument {
    pub id: String,
    pub class: InstrumentClass,
    /// Labware kinds it accepts; empty means every kind.
    #[serde(default)]
    pub labware: Vec<LabwareKind>,
    /// Plates it holds at once (incubators, hotels, centrifuges); 1 otherwise.
    #[serde(default = "one")]
    pub capacity: u32,
    #[serde(default)]
    pub pipettes: Vec<Pipette>,
    #[serde(default)]
    pub deck_slots: Option<u32>,
    #[serde(default)]
    pub modes: Vec<ReadMode>,
    #[serde(default)]
    pub absorbance_nm: Option<Range>,
    #[serde(default)]
    pub excitation_nm: Option<Range>,
    #[serde(default)]
    pub emission_nm: Option<Range>,
    #[serde(default)]
    pub temperature_c: Option<Range>,
    #[serde(default)]
    pub shaking_rpm: Option<Range>,
    /// Incubators: the CO₂ atmosphere they keep, % (a cell-culture incubator: `[0, 20]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub co2_percent: Option<Range>,
    #[serde(default)]
    pub max_g: Option<f64>,
    #[serde(default)]
    pub seal_modes: Vec<SealMode>,
    /// Where plates are put for this instrument; defaults to a nest named after the instrument.
    #[serde(default)]
    pub nests: Vec<String>,
    /// Plan commands carried out by commands of the SiLA 2 features its server implements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sila: Vec<SilaCommand>,
    /// Liquid handlers: labware offsets measured on this robot, applied to every run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labware_offsets: Vec<LabwareOffset>,
    /// Modules on an Opentrons robot (heater-shaker, thermocycler, and a temperature module as an
    /// incubator): the robot they are plugged into, driven through its HTTP API with the robot's
    /// endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robot: Option<String>,
    /// Modules on an Opentrons robot: the deck slot the module sits in (the OT-2's numbering,
    /// 1–12; on a Flex slot 1 is D1 … 12 is A3), above the robot's `deck_slots`, which hold
    /// its labware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// How the runtime reaches it ("sim", "serial:/dev/ttyUSB0", "tcp:host:port", "sila:host:port",
    /// "opentrons:host:port" for a robot's HTTP API, "sim:opentrons" for its simulator).
    /// Required: an instrument must never end up simulated because a line was forgotten.
    pub endpoint: String,
}

fn one() -> u32 {
    1
}

impl Instrument {
    /// Whether it accepts labware of this kind.
    pub fn accepts(&self, kind: LabwareKind) -> bool {
        self.labware.is_empty() || self.labware.contains(&kind)
    }

    /// Whether it is an Opentrons robot driven over the robot's HTTP API (or its simulator).
    pub fn speaks_opentrons_http(&self) -> bool {
        self.endpoint.starts_with("opentrons:") || self.endpoint == "sim:opentrons"
    }

    /// Nests that belong to it.
    pub fn nest_ids(&self) -> Vec<String> {
        if self.nests.is_empty() {
            vec![self.id.clone()]
        } else {
            self.nests.clone()
        }
    }
}

/// A plate-moving arm and the nests it reaches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub id: String,
    pub reach: Vec<String>,
    /// Seconds for a nest-to-nest move not listed in `moves`.
    pub move_s: f64,
    #[serde(default)]
    pub moves: Vec<Move>,
    /// Where the arm was taught each nest it reaches, as its controller stores it (joint angles:
    /// J1 in mm, the others in degrees). When given, every nest in `reach` needs one, and the
    /// driver checks them against the arm's own at connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<TaughtPosition>,
    /// A Flex's gripper: the robot (a liquid handler of this site) it belongs to; it reaches the
    /// robot's nest and its modules' and has the robot's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robot: Option<String>,
    /// How the runtime reaches the arm; required, like an instrument's.
    pub endpoint: String,
}

/// One nest as an arm was taught it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaughtPosition {
    pub nest: String,
    pub joints: Vec<f64>,
}

/// A measured move time between two nests (either direction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Move {
    pub from: String,
    pub to: String,
    pub seconds: f64,
}

impl Arm {
    /// Seconds to move a plate between two nests this arm reaches.
    pub fn move_time(&self, from: &str, to: &str) -> Option<f64> {
        if !self.reach.iter().any(|n| n == from) || !self.reach.iter().any(|n| n == to) {
            return None;
        }
        if from == to {
            return Some(0.0);
        }
        let listed = self.moves.iter().find(|m| (m.from == from && m.to == to) || (m.from == to && m.to == from));
        Some(listed.map_or(self.move_s, |m| m.seconds))
    }
}

/// A nest that belongs to no instrument (a transfer station, a bench position).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub id: String,
    #[serde(default)]
    pub description: String,
}

/// The conditions a lab keeps containers at between runs.
pub const STORAGE_CONDITIONS: &[&str] = &["ambient", "4C", "-20C", "-80C", "30C", "35C", "37C"];

/// A place the lab keeps containers between runs: a shelf, a fridge, a freezer, a warm room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageUnit {
    pub id: String,
    /// One of [`STORAGE_CONDITIONS`].
    pub condition: String,
    /// How many containers it holds (a plate or a tube rack takes one position).
    pub positions: u32,
    /// Reached by an arm (an automated store) rather than by a technician.
    #[serde(default)]
    pub automated: bool,
    #[serde(default)]
    pub description: String,
}

/// Prices charged to tenants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub currency: String,
    /// Fixed fee per submitted run.
    #[serde(default)]
    pub per_run: f64,
    /// Price of one hour of device time, per instrument class.
    pub per_hour: BTreeMap<InstrumentClass, f64>,
    /// Price of each consumable a run uses up, by labware load name (a tip rack it takes tips
    /// from, a plate or reservoir it declares); types not listed are not charged.
    #[serde(default)]
    pub per_unit: BTreeMap<String, f64>,
    /// The reagents the lab stocks for protocols to use (`reagent: PBS`), with their price per
    /// mL; a protocol may name no other.
    #[serde(default)]
    pub reagents: BTreeMap<String, f64>,
    /// Price of keeping one container for one day, per storage condition (`"4C" = 0.10`).
    #[serde(default)]
    pub storage_per_day: BTreeMap<String, f64>,
    /// The factor on device-time prices per service class (`priority = 2.0`, `spot = 0.4`);
    /// a class not listed pays the listed rates (1.0).
    #[serde(default)]
    pub class: BTreeMap<crate::ServiceClass, f64>,
    /// The turnaround a class is sold with, as a factor of a run's turnaround on the empty lab
    /// (`priority = 1.5`: done within one and a half times its own length). Only priority may
    /// have one: standard runs share the lab fairly, spot runs wait without limit.
    #[serde(default)]
    pub turnaround: BTreeMap<crate::ServiceClass, f64>,
}

/// General facts about the site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteInfo {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Technicians on shift, for manual tasks.
    #[serde(default = "one")]
    pub technicians: u32,
}

/// A whole site as read from `lab.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub site: SiteInfo,
    #[serde(default, rename = "instrument")]
    pub instruments: Vec<Instrument>,
    #[serde(default, rename = "arm")]
    pub arms: Vec<Arm>,
    #[serde(default, rename = "location")]
    pub locations: Vec<Location>,
    /// Where containers are kept between runs.
    #[serde(default, rename = "storage", skip_serializing_if = "Vec::is_empty")]
    pub storage: Vec<StorageUnit>,
    pub prices: Prices,
    /// Work cells: groups of instruments and arms that one labd node drives (scale-out). None:
    /// the whole site is one cell.
    #[serde(default, rename = "cell", skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<Cell>,
}

/// A work cell: instruments and arms that work together (plates move between them) and are
/// driven by one labd node at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    pub id: String,
    /// Ids of its instruments and arms.
    pub members: Vec<String>,
}

/// A `lab.toml` that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SiteError {
    /// TOML syntax or a value of the wrong type; the message carries line, column and a snippet.
    #[error("{0}")]
    Toml(String),
    /// Well-formed but inconsistent: `key` names the offending entry.
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

/// The simulated site shipped with Labwright (`sites/sim.toml`).
pub const SIM_SITE_TOML: &str = include_str!("../../sites/sim.toml");

impl Site {
    /// Parses and checks a `lab.toml`.
    pub fn from_toml(text: &str) -> Result<Site, SiteError> {
        let site: Site = toml::from_str(text).map_err(|e| SiteError::Toml(e.to_string()))?;
        site.check()?;
        Ok(site)
    }

    /// The shipped simulated site.
    pub fn sim() -> Result<Site, SiteError> {
        Site::from_toml(SIM_SITE_TOML)
    }

    /// A module plugged into an Opentrons robot: a heater-shaker or thermocycler, on a robot of
    /// this site driven over its HTTP API, with the robot's endpoint, in a slot of its own above
    /// the robot's labware slots.
    fn check_module_on_robot(&self, inst: &Instrument, key: &str) -> Result<(), SiteError> {
        let invalid = |problem: String| SiteError::Invalid { key: key.to_string(), problem };
        let Some(robot_id) = &inst.robot else {
            return match inst.slot {
                Some(_) => Err(invalid("slot is for a module on an Opentrons robot; name the robot too".into())),
                None => Ok(()),
            };
        };
        // An incubator plugged into a robot is its temperature module.
        if !matches!(
            inst.class,
            InstrumentClass::HeaterShaker | InstrumentClass::Thermocycler | InstrumentClass::Incubator
        ) {
            return Err(invalid(format!(
                "a {} cannot be plugged into a robot; only a heater_shaker, thermocycler or incubator (a temperature module) can",
                inst.class
            )));
        }
        if inst.class == InstrumentClass::Incubator && (inst.capacity != 1 || inst.shaking_rpm.is_some()) {
            return Err(invalid(
                "a temperature module holds one plate and cannot shake: capacity = 1, no shaking_rpm".into(),
            ));
        }
        let Some(robot) = self.instruments.iter().find(|r| &r.id == robot_id) else {
            return Err(invalid(format!("robot = \"{robot_id}\" names no instrument of this site")));
        };
        if robot.class != InstrumentClass::LiquidHandler || !robot.speaks_opentrons_http() {
            return Err(invalid(format!(
                "robot = \"{robot_id}\" must be an Opentrons robot driven over its HTTP API (a liquid_handler with an opentrons: or sim:opentrons endpoint)"
            )));
        }
        if inst.endpoint != robot.endpoint {
            return Err(invalid(format!(
                "a module is driven through its robot: give it the robot's endpoint \"{}\"",
                robot.endpoint
            )));
        }
        let labware_slots = robot.deck_slots.unwrap_or(11);
        let Some(slot) = inst.slot.filter(|s| *s > labware_slots && *s <= 11) else {
            return Err(invalid(format!(
                "slot must be the module's deck slot, {}–11: slots 1–{labware_slots} hold {robot_id}'s labware (its deck_slots) and 12 is the trash",
                labware_slots + 1
            )));
        };
        let taken = self
            .instruments
            .iter()
            .any(|o| o.id != inst.id && o.robot.as_deref() == Some(robot_id.as_str()) && o.slot == Some(slot));
        if taken {
            return Err(invalid(format!("slot {slot} of {robot_id} holds another module")));
        }
        Ok(())
    }

    fn check(&self) -> Result<(), SiteError> {
        let invalid = |key: String, problem: &str| SiteError::Invalid { key, problem: problem.to_string() };
        let mut ids = BTreeSet::new();
        let mut nests = BTreeSet::new();
        for (i, inst) in self.instruments.iter().enumerate() {
            let key = format!("instrument[{i}] ({})", inst.id);
            if inst.id.is_empty() || !ids.insert(inst.id.clone()) {
                return Err(invalid(key, "id is empty or used twice; give every instrument a unique id"));
            }
            if inst.capacity == 0 {
                return Err(invalid(key, "capacity must be at least 1"));
            }
            for (name, r) in [
                ("absorbance_nm", inst.absorbance_nm),
                ("excitation_nm", inst.excitation_nm),
                ("emission_nm", inst.emission_nm),
                ("temperature_c", inst.temperature_c),
                ("shaking_rpm", inst.shaking_rpm),
                ("co2_percent", inst.co2_percent),
            ] {
                if let Some(r) = r {
                    if !(r.min.is_finite() && r.max.is_finite() && r.min <= r.max) {
                        return Err(invalid(format!("{key}.{name}"), "must be [min, max] with min <= max"));
                    }
                }
            }
            let is_lh = inst.class == InstrumentClass::LiquidHandler;
            if is_lh && inst.pipettes.is_empty() {
                return Err(invalid(key, "a liquid_handler needs at least one pipette"));
            }
            if !is_lh && !inst.pipettes.is_empty() {
                return Err(invalid(key, "only a liquid_handler has pipettes"));
            }
            for p in &inst.pipettes {
                let ok = p.min_ul > 0.0 && p.min_ul <= p.max_ul && p.max_ul <= p.tip_ul && p.flow_ul_per_s > 0.0;
                if !ok || p.channels == 0 {
                    return Err(invalid(
                        format!("{key}.pipettes ({})", p.name),
                        "needs 0 < min_ul <= max_ul <= tip_ul, channels >= 1 and flow_ul_per_s > 0",
                    ));
                }
            }
            if !is_lh && !inst.labware_offsets.is_empty() {
                return Err(invalid(key, "only a liquid_handler has labware_offsets"));
            }
            for o in &inst.labware_offsets {
                let finite = [o.x, o.y, o.z].iter().all(|v| v.is_finite());
                if !finite || o.slot.is_some_and(|s| !(1..=12).contains(&s)) {
                    return Err(invalid(
                        format!("{key}.labware_offsets ({})", o.labware),
                        "needs finite x, y, z in mm and, if given, a slot from 1 to 12",
                    ));
                }
            }
            for (j, m) in inst.sila.iter().enumerate() {
                let at = format!("{key}.sila[{j}] ({})", m.op);
                if m.op.is_empty() || m.feature.split('/').count() != 4 || m.command.is_empty() {
                    return Err(invalid(
                        at,
                        "needs op, command and feature as originator/category/Feature/vMajor (e.g. com.acme/sealing/Sealer/v1)",
                    ));
                }
                let is_read = m.op.starts_with("read_");
                if is_read && m.response.is_none() {
                    return Err(invalid(
                        at,
                        "a read needs response = \"…\": the response of the command that carries the values",
                    ));
                }
                if !is_read && (m.response.is_some() || m.unit.is_some()) {
                    return Err(invalid(at, "response and unit are for reads (read_absorbance, …) only"));
                }
                for p in &m.parameters {
                    if p.from.is_some() == p.value.is_some()
                        || (p.default.is_some() && p.from.is_none())
                        || !(p.scale.is_finite() && p.scale != 0.0 && p.offset.is_finite())
                    {
                        return Err(invalid(
                            format!("{at}.parameters ({})", p.name),
                            "give exactly one of from (a field of the plan command) or value (a constant), a default only with from; scale non-zero, offset finite",
                        ));
                    }
                }
            }
            if inst.speaks_opentrons_http() {
                let mut mounts = BTreeSet::new();
                for p in &inst.pipettes {
                    let Some(m) = p.mount else {
                        return Err(invalid(
                            format!("{key}.pipettes ({})", p.name),
                            "an Opentrons robot loads its pipettes by mount: add mount = \"left\" or \"right\"",
                        ));
                    };
                    if !mounts.insert(m) {
                        return Err(invalid(
                            format!("{key}.pipettes ({})", p.name),
                            &format!("two pipettes on the {} mount; a robot has one pipette per mount", m.as_str()),
                        ));
                    }
                }
            }
            self.check_module_on_robot(inst, &key)?;
            if inst.class == InstrumentClass::PlateReader && inst.modes.is_empty() {
                return Err(invalid(key, "a plate_reader needs modes (absorbance, fluorescence, luminescence)"));
            }
            for n in inst.nest_ids() {
                if !nests.insert(n.clone()) {
                    return Err(invalid(key, &format!("nest {n} is declared twice")));
                }
            }
        }
        for loc in &self.locations {
            if !nests.insert(loc.id.clone()) {
                return Err(invalid(format!("location ({})", loc.id), "id is used twice"));
            }
        }
        for (i, arm) in self.arms.iter().enumerate() {
            let key = format!("arm[{i}] ({})", arm.id);
            if !ids.insert(arm.id.clone()) {
                return Err(invalid(key, "id is used twice"));
            }
            if !(arm.move_s.is_finite() && arm.move_s > 0.0) {
                return Err(invalid(key, "move_s must be a positive number of seconds"));
            }
            if let Some(robot_id) = &arm.robot {
                let Some(robot) = self.instruments.iter().find(|r| &r.id == robot_id) else {
                    return Err(invalid(key, &format!("robot = \"{robot_id}\" names no instrument of this site")));
                };
                if robot.class != InstrumentClass::LiquidHandler || !robot.speaks_opentrons_http() {
                    return Err(invalid(
                        key,
                        &format!("robot = \"{robot_id}\" must be an Opentrons robot driven over its HTTP API"),
                    ));
                }
                if arm.endpoint != robot.endpoint {
                    return Err(invalid(
                        key,
                        &format!(
                            "a gripper is driven through its robot: give it the robot's endpoint \"{}\"",
                            robot.endpoint
                        ),
                    ));
                }
                let on_robot = |n: &String| {
                    robot.nest_ids().contains(n)
                        || self
                            .instruments
                            .iter()
                            .any(|m| m.robot.as_deref() == Some(robot_id) && m.nest_ids().contains(n))
                };
                if let Some(n) = arm.reach.iter().find(|n| !on_robot(n)) {
                    return Err(invalid(
                        key,
                        &format!("a gripper reaches only its robot's deck and modules; {n} is not on {robot_id}"),
                    ));
                }
            }
            let mut taught = BTreeSet::new();
            for p in &arm.positions {
                if !arm.reach.contains(&p.nest) {
                    return Err(invalid(
                        format!("{key}.positions ({})", p.nest),
                        "names a nest the arm does not reach; add it to reach or remove the position",
                    ));
                }
                if !taught.insert(p.nest.clone()) {
                    return Err(invalid(format!("{key}.positions ({})", p.nest), "is taught twice"));
                }
                if p.joints.is_empty() || p.joints.len() > 7 || !p.joints.iter().all(|j| j.is_finite()) {
                    return Err(invalid(
                        format!("{key}.positions ({})", p.nest),
                        "joints must be 1 to 7 finite numbers, as the arm's controller stores them",
                    ));
                }
            }
            if !arm.positions.is_empty() {
                if let Some(n) = arm.reach.iter().find(|n| !taught.contains(*n)) {
                    return Err(invalid(
                        key,
                        &format!("reaches {n} but has no taught position for it; teach it and add it to positions"),
                    ));
                }
            }
            for n in arm.reach.iter().chain(arm.moves.iter().flat_map(|m| [&m.from, &m.to])) {
                if !nests.contains(n) && !self.storage.iter().any(|u| u.automated && &u.id == n) {
                    return Err(invalid(
                        key,
                        &format!(
                            "reaches unknown nest {n}; declare it as an instrument nest, a [[location]] or an automated [[storage]] unit"
                        ),
                    ));
                }
            }
        }
        for (class, price) in &self.prices.per_hour {
            if !(price.is_finite() && *price >= 0.0) {
                return Err(invalid(format!("prices.per_hour.{class}"), "must be a non-negative number"));
            }
        }
        for (i, unit) in self.storage.iter().enumerate() {
            let key = format!("storage[{i}] ({})", unit.id);
            let taken = self.instruments.iter().any(|x| x.id == unit.id)
                || self.arms.iter().any(|a| a.id == unit.id)
                || self.storage[..i].iter().any(|u| u.id == unit.id);
            if unit.id.trim().is_empty() || taken {
                return Err(invalid(key, "id is empty or used twice; give every storage unit a unique id"));
            }
            if !STORAGE_CONDITIONS.contains(&unit.condition.as_str()) {
                return Err(invalid(
                    format!("{key}.condition"),
                    &format!(
                        "`{}` is not a storage condition; give one of {}",
                        unit.condition,
                        STORAGE_CONDITIONS.join(", ")
                    ),
                ));
            }
            if unit.positions == 0 {
                return Err(invalid(format!("{key}.positions"), "must be at least 1"));
            }
            if unit.automated && !self.arms.iter().any(|a| a.reach.contains(&unit.id)) {
                return Err(invalid(
                    format!("{key}.automated"),
                    "no arm reaches it: add it to an arm's reach (the arm fetches from it), or set automated = false (technicians do)",
                ));
            }
        }
        for (class, factor) in &self.prices.class {
            if !(factor.is_finite() && *factor >= 0.0) {
                return Err(invalid(
                    format!("prices.class.{class}"),
                    "must be a non-negative factor on device-time prices",
                ));
            }
        }
        for (class, factor) in &self.prices.turnaround {
            if *class != crate::ServiceClass::Priority {
                return Err(invalid(
                    format!("prices.turnaround.{class}"),
                    "only priority is sold with a turnaround: standard runs share the lab fairly and spot runs wait without limit",
                ));
            }
            if !(factor.is_finite() && *factor >= 1.0) {
                return Err(invalid(
                    format!("prices.turnaround.{class}"),
                    "must be a factor of at least 1 on the run's turnaround on the empty lab (1.5: within one and a half times its own length)",
                ));
            }
        }
        for condition in self.prices.storage_per_day.keys() {
            if !STORAGE_CONDITIONS.contains(&condition.as_str()) {
                return Err(invalid(
                    format!("prices.storage_per_day.{condition}"),
                    &format!("not a storage condition; give one of {}", STORAGE_CONDITIONS.join(", ")),
                ));
            }
        }
        for (table, prices) in [
            ("per_unit", &self.prices.per_unit),
            ("reagents", &self.prices.reagents),
            ("storage_per_day", &self.prices.storage_per_day),
        ] {
            for (item, price) in prices {
                if !(price.is_finite() && *price >= 0.0) {
                    return Err(invalid(format!("prices.{table}.{item}"), "must be a non-negative number"));
                }
            }
        }
        self.check_cells()
    }

    /// Every instrument and arm in exactly one cell, when there are cells.
    fn check_cells(&self) -> Result<(), SiteError> {
        if self.cells.is_empty() {
            return Ok(());
        }
        let invalid = |key: String, problem: String| SiteError::Invalid { key, problem };
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        let mut cell_ids = BTreeSet::new();
        for (i, cell) in self.cells.iter().enumerate() {
            let key = format!("cell[{i}] ({})", cell.id);
            if cell.id.is_empty() || !cell_ids.insert(cell.id.as_str()) {
                return Err(invalid(key, "id is empty or used twice; give every cell a unique id".into()));
            }
            for m in &cell.members {
                let known = self.instruments.iter().any(|x| &x.id == m) || self.arms.iter().any(|a| &a.id == m);
                if !known {
                    return Err(invalid(key, format!("member {m} is no instrument or arm of this site")));
                }
                if let Some(other) = owner.insert(m, &cell.id) {
                    return Err(invalid(key, format!("{m} is already in cell {other}; a member belongs to one cell")));
                }
            }
        }
        let ids = self.instruments.iter().map(|x| &x.id).chain(self.arms.iter().map(|a| &a.id));
        for id in ids {
            if !owner.contains_key(id.as_str()) {
                return Err(invalid(
                    "cell".into(),
                    format!("{id} is in no cell; when a site has cells, every instrument and arm is in one"),
                ));
            }
        }
        Ok(())
    }

    /// The cell ids, or `["main"]` for a site without cells.
    pub fn cell_ids(&self) -> Vec<String> {
        if self.cells.is_empty() {
            vec!["main".into()]
        } else {
            self.cells.iter().map(|c| c.id.clone()).collect()
        }
    }

    /// The part of the site that one cell is: its instruments and arms, the locations its arms
    /// reach, the moves among them. A site without cells is its own cell `main`.
    pub fn cell(&self, id: &str) -> Result<Site, SiteError> {
        if self.cells.is_empty() && id == "main" {
            return Ok(self.clone());
        }
        let Some(cell) = self.cells.iter().find(|c| c.id == id) else {
            return Err(SiteError::Invalid {
                key: format!("cell {id}"),
                problem: format!("the site has no such cell; its cells are {}", self.cell_ids().join(", ")),
            });
        };
        let member = |x: &String| cell.members.contains(x);
        let instruments: Vec<Instrument> = self.instruments.iter().filter(|i| member(&i.id)).cloned().collect();
        let arms: Vec<Arm> = self.arms.iter().filter(|a| member(&a.id)).cloned().collect();
        let nests: BTreeSet<String> = instruments.iter().flat_map(|i| i.nest_ids()).collect();
        let reached: BTreeSet<&String> = arms.iter().flat_map(|a| a.reach.iter()).collect();
        let locations: Vec<Location> = self.locations.iter().filter(|l| reached.contains(&l.id)).cloned().collect();
        let automated = |n: &String| self.storage.iter().any(|u| u.automated && &u.id == n);
        let known = |n: &String| nests.contains(n) || locations.iter().any(|l| &l.id == n) || automated(n);
        let arms: Vec<Arm> = arms
            .into_iter()
            .map(|mut a| {
                a.reach.retain(|n| known(n));
                a.moves.retain(|m| known(&m.from) && known(&m.to));
                a
            })
            .collect();
        // Storage is the lab's, whichever cell's node files a container away; an automated
        // store this cell's arms do not reach is fetched from by hand here.
        let storage = self
            .storage
            .iter()
            .map(|u| StorageUnit {
                automated: u.automated && arms.iter().any(|a| a.reach.contains(&u.id)),
                ..u.clone()
            })
            .collect();
        let part = Site {
            site: self.site.clone(),
            instruments,
            arms,
            locations,
            storage,
            prices: self.prices.clone(),
            cells: vec![cell.clone()],
        };
        part.check()?;
        Ok(part)
    }

    /// Instruments of one class.
    pub fn instruments_of(&self, class: InstrumentClass) -> impl Iterator<Item = &Instrument> {
        self.instruments.iter().filter(move |i| i.class == class)
    }

    /// Price of one hour of a class, 0 when the table has none.
    pub fn price_per_hour(&self, class: InstrumentClass) -> f64 {
        self.prices.per_hour.get(&class).copied().unwrap_or(0.0)
    }

    /// The factor on device-time prices for a service class (1 when the table has none).
    pub fn class_factor(&self, class: crate::ServiceClass) -> f64 {
        self.prices.class.get(&class).copied().unwrap_or(1.0)
    }

    /// The turnaround `class` is sold with, as a factor of a run's turnaround on the empty lab.
    pub fn turnaround_target(&self, class: crate::ServiceClass) -> Option<f64> {
        self.prices.turnaround.get(&class).copied()
    }

    /// The typical arm move time: the mean of every arm's default move.
    pub fn typical_move_s(&self) -> f64 {
        if self.arms.is_empty() {
            0.0
        } else {
            self.arms.iter().map(|a| a.move_s).sum::<f64>() / self.arms.len() as f64
        }
    }
}
