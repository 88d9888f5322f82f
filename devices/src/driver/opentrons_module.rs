//! A module plugged into an Opentrons robot (heater-shaker, thermocycler), driven through the
//! robot's HTTP API: the module is loaded into the robot's current run of ours (or a run it
//! starts when there is none) and its plan commands are posted as the robot's module commands
//! ([`crate::codec::opentrons_module`]). Timed holds are kept here, not on the robot, so the
//! pipetting beside the module goes on meanwhile.

use super::opentrons_link::{RobotLink, Session};
use super::{spawn, Cancel};
use crate::codec::opentrons::{Command, Intent};
use crate::codec::opentrons_module::{self as modapi, ModuleKind, Step};
use crate::error::InstrumentError;
use crate::instrument::{unsafe_state, Execution, Identity, Instrument, Outcome, State, Status, TimeScale};
use protocols::plan::CommandOp;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Debug)]
struct Inner {
    id: String,
    kind: ModuleKind,
    slot: u32,
    link: Arc<RobotLink>,
    scale: TimeScale,
    cancel: Cancel,
    /// The set point this driver last gave the module: the robot's engine forgets it with the
    /// run, so a wait in a later run sets it again first.
    target: std::sync::Mutex<Option<f64>>,
}

/// One module on an Opentrons robot.
#[derive(Debug, Clone)]
pub struct OpentronsModuleDriver {
    inner: Arc<Inner>,
}

impl OpentronsModuleDriver {
    /// The module `instrument` (its class says which kind, its `slot` where it sits) on the
    /// robot behind `link`.
    pub fn new(
        instrument: &labware::site::Instrument,
        link: Arc<RobotLink>,
        scale: TimeScale,
    ) -> Result<Self, InstrumentError> {
        let bad = |message: String| InstrumentError::Validation { parameter: "module".into(), message };
        let kind = ModuleKind::of(instrument.class)
            .ok_or_else(|| bad(format!("{} is a {}, not a robot's module", instrument.id, instrument.class)))?;
        let slot = instrument.slot.ok_or_else(|| bad(format!("{} names no slot on its robot", instrument.id)))?;
        Ok(OpentronsModuleDriver {
            inner: Arc::new(Inner {
                id: instrument.id.clone(),
                kind,
                slot,
                link,
                scale,
                cancel: Cancel::default(),
                target: std::sync::Mutex::new(None),
            }),
        })
    }
}

impl Inner {
    /// The run to post to and the module's id in it, loading the module when the run is new.
    async fn module_in_run(&self, session: &mut Session) -> Result<(String, String), InstrumentError> {
        let run = self.link.running_run(session).await?;
        let module_id = self.link.module_id(session, &run, &self.id, self.kind, self.slot, &self.cancel).await?;
        Ok((run, module_id))
    }

