//! The plan IR: what the compiler hands to the scheduler, the store and the executor.
//!
//! A plan is a DAG of tasks. A task is a block of commands for one instrument class that holds
//! named labware while it runs. Edges are precedence; max lags bound the gap between the end of
//! one task and the start of another. The JSON form is stable (snapshot-tested): add fields with
//! defaults, never rename.

use crate::source::Span;
use labware::{InstrumentClass, LabwareKind};
use serde::{Deserialize, Serialize};

/// Version of the plan JSON.
pub const PLAN_VERSION: u32 = 1;

/// Index of a task in [`RunPlan::tasks`].
pub type TaskId = u32;

/// A compiled experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    pub version: u32,
    pub protocol: String,
    pub labware: Vec<PlanLabware>,
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub max_lags: Vec<MaxLag>,
    /// Optical properties of the liquids that declare them, by liquid name (simulated readers
    /// compute each well's value from them).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub optics: std::collections::BTreeMap<String, labware::optics::Optics>,
    /// Definitions of the labware types the protocol brought that the lab's library lacks (an
    /// Opentrons protocol's `labwareDefinitions`): drivers that must describe the labware to an
    /// instrument (a robot's deck, a gripper) find them here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_labware: Vec<labware::LabwareDef>,
    /// Liquids that are the lab's reagents (`reagent: PBS`): liquid name → reagent name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reagents: std::collections::BTreeMap<String, String>,
}

impl RunPlan {
    /// The definition of a labware type the plan uses: the plan's own, else the library's.
    pub fn labware_def<'a>(&'a self, load_name: &str, lib: &'a labware::Library) -> Option<&'a labware::LabwareDef> {
        self.custom_labware.iter().find(|d| d.load_name == load_name).or_else(|| lib.get(load_name))
    }

    /// The same plan with every labware and liquid name made unique across runs
    /// (`<prefix>.<name>`): two tenants' "plate" are different plates to the arm and the liquid
    /// handler, and their "dye" different liquids to a simulated reader.
    pub fn scoped(&self, prefix: &str) -> RunPlan {
        let scope = |s: &str| format!("{prefix}.{s}");
        let name = |s: &mut String| *s = scope(s);
        let mut plan = self.clone();
        for l in &mut plan.labware {
            name(&mut l.name);
            for mix in l.composition.values_mut() {
                *mix = mix.iter().map(|(liquid, ul)| (scope(liquid), *ul)).collect();
            }
        }
        plan.optics = plan.optics.iter().map(|(liquid, o)| (scope(liquid), o.clone())).collect();
        plan.reagents = plan.reagents.iter().map(|(liquid, r)| (scope(liquid), r.clone())).collect();
        for t in &mut plan.tasks {
            t.holds.iter_mut().for_each(name);
            for c in &mut t.commands {
                c.op.labware_mut().into_iter().for_each(name);
            }
        }
        plan
    }
}

/// A labware item the run uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanLabware {
    pub name: String,
    pub load_name: String,
    pub kind: LabwareKind,
    /// What the technician loads before the run: well → µL (empty for empty labware).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub contents: std::collections::BTreeMap<String, f64>,
    /// The same wells by liquid: well → liquid → µL.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub composition: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
    /// The plate map: well → sample, group, role, concentration, replicate.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub map: std::collections::BTreeMap<String, crate::design::WellDesign>,
    /// The container of the lab's inventory this labware is (`container:` in the protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// What the run draws from each well of that container, net, µL (wells it leaves as they
    /// were are not listed).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub drawn: std::collections::BTreeMap<String, f64>,
    /// Kept in the lab's storage after the run, at this condition (`store:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Discarded after the run (`discard: true`; a container leaves the tenant's inventory).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard: bool,
    /// What a stored labware that is not a container yet holds when the run ends: well →
    /// liquid → µL (wells left empty are not listed). It becomes a container of the tenant's.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub outputs: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
}

