//! Liquid-handler driver for Opentrons robots (OT-2, Flex) over the robot's HTTP API, the way
//! fleets and cloud labs drive them: the robot's own server owns its motion controller.
//!
//! Each liquid-handler task is one protocol-less run: [`Instrument::prepare`] closes this
//! driver's previous run, creates a new one (the robot allows one active run and refuses a new
//! one while another client's run is under way: that is [`InstrumentError::Busy`]), posts the
//! definitions of labware the robot does not carry, applies the lab's labware offsets, loads the
//! pipettes by mount and the plan's deck, and plays the run. Each plan command is then posted
//! as live commands (`waitUntilComplete`), each with a key of ours: when a reply is lost, the
//! run's command list says whether the robot carried it out, so nothing is sent twice blindly.

use super::opentrons_link::{RobotLink, Session};
use super::{spawn, Cancel};
use crate::codec::opentrons::{self as api, Intent, Loaded, Robot, RunStatus};
use crate::deck::Deck;
use crate::error::InstrumentError;
use crate::instrument::{unsafe_state, Execution, Identity, Instrument, Outcome, State, Status, Whereabouts};
use labware::site::{LabwareOffset, Pipette};
use labware::Library;
use protocols::plan::{CommandOp, RunPlan};
use serde_json::{json, Value};
use std::sync::Arc;

pub use super::opentrons_link::OpentronsConfig;

#[derive(Debug)]
struct Inner {
    link: Arc<RobotLink>,
    pipettes: Vec<Pipette>,
    offsets: Vec<LabwareOffset>,
    library: Library,
    slots: u32,
    cancel: Cancel,
}

/// One Opentrons robot's pipettes.
#[derive(Debug, Clone)]
pub struct OpentronsDriver {
    inner: Arc<Inner>,
}

impl OpentronsDriver {
    /// A driver for the robot at `address` (`host:port`), with a link of its own.
    pub fn new(
        instrument: &labware::site::Instrument,
        address: &str,
        library: Library,
        config: OpentronsConfig,
    ) -> Self {
        Self::on_link(instrument, Arc::new(RobotLink::new(&instrument.id, address, config)), library)
    }

    /// A driver for the robot behind `link` (shared with the drivers of its modules).
    pub fn on_link(instrument: &labware::site::Instrument, link: Arc<RobotLink>, library: Library) -> Self {
        OpentronsDriver {
            inner: Arc::new(Inner {
                link,
                pipettes: instrument.pipettes.clone(),
                offsets: instrument.labware_offsets.clone(),
                library,
                slots: instrument.deck_slots.unwrap_or(11),
                cancel: Cancel::default(),
            }),
        }
    }

    /// The run this driver has on the robot now, if any (tests and the console).
    pub async fn run_id(&self) -> Option<String> {
        self.inner.link.session.lock().await.run.clone()
    }
}