    /// Posts commands made for the module's id, in order, holding the robot only while they go.
    async fn send(
        &self,
        commands: impl FnOnce(&str) -> Vec<Command>,
        cancel: &Cancel,
    ) -> Result<Vec<Value>, InstrumentError> {
        let mut session = self.link.session.lock().await;
        let (run, module_id) = self.module_in_run(&mut session).await?;
        let mut out = Vec::new();
        for c in commands(&module_id) {
            match self.link.command(&mut session, &run, &c, Intent::Protocol, cancel).await {
                Ok(v) => out.push(v),
                // The commands before it ran: the batch as a whole must not simply be resent.
                Err(InstrumentError::Disconnected(m)) if !out.is_empty() => {
                    return Err(InstrumentError::Protocol(format!("{m}, after {} robot commands had run", out.len())))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Queues commands made for the module's id, in order, without waiting for them to run.
    async fn queue(&self, commands: impl FnOnce(&str) -> Vec<Command>) -> Result<(), InstrumentError> {
        let mut session = self.link.session.lock().await;
        let (run, module_id) = self.module_in_run(&mut session).await?;
        for c in commands(&module_id) {
            self.link.enqueue(&mut session, &run, &c, Intent::Protocol).await?;
        }
        Ok(())
    }

    /// What `/modules` says of this module: the attached module of our model in our slot.
    async fn attached(&self) -> Result<Value, InstrumentError> {
        let list = self.link.call("GET", "/modules", None, "listing modules").await?;
        let robot = {
            let mut session = self.link.session.lock().await;
            self.link.robot(&mut session).await?
        };
        let slot = robot.slot_name(self.slot);
        let ours = list.as_array().into_iter().flatten().find(|m| {
            m.get("moduleModel").and_then(Value::as_str) == Some(self.kind.model())
                && m.pointer("/moduleOffset/slot")
                    .or_else(|| m.pointer("/usbPort/slot"))
                    .and_then(Value::as_str)
                    .is_none_or(|s| s == slot)
        });
        ours.cloned().ok_or_else(|| {
            InstrumentError::Disconnected(format!(
                "{}: the robot reports no {} ({}) in slot {slot}; check its USB cable and power",
                self.id,
                self.kind.name(),
                self.kind.model()
            ))
        })
    }

    /// Keeps the set point a command gave or took away.
    fn remember(&self, command_type: &str, params: &Value) {
        let mut target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if command_type.contains("setTarget") {
            *target = params.get("celsius").and_then(Value::as_f64);
        } else if command_type.ends_with("deactivateHeater") || command_type.ends_with("deactivateBlock") {
            *target = None;
        }
    }

    /// Stops shaking and heating: waits until the module has (`wait`), or only until the robot
    /// has the commands queued (an emergency stop).
    async fn deactivate(&self, wait: bool) -> Result<(), InstrumentError> {
        // A stop of the robot's run can land between loading the module and deactivating it
        // (an emergency stop reaches the pipettes' driver at the same time): try in a new run.
        let quiet = Cancel::default();
        let mut last = None;
        for _ in 0..3 {
            let kind = self.kind;
            let done = if wait {
                self.send(|m| kind.deactivate(m), &quiet).await.map(|_| ())
            } else {
                self.queue(|m| kind.deactivate(m)).await
            };
            match done {
                Ok(_) => {
                    *self.target.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| InstrumentError::Protocol("deactivation failed".into())))
    }
}

#[async_trait::async_trait]
impl Instrument for OpentronsModuleDriver {
    async fn identify(&self) -> Result<Identity, InstrumentError> {
        let m = self.inner.attached().await?;
        let field = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Ok(Identity { model: field("moduleModel"), serial: field("serialNumber"), firmware: field("firmwareVersion") })
    }

    async fn start(&self, op: &CommandOp) -> Result<Execution, InstrumentError> {
        let inner = self.inner.clone();
        // Checked before anything is sent; the module's id goes in when it is known.
        let mut steps = modapi::lower(op, inner.kind, "")?;
        let remembered = *inner.target.lock().unwrap_or_else(|p| p.into_inner());
        if let (CommandOp::WaitForTemperature { .. }, Some(t)) = (op, remembered) {
            let set = CommandOp::SetTemperature { labware: None, temperature_c: t };
            steps.splice(0..0, modapi::lower(&set, inner.kind, "")?);
        }
        inner.cancel.reset();
        Ok(spawn(move |tx| async move {
            let n = steps.len();
            let mut batch: Vec<Command> = Vec::new();
            let mut sent_before = 0;
            let mut steps = steps.into_iter().enumerate().peekable();
            while let Some((i, step)) = steps.next() {
                inner.cancel.check()?;
                match step {
                    Step::Send(c) => {
                        batch.push(c);
                        // Consecutive commands go together, in one run.
                        if matches!(steps.peek(), Some((_, Step::Send(_)))) {
                            continue;
                        }
                        let commands = std::mem::take(&mut batch);
                        let what = commands.last().map_or("", |c| c.command_type);
                        let kept = commands.clone();
                        let sent = inner.send(
                            |m| {
                                commands
                                    .into_iter()
                                    .map(|mut c| {
                                        c.params["moduleId"] = json!(m);
                                        c
                                    })
                                    .collect()
                            },
                            &inner.cancel,
                        );
                        match sent.await {
                            Ok(_) => kept.iter().for_each(|c| inner.remember(c.command_type, &c.params)),
                            Err(InstrumentError::Disconnected(m)) if sent_before > 0 => {
                                return Err(InstrumentError::Protocol(format!(
                                    "{m}, after {sent_before} of {n} robot commands of this step had run"
                                )))
                            }
                            Err(e) => return Err(e),
                        }
                        sent_before = i + 1;
                        tx.progress((i + 1) as f64 / n as f64, what);
                    }
                    Step::Hold { seconds, what } => {
                        let total = inner.scale.wall(seconds);
                        let slices = 20u32;
                        for k in 0..slices {
                            tx.progress((i as f64 + k as f64 / slices as f64) / n as f64, what.as_str());
                            inner.cancel.sleep(total / slices).await?;
                        }
                    }
                }
            }
            Ok(Outcome::default())
        }))
    }

    async fn status(&self) -> Result<Status, InstrumentError> {
        let m = self.inner.attached().await?;
        let data = m.get("data").cloned().unwrap_or(Value::Null);
        let number = |k: &str| data.get(k).and_then(Value::as_f64);
        let temperature = number("currentTemperature");
        let detail = match self.inner.kind {
            ModuleKind::HeaterShaker => format!(
                "shaking {} rpm, latch {}",
                number("currentSpeed").unwrap_or(0.0),
                data.get("labwareLatchStatus").and_then(Value::as_str).unwrap_or("unknown")
            ),
            ModuleKind::Thermocycler => format!(
                "block {} °C, lid {}",
                temperature.map_or("?".into(), |t| format!("{t:.1}")),
                data.get("lidStatus").and_then(Value::as_str).unwrap_or("unknown")
            ),
            ModuleKind::TemperatureModule => format!(
                "{} °C, target {}",
                temperature.map_or("?".into(), |t| format!("{t:.1}")),
                number("targetTemperature").map_or("none".into(), |t| format!("{t:.0} °C"))
            ),
        };
        let busy = self.inner.link.session.try_lock().is_err();
        Ok(Status { state: if busy { State::Busy } else { State::Idle }, temperature_c: temperature, detail })
    }

    /// Stops shaking and heating through the robot, then checks `/modules` that it holds no
    /// speed or set point.
    async fn make_safe(&self) -> Result<String, InstrumentError> {
        self.inner.deactivate(true).await?;
        let m = self.inner.attached().await?;
        let data = m.get("data").cloned().unwrap_or(Value::Null);
        if data.get("currentSpeed").and_then(Value::as_f64).is_some_and(|s| s > 0.0) {
            return Err(unsafe_state("the shaker still turns after stopping it"));
        }
        if let Some(t) = data.get("targetTemperature").and_then(Value::as_f64) {
            return Err(unsafe_state(&format!("it still holds a {t:.1} °C set point after deactivating")));
        }
        Ok("stopped shaking and heating".into())
    }

    /// Ends the hold or wait under way and has the robot stop shaking and heating (queued at
    /// once; the module slows down and cools on its own time).
    async fn abort(&self) -> Result<(), InstrumentError> {
        self.inner.cancel.fire();
        self.inner.deactivate(false).await
    }
}
