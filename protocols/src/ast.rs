//! The experiment as the front ends read it: every format (Labwright YAML/JSON, Autoprotocol,
//! Opentrons) is parsed into this tree, so resolve, check and lower are shared.

use crate::source::Span;
use labware::LabwareDef;

/// A name with the span it was written at.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    pub name: String,
    pub span: Span,
}

/// A reference to wells: `plate/A1:H12`, split into labware name and selection text.
#[derive(Debug, Clone, PartialEq)]
pub struct WellRef {
    pub labware: String,
    pub selection: String,
    pub span: Span,
}

/// How wells that the protocol gives no contents start out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlistedWells {
    /// Empty: Labwright protocols list every liquid they start with.
    Empty,
    /// Unknown: imported protocols often do not say; under-draw checks are skipped for them.
    Unknown,
}

/// A whole experiment.
#[derive(Debug, Clone)]
pub struct Protocol {
    pub name: String,
    pub labware: Vec<LabwareDecl>,
    pub liquids: Vec<Named>,
    /// Optical properties the protocol declares for some of its liquids (simulated readers
    /// compute each well's value from them), by liquid name.
    pub optics: std::collections::BTreeMap<String, labware::optics::Optics>,
    /// How long a liquid may wait at room temperature once it is in a plate (`max_wait`), by
    /// liquid name, seconds.
    pub max_wait_s: std::collections::BTreeMap<String, f64>,
    /// Liquids that are the lab's reagents (`reagent: PBS`): liquid name → the reagent's name.
    pub reagents: std::collections::BTreeMap<String, Named>,
    pub steps: Vec<Step>,
    pub constraints: Vec<LagConstraint>,
    /// Definitions the file brings with it (Opentrons embeds them; Autoprotocol container types).
    pub custom_labware: Vec<LabwareDef>,
    pub unlisted_wells: UnlistedWells,
    /// Pipettes the protocol itself names (Opentrons); empty means "choose from the site".
    pub pipettes: Vec<PipetteDecl>,
    /// Where tips come from.
    pub tips: TipSource,
}

/// Where a protocol's tips come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TipSource {
    /// From the tip racks the protocol declares (Labwright, Opentrons): running out is an error.
    Protocol,
    /// From the lab's stock (Autoprotocol leaves tips to the lab).
    Lab,
}

impl Protocol {
    /// A protocol with nothing in it yet, for a front end to fill.
    pub fn empty(name: impl Into<String>, unlisted_wells: UnlistedWells, tips: TipSource) -> Protocol {
        Protocol {
            name: name.into(),
            labware: Vec::new(),
            liquids: Vec::new(),
            optics: Default::default(),
            max_wait_s: Default::default(),
            reagents: Default::default(),
            steps: Vec::new(),
            constraints: Vec::new(),
            custom_labware: Vec::new(),
            unlisted_wells,
            pipettes: Vec::new(),
            tips,
        }
    }
}

/// A pipette an imported protocol declares, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct PipetteDecl {
    pub id: String,
    pub name: String,
    pub channels: u32,
    pub min_ul: f64,
    pub max_ul: f64,
}

/// A labware item of the experiment: a name, its type and what it starts with.
#[derive(Debug, Clone)]
pub struct LabwareDecl {
    pub name: Named,
    pub load_name: Named,
    pub contents: Vec<Contents>,
    /// Known to start empty even where the protocol leaves unlisted wells unknown (an
    /// Autoprotocol `new` container): a well an instruction fills holds exactly that.
    pub starts_empty: bool,
    /// The plate map: what each well is in the experiment.
    pub map: Vec<MapEntry>,
    /// A container the lab holds (`container: PL-0001`): its type and contents come from the
    /// lab's inventory ([`crate::held`]).
    pub container: Option<Named>,
    /// What becomes of it after the run (`store:`, `discard:`); `None`: new labware is
    /// discarded, a container goes back where it was.
    pub after: Option<After>,
}

/// What becomes of a labware after its run.
#[derive(Debug, Clone, PartialEq)]
pub enum After {
    /// Kept in the lab's storage at this condition (one of [`crate::shape::CONDITIONS`]).
    Store(String),
    Discard,
}

/// One entry of a plate map: wells and their sample, group, role and concentrations.
#[derive(Debug, Clone)]
pub struct MapEntry {
    pub selection: String,
    pub sample: Option<String>,
    pub group: Option<String>,
    pub role: crate::design::Role,
    pub concentration: crate::design::Concentration,
    pub span: Span,
}

/// Liquid in wells at the start.
#[derive(Debug, Clone)]
pub struct Contents {
    pub selection: String,
    pub liquid: String,
    pub volume_ul: f64,
    pub span: Span,
}

/// One step, optionally named so constraints and `after` can refer to it.
#[derive(Debug, Clone)]
pub struct Step {
    pub id: Option<Named>,
    pub after: Vec<Named>,
    pub span: Span,
    pub op: Op,
    /// Where each parameter of the operation was written, so an error can point at the value
    /// (the wavelength no reader covers) rather than at the whole step.
    pub fields: Vec<(String, Span)>,
}

