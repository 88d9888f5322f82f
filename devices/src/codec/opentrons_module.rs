//! Opentrons modules (heater-shaker, thermocycler, temperature module) as the robot's protocol
//! commands: a plan command becomes `heaterShaker/…`, `thermocycler/…` or `temperatureModule/…`
//! commands on the module's id in the run,
//! and timed holds (shake for 10 min) that the driver keeps itself, because a hold posted to the
//! robot would block its one command queue for the liquid handling beside it. Pure.
//!
//! The robot's protocol engine knows a heater-shaker's labware latch only from commands of the
//! same run, and refuses to shake or stop shaking until it has seen it closed: every shaking
//! sequence closes the latch first (closing a closed latch is harmless).

use super::opentrons::Command;
use crate::error::InstrumentError;
use protocols::plan::CommandOp;
use serde_json::json;

/// A kind of module the driver can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    HeaterShaker,
    Thermocycler,
    /// A temperature module: in a site, an incubator plugged into a robot (it holds a plate at a
    /// temperature; it cannot shake).
    TemperatureModule,
}

impl ModuleKind {
    /// The module for a site class, if it has one.
    pub fn of(class: labware::InstrumentClass) -> Option<ModuleKind> {
        match class {
            labware::InstrumentClass::HeaterShaker => Some(ModuleKind::HeaterShaker),
            labware::InstrumentClass::Thermocycler => Some(ModuleKind::Thermocycler),
            labware::InstrumentClass::Incubator => Some(ModuleKind::TemperatureModule),
            _ => None,
        }
    }

    /// The protocol engine's model name, as `loadModule` takes it and `/modules` reports it.
    pub fn model(self) -> &'static str {
        match self {
            ModuleKind::HeaterShaker => "heaterShakerModuleV1",
            ModuleKind::Thermocycler => "thermocyclerModuleV2",
            ModuleKind::TemperatureModule => "temperatureModuleV2",
        }
    }

    /// The `moduleType` of `/modules`.
    pub fn module_type(self) -> &'static str {
        match self {
            ModuleKind::HeaterShaker => "heaterShakerModuleType",
            ModuleKind::Thermocycler => "thermocyclerModuleType",
            ModuleKind::TemperatureModule => "temperatureModuleType",
        }
    }

    pub fn from_model(model: &str) -> Option<ModuleKind> {
        [ModuleKind::HeaterShaker, ModuleKind::Thermocycler, ModuleKind::TemperatureModule]
            .into_iter()
            .find(|k| k.model() == model)
    }

    pub fn name(self) -> &'static str {
        match self {
            ModuleKind::HeaterShaker => "heater-shaker",
            ModuleKind::Thermocycler => "thermocycler",
            ModuleKind::TemperatureModule => "temperature module",
        }
    }

    /// Set points the engine accepts (°C): its validation ranges.
    pub fn temperature_range(self) -> (f64, f64) {
        match self {
            ModuleKind::HeaterShaker => (0.0, 95.0),
            ModuleKind::Thermocycler => (0.0, 99.0),
            ModuleKind::TemperatureModule => (-9.0, 99.0),
        }
    }

    /// Commands that leave the module neither moving nor heating.
    pub fn deactivate(self, module_id: &str) -> Vec<Command> {
        let m = json!({"moduleId": module_id});
        match self {
            ModuleKind::HeaterShaker => vec![
                Command::new("heaterShaker/closeLabwareLatch", m.clone()),
                Command::new("heaterShaker/deactivateShaker", m.clone()),
                Command::new("heaterShaker/deactivateHeater", m),
            ],
            ModuleKind::Thermocycler => vec![
                Command::new("thermocycler/deactivateBlock", m.clone()),
                Command::new("thermocycler/deactivateLid", m),
            ],
            ModuleKind::TemperatureModule => vec![Command::new("temperatureModule/deactivate", m)],
        }
    }
}

/// One step of a module's plan command. The commands between two holds go to the robot together,
/// in one run (the engine's knowledge of the latch and the target lives in the run).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Send(Command),
    /// Device seconds the driver waits with the module as the commands before left it.
    Hold {
        seconds: f64,
        what: String,
    },
}

fn range_error(parameter: &str, message: String) -> InstrumentError {
    InstrumentError::Validation { parameter: parameter.into(), message }
}

