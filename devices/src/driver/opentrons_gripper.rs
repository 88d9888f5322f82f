//! A Flex's gripper as one of the lab's arms: it moves plates between the robot's deck (the
//! liquid handler's nest) and the modules plugged into it, with the robot's `moveLabware`
//! (`usingGripper`) in the robot's current run of ours.
//!
//! The robot's engine knows a plate only when it is loaded in the run and moves it only from where
//! it believes it is. The gripper finds the plate in the run by its name (the liquid handler's
//! task loads the run's labware under their plan names); a plate the run has not loaded is loaded
//! where the executor says it is, and one the engine places elsewhere (the task's deck loaded it
//! in its slot while it stood on a module) is first set where it is with a bookkeeping move
//! (`manualMoveWithoutPause`, no motion). A heater-shaker's latch and a thermocycler's lid are
//! opened before the gripper reaches in, as the engine demands. On the robot's deck a plate
//! stands in the slot the robot's task deck gives it (the executor says which), or, passing
//! through to a module, in the robot's last labware slot.

use super::opentrons_link::{RobotLink, Session};
use super::{spawn, Cancel};
use crate::codec::opentrons::{Command, Intent};
use crate::codec::opentrons_module::ModuleKind;
use crate::error::InstrumentError;
use crate::instrument::{unsupported, Arm, Execution, Identity, Instrument, Outcome, State, Status};
use protocols::plan::CommandOp;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A module the gripper reaches.
#[derive(Debug, Clone)]
struct ModuleNest {
    instrument: String,
    nests: Vec<String>,
    kind: ModuleKind,
    slot: u32,
}

/// What the gripper knows of a plate.
#[derive(Debug, Clone, Default)]
struct Plate {
    nest: Option<String>,
    def: Option<labware::LabwareDef>,
    deck_slot: Option<u32>,
}

#[derive(Debug)]
struct Inner {
    id: String,
    robot_nests: Vec<String>,
    /// Where a plate the robot's task deck does not place (one passing through to a module)
    /// stands on the deck: the robot's last labware slot.
    transit_slot: u32,
    modules: Vec<ModuleNest>,
    link: Arc<RobotLink>,
    plates: std::sync::Mutex<BTreeMap<String, Plate>>,
    cancel: Cancel,
}

/// The gripper of one Flex.
#[derive(Debug, Clone)]
pub struct OpentronsGripperDriver {
    inner: Arc<Inner>,
}

/// Where a plate is in the engine's words.
enum Place {
    Slot(u32),
    Module { instrument: String, kind: ModuleKind, slot: u32 },
}

impl OpentronsGripperDriver {
    /// The gripper `arm` of the robot `robot` (an instrument of `site`) behind `link`.
    pub fn new(
        arm: &labware::site::Arm,
        site: &labware::Site,
        robot: &str,
        link: Arc<RobotLink>,
    ) -> Result<Self, InstrumentError> {
        let bad = |message: String| InstrumentError::Validation { parameter: "robot".into(), message };
        let lh = site
            .instruments
            .iter()
            .find(|i| i.id == robot)
            .ok_or_else(|| bad(format!("{}: robot {robot} is not an instrument of the site", arm.id)))?;
        let modules = site
            .instruments
            .iter()
            .filter(|i| i.robot.as_deref() == Some(robot))
            .filter_map(|i| {
                Some(ModuleNest {
                    instrument: i.id.clone(),
                    nests: i.nest_ids(),
                    kind: ModuleKind::of(i.class)?,
                    slot: i.slot?,
                })
            })
            .collect();
        Ok(OpentronsGripperDriver {
            inner: Arc::new(Inner {
                id: arm.id.clone(),
                robot_nests: lh.nest_ids(),
                transit_slot: lh.deck_slots.unwrap_or(11),
                modules,
                link,
                plates: std::sync::Mutex::new(BTreeMap::new()),
                cancel: Cancel::default(),
            }),
        })
    }
}

impl Inner {
    fn plate(&self, labware: &str) -> Plate {
        self.plates.lock().map(|p| p.get(labware).cloned().unwrap_or_default()).unwrap_or_default()
    }