/// Instrument settings a task needs; tasks with equal settings may share a capacity resource.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shake_rpm: Option<f64>,
}

/// A block of commands for one instrument class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    /// `None` for a pure delay that needs no instrument.
    pub class: Option<InstrumentClass>,
    pub label: String,
    /// Labware the task holds while it runs.
    pub holds: Vec<String>,
    /// Tasks that must finish before this one starts.
    pub after: Vec<TaskId>,
    pub commands: Vec<Command>,
    /// Estimated duration in seconds.
    pub duration_s: f64,
    #[serde(default, skip_serializing_if = "is_default_settings")]
    pub settings: Settings,
    /// Pipettes the task's commands use (the scheduler picks a handler that has them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipettes: Vec<String>,
    /// The site's instruments that can run all of this task (every command's capability and
    /// the labware it holds), from `capability::instruments_for`; the scheduler chooses only
    /// among them. Empty for tasks no instrument runs, and in plans compiled before it existed
    /// (then any instrument of the class).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instruments: Vec<String>,
    /// Where in the protocol file the task comes from.
    pub span: Span,
}

fn is_default_settings(s: &Settings) -> bool {
    *s == Settings::default()
}

/// One device-level command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    #[serde(flatten)]
    pub op: CommandOp,
    /// Safe to send again when its outcome is unknown (a read, a move home).
    pub repeatable: bool,
    /// Estimated duration in seconds.
    pub estimate_s: f64,
}

/// The commands instruments understand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CommandOp {
    PickUpTip {
        pipette: String,
        rack: String,
        well: String,
    },
    Aspirate {
        pipette: String,
        labware: String,
        well: String,
        volume_ul: f64,
    },
    Dispense {
        pipette: String,
        labware: String,
        well: String,
        volume_ul: f64,
    },
    Mix {
        pipette: String,
        labware: String,
        well: String,
        volume_ul: f64,
        times: u32,
    },
    BlowOut {
        pipette: String,
        labware: String,
        well: String,
    },
    MoveTo {
        pipette: String,
        labware: Option<String>,
        well: Option<String>,
    },
    DropTip {
        pipette: String,
    },
    Home,
    MoveLabware {
        labware: String,
        to: String,
    },
    AddReagent {
        reagent: String,
        labware: String,
        well: String,
        volume_ul: f64,
    },
    /// `temperature_c: None` is ambient (no heating or cooling); `co2_percent` a CO₂ atmosphere.
    Incubate {
        labware: String,
        temperature_c: Option<f64>,
        duration_s: f64,
        shake_rpm: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        co2_percent: Option<f64>,
    },
    Shake {
        labware: String,
        rpm: f64,
        duration_s: f64,
        temperature_c: Option<f64>,
    },
    SetTemperature {
        labware: Option<String>,
        temperature_c: f64,
    },
    WaitForTemperature {
        labware: Option<String>,
    },
    SetShakeSpeed {
        labware: Option<String>,
        rpm: f64,
    },
    StopShaking,
    StopHeating,
    Latch {
        open: bool,
    },
    Seal {
        labware: String,
    },
    Peel {
        labware: String,
    },
    Cover {
        labware: String,
    },
    Uncover {
        labware: String,
    },
    ReadAbsorbance {
        labware: String,
        wells: Vec<String>,
        wavelengths_nm: Vec<f64>,
    },
    ReadFluorescence {
        labware: String,
        wells: Vec<String>,
        excitation_nm: f64,
        emission_nm: f64,
    },
    ReadLuminescence {
        labware: String,
        wells: Vec<String>,
    },
    Centrifuge {
        labware: String,
        g: f64,
        duration_s: f64,
    },
    Wait {
        duration_s: f64,
    },
    Manual {
        instruction: String,
    },
}