impl Step {
    /// The span of the first of these parameters that was written, else the step's.
    pub fn field_span(&self, names: &[&str]) -> Span {
        names.iter().find_map(|n| self.fields.iter().find(|f| f.0 == *n).map(|f| f.1)).unwrap_or(self.span)
    }
}

/// When a pipetting step takes a fresh tip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TipPolicy {
    /// A new tip for every aspirate-dispense cycle.
    Always,
    /// A new tip whenever the source well changes.
    PerSource,
    /// One tip for the whole step.
    Once,
}

/// Mixing by repeated aspirate/dispense.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixSpec {
    pub times: u32,
    pub volume_ul: f64,
}

/// The three liquid-moving patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    /// Pairs of wells, one aspirate and one dispense per pair.
    Transfer,
    /// One source, many destinations: one aspirate feeds several dispenses.
    Distribute,
    /// Many sources, one destination: several aspirates, one dispense.
    Consolidate,
}

/// Volumes of a transfer: one for all pairs, or one per pair.
#[derive(Debug, Clone, PartialEq)]
pub enum Volumes {
    Same(f64),
    PerPair(Vec<f64>),
}

/// Moving liquid between wells.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub kind: TransferKind,
    pub from: WellRef,
    pub to: WellRef,
    pub volumes: Volumes,
    pub volume_span: Span,
    pub tips: TipPolicy,
    pub mix_before: Option<MixSpec>,
    pub mix_after: Option<MixSpec>,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Op {
    Transfer(Transfer),
    SerialDilution {
        series: Vec<WellRef>,
        volume_ul: f64,
        mix: Option<MixSpec>,
        tips: TipPolicy,
        /// With a dilution factor: the diluent and the volume of it put first into every well of
        /// each series but the first.
        diluent: Option<(WellRef, f64)>,
    },
    Mix {
        wells: WellRef,
        mix: MixSpec,
        tips: TipPolicy,
    },
    /// Reagent supplied by the lab (Autoprotocol provision/dispense), added by the liquid handler.
    AddReagent {
        reagent: String,
        to: Vec<(WellRef, f64)>,
    },
    Incubate {
        labware: Named,
        /// `None`: at ambient temperature (nothing heats or cools).
        temperature_c: Option<f64>,
        duration_s: f64,
        shake_rpm: Option<f64>,
        /// CO₂ in the atmosphere, % (cell culture: 5).
        co2_percent: Option<f64>,
    },
    Shake {
        labware: Named,
        rpm: f64,
        duration_s: f64,
        temperature_c: Option<f64>,
    },
    Seal {
        labware: Named,
    },
    Unseal {
        labware: Named,
    },
    Cover {
        labware: Named,
    },
    Uncover {
        labware: Named,
    },
    ReadAbsorbance {
        labware: Named,
        wells: Option<WellRef>,
        wavelengths_nm: Vec<f64>,
    },
    ReadFluorescence {
        labware: Named,
        wells: Option<WellRef>,
        excitation_nm: f64,
        emission_nm: f64,
    },
    ReadLuminescence {
        labware: Named,
        wells: Option<WellRef>,
    },
    Centrifuge {
        labware: Named,
        g: f64,
        duration_s: f64,
    },
    /// Temperatures held in turn on a thermocycler (a PCR profile, cycles unrolled):
    /// (°C, seconds held once there).
    Thermocycle {
        labware: Named,
        stages: Vec<(f64, f64)>,
    },
    Wait {
        duration_s: f64,
    },
    Manual {
        instruction: String,
        labware: Vec<Named>,
        duration_s: f64,
    },
    /// Low-level pipetting, as Opentrons protocols spell it.
    Pipetting(Vec<LowLevel>),
    /// Heater-shaker module commands from an Opentrons protocol, on the labware it holds.
    HeaterShaker {
        labware: Option<Named>,
        commands: Vec<ModuleCommand>,
    },
}

/// One Opentrons-style pipetting command.
#[derive(Debug, Clone)]
pub enum LowLevel {
    PickUpTip { pipette: String, rack: WellRef },
    Aspirate { pipette: String, at: WellRef, volume_ul: f64 },
    Dispense { pipette: String, at: WellRef, volume_ul: f64 },
    BlowOut { pipette: String, at: WellRef },
    MoveTo { pipette: String, at: Option<WellRef> },
    DropTip { pipette: String },
    Home,
    MoveLabware { labware: Named, to: String },
}

/// A heater-shaker command.
#[derive(Debug, Clone, PartialEq)]
pub enum ModuleCommand {
    SetTemperature(f64),
    WaitForTemperature,
    SetShakeSpeed(f64),
    StopShaking,
    StopHeating,
    Latch { open: bool },
}

/// "Start `to` at least `min_s` and at most `max_s` seconds after `from` ends" (either bound
/// may be absent, not both).
#[derive(Debug, Clone)]
pub struct LagConstraint {
    pub from: Named,
    pub to: Named,
    pub min_s: Option<f64>,
    pub max_s: Option<f64>,
    pub span: Span,
}