    fn remember(&self, labware: &str, f: impl FnOnce(&mut Plate)) {
        if let Ok(mut p) = self.plates.lock() {
            f(p.entry(labware.to_string()).or_default());
        }
    }

    /// A nest as the engine's location kind.
    fn place(&self, labware: &str, nest: &str) -> Result<Place, InstrumentError> {
        if self.robot_nests.iter().any(|n| n == nest) {
            let slot = self.plate(labware).deck_slot.unwrap_or(self.transit_slot);
            return Ok(Place::Slot(slot));
        }
        match self.modules.iter().find(|m| m.nests.iter().any(|n| n == nest)) {
            Some(m) => Ok(Place::Module { instrument: m.instrument.clone(), kind: m.kind, slot: m.slot }),
            None => Err(InstrumentError::Validation {
                parameter: "to".into(),
                message: format!("`{nest}` is not on the robot {} reaches", self.id),
            }),
        }
    }

    /// The engine location of a place in `run`; a module is loaded into the run and opened
    /// (latch, lid) so the gripper can reach in.
    async fn location(&self, session: &mut Session, run: &str, place: &Place) -> Result<Value, InstrumentError> {
        let robot = self.link.robot(session).await?;
        match place {
            Place::Slot(slot) => Ok(json!({"slotName": robot.slot_name(*slot)})),
            Place::Module { instrument, kind, slot } => {
                let id = self.link.module_id(session, run, instrument, *kind, *slot, &self.cancel).await?;
                let open = match kind {
                    ModuleKind::HeaterShaker => Some("heaterShaker/openLabwareLatch"),
                    ModuleKind::Thermocycler => Some("thermocycler/openLid"),
                    ModuleKind::TemperatureModule => None,
                };
                if let Some(open) = open {
                    let cmd = Command::new(open, json!({"moduleId": id}));
                    self.link.command(session, run, &cmd, Intent::Protocol, &self.cancel).await?;
                }
                Ok(json!({"moduleId": id}))
            }
        }
    }

    /// The plate's labware id in the run, loaded (or set where it is) at `from` when the engine
    /// does not have it there; the way to `to` cleared in the engine's view.
    async fn labware_id(
        &self,
        session: &mut Session,
        run: &str,
        labware: &str,
        from: &Value,
        to: &Value,
    ) -> Result<String, InstrumentError> {
        let data = self.link.call("GET", &format!("/runs/{run}"), None, "reading the run").await?;
        let loaded: Vec<Value> = data.get("labware").and_then(Value::as_array).cloned().unwrap_or_default();
        // What an earlier task left in the engine's view where this plate is or goes was taken
        // away in the real world (a task's labware leaves with it): set it off the deck.
        for l in &loaded {
            let at = l.get("location");
            let other = l.get("displayName").and_then(Value::as_str) != Some(labware);
            if other && (at == Some(from) || at == Some(to)) {
                let id = labware_id_of(l)?;
                let away = Command::new(
                    "moveLabware",
                    json!({"labwareId": id, "newLocation": "offDeck", "strategy": "manualMoveWithoutPause"}),
                );
                self.link.command(session, run, &away, Intent::Protocol, &self.cancel).await?;
            }
        }
        let known = loaded.iter().find(|l| l.get("displayName").and_then(Value::as_str) == Some(labware)).cloned();
        if let Some(l) = known {
            let id = labware_id_of(&l)?.to_string();
            if l.get("location") != Some(from) {
                let set = Command::new(
                    "moveLabware",
                    json!({"labwareId": id, "newLocation": from, "strategy": "manualMoveWithoutPause"}),
                );
                self.link.command(session, run, &set, Intent::Protocol, &self.cancel).await?;
            }
            return Ok(id);
        }
        let def = self.plate(labware).def.ok_or_else(|| InstrumentError::Validation {
            parameter: "labware".into(),
            message: format!("{}: what labware `{labware}` is (its definition) is not known", self.id),
        })?;
        let def = &def;
        let uri = match labware::opentrons::uri_of(def) {
            Some(uri) => uri,
            None => {
                let body = labware::opentrons::export(def, labware::opentrons::CUSTOM_NAMESPACE);
                let path = format!("/runs/{run}/labware_definitions");
                self.link.call("POST", &path, Some(&json!({"data": body})), "posting a labware definition").await?;
                labware::opentrons::DefinitionUri {
                    namespace: labware::opentrons::CUSTOM_NAMESPACE.into(),
                    load_name: def.load_name.clone(),
                    version: 1,
                }
            }
        };
        let load = Command::new(
            "loadLabware",
            json!({"location": from, "loadName": uri.load_name, "namespace": uri.namespace, "version": uri.version,
                   "displayName": labware}),
        );
        let result = self.link.command(session, run, &load, Intent::Protocol, &self.cancel).await?;
        result.get("labwareId").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
            InstrumentError::Protocol(format!("{}: loadLabware answered without a labwareId: {result}", self.id))
        })
    }

    async fn transfer(&self, labware: &str, from: &str, to: &str) -> Result<(), InstrumentError> {
        let (from_place, to_place) = (self.place(labware, from)?, self.place(labware, to)?);
        let mut session = self.link.session.lock().await;
        let run = self.link.running_run(&mut session).await?;
        let from_loc = self.location(&mut session, &run, &from_place).await?;
        let to_loc = self.location(&mut session, &run, &to_place).await?;
        let id = self.labware_id(&mut session, &run, labware, &from_loc, &to_loc).await?;
        let grip =
            Command::new("moveLabware", json!({"labwareId": id, "newLocation": to_loc, "strategy": "usingGripper"}));
        self.link.command(&mut session, &run, &grip, Intent::Protocol, &self.cancel).await?;
        Ok(())
    }
}