impl CommandOp {
    /// The op's name as a protocol's JSON plan spells it (`pick_up_tip`, `read_absorbance`, …).
    pub fn name(&self) -> &'static str {
        match self {
            CommandOp::PickUpTip { .. } => "pick_up_tip",
            CommandOp::Aspirate { .. } => "aspirate",
            CommandOp::Dispense { .. } => "dispense",
            CommandOp::Mix { .. } => "mix",
            CommandOp::BlowOut { .. } => "blow_out",
            CommandOp::MoveTo { .. } => "move_to",
            CommandOp::DropTip { .. } => "drop_tip",
            CommandOp::Home => "home",
            CommandOp::MoveLabware { .. } => "move_labware",
            CommandOp::AddReagent { .. } => "add_reagent",
            CommandOp::Incubate { .. } => "incubate",
            CommandOp::Shake { .. } => "shake",
            CommandOp::SetTemperature { .. } => "set_temperature",
            CommandOp::WaitForTemperature { .. } => "wait_for_temperature",
            CommandOp::SetShakeSpeed { .. } => "set_shake_speed",
            CommandOp::StopShaking => "stop_shaking",
            CommandOp::StopHeating => "stop_heating",
            CommandOp::Latch { .. } => "latch",
            CommandOp::Seal { .. } => "seal",
            CommandOp::Peel { .. } => "peel",
            CommandOp::Cover { .. } => "cover",
            CommandOp::Uncover { .. } => "uncover",
            CommandOp::ReadAbsorbance { .. } => "read_absorbance",
            CommandOp::ReadFluorescence { .. } => "read_fluorescence",
            CommandOp::ReadLuminescence { .. } => "read_luminescence",
            CommandOp::Centrifuge { .. } => "centrifuge",
            CommandOp::Wait { .. } => "wait",
            CommandOp::Manual { .. } => "manual",
        }
    }
}

impl CommandOp {
    /// The labware this command names (a tip rack for a pick-up), to rename it. A nest a plate
    /// moves to is a place, not labware, and is not among them.
    pub fn labware_mut(&mut self) -> Option<&mut String> {
        use CommandOp::*;
        match self {
            PickUpTip { rack, .. } => Some(rack),
            Aspirate { labware, .. }
            | Dispense { labware, .. }
            | Mix { labware, .. }
            | BlowOut { labware, .. }
            | MoveLabware { labware, .. }
            | AddReagent { labware, .. }
            | Incubate { labware, .. }
            | Shake { labware, .. }
            | Seal { labware }
            | Peel { labware }
            | Cover { labware }
            | Uncover { labware }
            | ReadAbsorbance { labware, .. }
            | ReadFluorescence { labware, .. }
            | ReadLuminescence { labware, .. }
            | Centrifuge { labware, .. } => Some(labware),
            MoveTo { labware, .. }
            | SetTemperature { labware, .. }
            | WaitForTemperature { labware }
            | SetShakeSpeed { labware, .. } => labware.as_mut(),
            DropTip { .. } | Home | StopShaking | StopHeating | Latch { .. } | Wait { .. } | Manual { .. } => None,
        }
    }
}

/// "Task `to` starts at most `max_s` seconds after task `from` ends."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaxLag {
    pub from: TaskId,
    pub to: TaskId,
    pub max_s: f64,
}

impl RunPlan {
    /// Stable pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Total number of device commands.
    pub fn command_count(&self) -> usize {
        self.tasks.iter().map(|t| t.commands.len()).sum()
    }

    /// Earliest finish of every task if each started as soon as its predecessors ended
    /// (the critical path); tasks are in topological order by construction.
    pub fn earliest_finish(&self) -> Vec<f64> {
        let mut finish = vec![0.0f64; self.tasks.len()];
        for t in &self.tasks {
            let start = t.after.iter().filter_map(|&p| finish.get(p as usize)).fold(0.0f64, |a, &b| a.max(b));
            if let Some(f) = finish.get_mut(t.id as usize) {
                *f = start + t.duration_s;
            }
        }
        finish
    }
}