fn temperature(kind: ModuleKind, t: f64) -> Result<f64, InstrumentError> {
    let (lo, hi) = kind.temperature_range();
    if !(lo..=hi).contains(&t) {
        return Err(range_error("temperature_c", format!("{t} °C is outside the {} range {lo}–{hi} °C", kind.name())));
    }
    Ok(t)
}

fn speed(kind: ModuleKind, rpm: f64) -> Result<f64, InstrumentError> {
    if kind != ModuleKind::HeaterShaker {
        return Err(range_error("rpm", format!("a {} cannot shake", kind.name())));
    }
    if !(200.0..=3000.0).contains(&rpm) {
        return Err(range_error("rpm", format!("{rpm} rpm is outside the heater-shaker's 200–3000 rpm")));
    }
    Ok(rpm.round())
}

/// A plan command for the module with id `module_id` in the run, as robot commands and holds.
pub fn lower(op: &CommandOp, kind: ModuleKind, module_id: &str) -> Result<Vec<Step>, InstrumentError> {
    use CommandOp::*;
    use ModuleKind::*;
    let send = |t: &'static str, extra: serde_json::Value| {
        let mut params = json!({"moduleId": module_id});
        if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        Step::Send(Command::new(t, params))
    };
    let heat = |t: f64| -> Result<Vec<Step>, InstrumentError> {
        let c = temperature(kind, t)?;
        Ok(match kind {
            TemperatureModule => vec![
                send("temperatureModule/setTargetTemperature", json!({"celsius": c})),
                send("temperatureModule/waitForTemperature", json!({})),
            ],
            HeaterShaker => vec![
                send("heaterShaker/setTargetTemperature", json!({"celsius": c})),
                send("heaterShaker/waitForTemperature", json!({})),
            ],
            Thermocycler => vec![
                send("thermocycler/setTargetBlockTemperature", json!({"celsius": c})),
                send("thermocycler/waitForBlockTemperature", json!({})),
            ],
        })
    };
    let cool = || match kind {
        TemperatureModule => send("temperatureModule/deactivate", json!({})),
        HeaterShaker => send("heaterShaker/deactivateHeater", json!({})),
        Thermocycler => send("thermocycler/deactivateBlock", json!({})),
    };
    let latch = || send("heaterShaker/closeLabwareLatch", json!({}));
    Ok(match op {
        SetTemperature { temperature_c, .. } => {
            let c = temperature(kind, *temperature_c)?;
            vec![match kind {
                HeaterShaker => send("heaterShaker/setTargetTemperature", json!({"celsius": c})),
                Thermocycler => send("thermocycler/setTargetBlockTemperature", json!({"celsius": c})),
                TemperatureModule => send("temperatureModule/setTargetTemperature", json!({"celsius": c})),
            }]
        }
        WaitForTemperature { .. } => vec![match kind {
            HeaterShaker => send("heaterShaker/waitForTemperature", json!({})),
            Thermocycler => send("thermocycler/waitForBlockTemperature", json!({})),
            TemperatureModule => send("temperatureModule/waitForTemperature", json!({})),
        }],
        SetShakeSpeed { rpm, .. } => {
            let r = speed(kind, *rpm)?;
            vec![latch(), send("heaterShaker/setAndWaitForShakeSpeed", json!({"rpm": r}))]
        }
        StopShaking => {
            speed(kind, 200.0)?;
            vec![latch(), send("heaterShaker/deactivateShaker", json!({}))]
        }
        StopHeating => match kind {
            HeaterShaker | TemperatureModule => vec![cool()],
            Thermocycler => vec![cool(), send("thermocycler/deactivateLid", json!({}))],
        },
        Latch { open } => vec![match (kind, open) {
            (HeaterShaker, true) => send("heaterShaker/openLabwareLatch", json!({})),
            (HeaterShaker, false) => latch(),
            (Thermocycler, true) => send("thermocycler/openLid", json!({})),
            (Thermocycler, false) => send("thermocycler/closeLid", json!({})),
            (TemperatureModule, _) => {
                return Err(range_error("open", "a temperature module has no latch or lid".into()))
            }
        }],
        Shake { rpm, duration_s, temperature_c, .. } => {
            let r = speed(kind, *rpm)?;
            let mut out = vec![latch()];
            if let Some(t) = temperature_c {
                out.extend(heat(*t)?);
            }
            out.push(send("heaterShaker/setAndWaitForShakeSpeed", json!({"rpm": r})));
            out.push(Step::Hold { seconds: *duration_s, what: format!("shaking at {r} rpm") });
            // The hold may outlast the run (a liquid-handling task starts its own): the new run
            // must see the latch closed before it may stop the shaker.
            out.push(latch());
            out.push(send("heaterShaker/deactivateShaker", json!({})));
            if temperature_c.is_some() {
                out.push(cool());
            }
            out
        }
        Incubate { co2_percent: Some(c), .. } => {
            return Err(range_error("co2_percent", format!("a {} keeps no CO₂ atmosphere ({c} % asked)", kind.name())))
        }
        Incubate { temperature_c, duration_s, shake_rpm, .. } => {
            let mut out = Vec::new();
            match kind {
                HeaterShaker => out.push(latch()),
                Thermocycler => out.push(send("thermocycler/closeLid", json!({}))),
                TemperatureModule => {}
            }
            if let Some(t) = temperature_c {
                out.extend(heat(*t)?);
            }
            if let Some(rpm) = shake_rpm {
                out.push(send("heaterShaker/setAndWaitForShakeSpeed", json!({"rpm": speed(kind, *rpm)?})));
            }
            let what = temperature_c.map_or("at ambient temperature".to_string(), |t| format!("holding {t} °C"));
            out.push(Step::Hold { seconds: *duration_s, what });
            if shake_rpm.is_some() {
                out.push(latch());
                out.push(send("heaterShaker/deactivateShaker", json!({})));
            }
            if temperature_c.is_some() {
                out.push(cool());
            }
            out
        }
        other => return Err(crate::instrument::unsupported(kind.name(), other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Send(c) => c.command_type.to_string(),
                Step::Hold { seconds, .. } => format!("hold {seconds}"),
            })
            .collect()
    }

    #[test]
    fn a_heated_shake_latches_heats_shakes_holds_and_stops_in_that_order() {
        let op = CommandOp::Shake { labware: "plate".into(), rpm: 800.0, duration_s: 600.0, temperature_c: Some(37.0) };
        let steps = lower(&op, ModuleKind::HeaterShaker, "mod-1").unwrap();
        assert_eq!(
            types(&steps),
            [
                "heaterShaker/closeLabwareLatch",
                "heaterShaker/setTargetTemperature",
                "heaterShaker/waitForTemperature",
                "heaterShaker/setAndWaitForShakeSpeed",
                "hold 600",
                "heaterShaker/closeLabwareLatch",
                "heaterShaker/deactivateShaker",
                "heaterShaker/deactivateHeater",
            ]
        );
        let Step::Send(c) = &steps[3] else { panic!() };
        assert_eq!(c.params, json!({"moduleId": "mod-1", "rpm": 800.0}));
    }

    #[test]
    fn settings_outside_the_module_are_refused_before_anything_is_sent() {
        let hot = CommandOp::SetTemperature { labware: None, temperature_c: 120.0 };
        let e = lower(&hot, ModuleKind::HeaterShaker, "m").unwrap_err();
        assert!(e.to_string().contains("0–95"), "{e}");
        let spin = CommandOp::SetShakeSpeed { labware: None, rpm: 500.0 };
        assert!(lower(&spin, ModuleKind::Thermocycler, "m").unwrap_err().to_string().contains("cannot shake"));
        let fast = CommandOp::SetShakeSpeed { labware: None, rpm: 5000.0 };
        assert!(lower(&fast, ModuleKind::HeaterShaker, "m").is_err());
    }

    #[test]
    fn a_thermocycler_opens_its_lid_for_latch_open_and_stops_block_and_lid() {
        let open = lower(&CommandOp::Latch { open: true }, ModuleKind::Thermocycler, "tc").unwrap();
        assert_eq!(types(&open), ["thermocycler/openLid"]);
        let stop = lower(&CommandOp::StopHeating, ModuleKind::Thermocycler, "tc").unwrap();
        assert_eq!(types(&stop), ["thermocycler/deactivateBlock", "thermocycler/deactivateLid"]);
    }
}