/// The id of a labware entry of the robot's run; an entry without one is the robot's mistake.
fn labware_id_of(l: &Value) -> Result<&str, InstrumentError> {
    l.get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| InstrumentError::Protocol(format!("the robot lists a run labware without an id: {l}")))
}

impl Arm for OpentronsGripperDriver {
    fn locate(&self, labware: &str, location: &str) {
        self.inner.remember(labware, |p| p.nest = Some(location.to_string()));
    }

    fn carries(&self, labware: &str, def: &labware::LabwareDef, deck_slot: Option<u32>) {
        self.inner.remember(labware, |p| {
            p.def = Some(def.clone());
            p.deck_slot = deck_slot;
        });
    }
}

#[async_trait::async_trait]
impl Instrument for OpentronsGripperDriver {
    async fn identify(&self) -> Result<Identity, InstrumentError> {
        let health = self.inner.link.call("GET", "/health", None, "health").await?;
        let model = health.get("robot_model").and_then(Value::as_str).unwrap_or("");
        if model != "OT-3 Standard" {
            return Err(InstrumentError::Validation {
                parameter: "robot".into(),
                message: format!("{}: only a Flex has a gripper; the robot is {model:?}", self.inner.id),
            });
        }
        Ok(Identity { model: "Flex gripper".into(), serial: String::new(), firmware: String::new() })
    }

    async fn start(&self, op: &CommandOp) -> Result<Execution, InstrumentError> {
        let CommandOp::MoveLabware { labware, to } = op else { return Err(unsupported("a gripper", op)) };
        let inner = self.inner.clone();
        let from = inner.plate(labware).nest.ok_or_else(|| InstrumentError::Validation {
            parameter: "labware".into(),
            message: format!("the gripper does not know where `{labware}` is; locate it first"),
        })?;
        // Checked before anything moves.
        inner.place(labware, &from)?;
        inner.place(labware, to)?;
        inner.cancel.reset();
        let (labware, to) = (labware.clone(), to.clone());
        Ok(spawn(move |tx| async move {
            inner.transfer(&labware, &from, &to).await?;
            inner.remember(&labware, |p| p.nest = Some(to.clone()));
            tx.progress(1.0, "moved with the gripper");
            Ok(Outcome::default())
        }))
    }

    async fn status(&self) -> Result<Status, InstrumentError> {
        self.inner.link.call("GET", "/health", None, "health").await?;
        let busy = self.inner.link.session.try_lock().is_err();
        Ok(Status { state: if busy { State::Busy } else { State::Idle }, temperature_c: None, detail: String::new() })
    }

    /// The robot's stop halts the gripper with everything else on the robot.
    async fn abort(&self) -> Result<(), InstrumentError> {
        self.inner.cancel.fire();
        self.inner.link.stop_current().await
    }
}