impl Inner {
    /// Sets up a new run for `plan`'s deck and plays it.
    async fn open_run(&self, session: &mut Session, plan: &RunPlan) -> Result<(), InstrumentError> {
        let link = &self.link;
        let robot = link.robot(session).await?;
        let deck = Deck::for_plan(plan, &self.library, self.slots)
            .map_err(|m| InstrumentError::Validation { parameter: "labware".into(), message: m })?;
        let run_id = link.create_run(session).await?;
        let mut loaded = Loaded::default();
        for p in &self.pipettes {
            let Some(mount) = p.mount else {
                return Err(InstrumentError::Validation {
                    parameter: "mount".into(),
                    message: format!("pipette {} of {} names no mount; say left or right in lab.toml", p.name, link.id),
                });
            };
            let cmd = api::Command {
                command_type: "loadPipette",
                params: json!({"pipetteName": p.name, "mount": mount.as_str()}),
            };
            let result = link.command(session, &run_id, &cmd, Intent::Setup, &self.cancel).await?;
            let pid = result.get("pipetteId").and_then(Value::as_str).unwrap_or_default().to_string();
            session.channels.insert(pid.clone(), p.channels.max(1));
            loaded.pipettes.insert(p.name.clone(), pid);
        }
        for item in &deck.items {
            let uri = match labware::opentrons::uri_of(&item.def) {
                Some(uri) => uri,
                None => {
                    let def = labware::opentrons::export(&item.def, labware::opentrons::CUSTOM_NAMESPACE);
                    let path = format!("/runs/{run_id}/labware_definitions");
                    link.call("POST", &path, Some(&json!({"data": def})), "posting a labware definition").await?;
                    labware::opentrons::DefinitionUri {
                        namespace: labware::opentrons::CUSTOM_NAMESPACE.into(),
                        load_name: item.def.load_name.clone(),
                        version: 1,
                    }
                }
            };
            let slot = robot.slot_name(item.slot);
            for o in
                self.offsets.iter().filter(|o| o.labware == item.def.load_name && o.slot.is_none_or(|s| s == item.slot))
            {
                let body = json!({"data": {"definitionUri": uri.to_string(), "location": {"slotName": slot},
                                           "vector": {"x": o.x, "y": o.y, "z": o.z}}});
                link.call("POST", &format!("/runs/{run_id}/labware_offsets"), Some(&body), "applying a labware offset")
                    .await?;
            }
            let cmd = api::Command {
                command_type: "loadLabware",
                params: json!({"location": {"slotName": slot}, "loadName": uri.load_name, "namespace": uri.namespace,
                               "version": uri.version, "displayName": item.name}),
            };
            let result = link.command(session, &run_id, &cmd, Intent::Setup, &self.cancel).await?;
            let lid = result.get("labwareId").and_then(Value::as_str).unwrap_or_default().to_string();
            loaded.labware.insert(item.name.clone(), lid);
        }
        session.loaded = loaded;
        link.play(&run_id).await?;
        tracing::debug!(instrument = %link.id, run = %run_id, labware = deck.items.len(), "Opentrons run ready");
        Ok(())
    }

    fn flow_rates(&self) -> api::FlowRates {
        self.pipettes.iter().map(|p| (p.name.clone(), p.flow_ul_per_s)).collect()
    }
}

#[async_trait::async_trait]
impl Instrument for OpentronsDriver {
    async fn identify(&self) -> Result<Identity, InstrumentError> {
        let health = self.inner.link.call("GET", "/health", None, "health").await?;
        let field = |k: &str| health.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let model = field("robot_model");
        let robot = Robot::from_model(&model)?;
        self.inner.link.session.lock().await.robot = Some(robot);
        Ok(Identity {
            model,
            serial: field("robot_serial"),
            firmware: format!("robot software {} firmware {}", field("api_version"), field("fw_version")),
        })
    }

    async fn prepare(&self, plan: &RunPlan) -> Result<(), InstrumentError> {
        let mut session = self.inner.link.session.lock().await;
        self.inner.open_run(&mut session, plan).await
    }

    async fn start(&self, op: &CommandOp) -> Result<Execution, InstrumentError> {
        let inner = self.inner.clone();
        inner.cancel.reset();
        let (run, commands) = {
            let session = inner.link.session.lock().await;
            let robot = session.robot.unwrap_or(Robot::Ot2);
            let commands = api::lower(op, &session.loaded, &inner.flow_rates(), robot)?;
            let run = session.run.clone().ok_or_else(|| InstrumentError::Validation {
                parameter: "run".into(),
                message: format!("{} has no run on the robot; prepare the task's deck first", inner.link.id),
            })?;
            (run, commands)
        };
        Ok(spawn(move |tx| async move {
            let mut session = inner.link.session.lock().await;
            let n = commands.len();
            for (i, cmd) in commands.iter().enumerate() {
                inner.cancel.check()?;
                match inner.link.command(&mut session, &run, cmd, Intent::Protocol, &inner.cancel).await {
                    Ok(_) => tx.progress((i + 1) as f64 / n as f64, cmd.command_type),
                    // A later robot command of the same plan command never arrived: the earlier
                    // ones did, so the plan command as a whole must not simply be sent again.
                    Err(InstrumentError::Disconnected(m)) if i > 0 => {
                        return Err(InstrumentError::Protocol(format!(
                            "{m}, after {i} of {n} robot commands of this step had run"
                        )))
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(Outcome::default())
        }))
    }

    async fn status(&self) -> Result<Status, InstrumentError> {
        let link = &self.inner.link;
        link.call("GET", "/health", None, "health").await?;
        let run = link.session.try_lock().ok().and_then(|s| s.run.clone());
        let busy = link.session.try_lock().is_err();
        let (state, detail) = match run {
            None => (if busy { State::Busy } else { State::Idle }, "no run of ours on the robot".to_string()),
            Some(run) => match link.run_status(&run).await? {
                RunStatus::AwaitingRecovery => (
                    State::Fault("the robot holds our run in error recovery".into()),
                    format!("run {run} awaiting-recovery"),
                ),
                RunStatus::BlockedByOpenDoor => (State::Fault("the robot's door is open".into()), format!("run {run}")),
                s => (if busy { State::Busy } else { State::Idle }, format!("run {run} {}", s.as_str())),
            },
        };
        Ok(Status { state, temperature_c: None, detail })
    }

    /// Stops the robot's run at once (the robot halts its motion and fails the command under
    /// way), besides ending this driver's wait for it.
    async fn abort(&self) -> Result<(), InstrumentError> {
        self.inner.cancel.fire();
        self.inner.link.stop_current().await
    }

    /// Which pipettes carry a tip by the robot's own record of this driver's run, and the
    /// run's status.
    async fn whereabouts(&self) -> Result<Whereabouts, InstrumentError> {
        let link = &self.inner.link;
        let session = link.session.lock().await;
        let Some(run) = session.run.clone() else {
            return Ok(Whereabouts { text: "no run of ours on the robot".into(), tips_on: None });
        };
        let status = link.run_status(&run).await?;
        let tips = link.tips(&run).await?;
        let on: u32 =
            tips.iter().filter(|(_, on)| **on).map(|(p, _)| session.channels.get(p).copied().unwrap_or(1)).sum();
        Ok(Whereabouts {
            text: format!("run {run} {}; {on} channel(s) carrying a tip", status.as_str()),
            tips_on: Some(on),
        })
    }

    /// Drops any tip our run left on a pipette into the trash (as a fix-it command while the run
    /// waits in error recovery), stops and closes the run.
    async fn make_safe(&self) -> Result<String, InstrumentError> {
        let link = &self.inner.link;
        let mut session = link.session.lock().await;
        let Some(run) = session.run.clone() else { return Ok("no run of ours on the robot".into()) };
        let robot = link.robot(&mut session).await?;
        let status = link.run_status(&run).await?;
        let tipped: Vec<String> = link.tips(&run).await?.into_iter().filter(|(_, on)| *on).map(|(p, _)| p).collect();
        let mut did = Vec::new();
        if !tipped.is_empty() {
            let intent = match status {
                RunStatus::AwaitingRecovery => Intent::Fixit,
                RunStatus::Running => Intent::Protocol,
                RunStatus::Idle | RunStatus::Paused => Intent::Setup,
                s => {
                    return Err(unsafe_state(&format!(
                        "our run is {} with a tip on {} pipette(s); remove it with the Opentrons App's drop-tip wizard",
                        s.as_str(),
                        tipped.len()
                    )))
                }
            };
            for pid in &tipped {
                for cmd in api::drop_tip(pid, robot) {
                    link.command(&mut session, &run, &cmd, intent, &self.inner.cancel).await?;
                }
            }
            did.push(format!("dropped {} tip(s) in the trash", tipped.len()));
        }
        link.close_run(&mut session).await?;
        did.push(format!("closed run {run}"));
        Ok(did.join(", "))
    }
}
