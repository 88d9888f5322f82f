//! The modules plugged into a simulated Opentrons robot (heater-shaker, thermocycler): what
//! `/modules` lists, and their commands in a run with the protocol engine's rules.
//!
//! As on the robot, a module's physical state (temperature, speed, latch, lid) outlives runs,
//! while what the engine knows of it lives in the run: a module is loaded into each run before
//! its commands, the heater-shaker's latch must be closed in the run before it shakes or stops
//! shaking, and a wait needs a target set in the run.

use super::opentrons::{refuse, Refusal};
use crate::codec::opentrons::Robot;
use crate::codec::opentrons_module::ModuleKind;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Room temperature, where an idle module rests (°C).
const AMBIENT_C: f64 = 23.0;

/// A module plugged into the robot.
#[derive(Debug, Clone, PartialEq)]
pub struct SimModule {
    pub kind: ModuleKind,
    /// Deck slot, Labwright's numbering.
    pub slot: u32,
    pub serial: String,
}

impl SimModule {
    /// The modules of `site` plugged into robot `robot_id`.
    pub fn of_site(site: &labware::Site, robot_id: &str) -> Vec<SimModule> {
        site.instruments
            .iter()
            .filter(|i| i.robot.as_deref() == Some(robot_id))
            .filter_map(|i| {
                Some(SimModule { kind: ModuleKind::of(i.class)?, slot: i.slot?, serial: format!("{}-sim", i.id) })
            })
            .collect()
    }

    /// Degrees per second the module heats or cools.
    fn rate(&self) -> f64 {
        match self.kind {
            ModuleKind::HeaterShaker => 0.5,
            ModuleKind::Thermocycler => 2.0,
            ModuleKind::TemperatureModule => 0.3,
        }
    }
}

/// What a module physically does now.
#[derive(Debug, Clone, PartialEq)]
pub struct Physical {
    pub temperature_c: f64,
    pub target_c: Option<f64>,
    pub rpm: f64,
    pub latch_open: bool,
    pub lid_open: bool,
}

impl Default for Physical {
    fn default() -> Self {
        Physical { temperature_c: AMBIENT_C, target_c: None, rpm: 0.0, latch_open: false, lid_open: true }
    }
}

/// What one run's engine knows of its modules.
#[derive(Debug, Default)]
pub struct InRun {
    /// Loaded module ids → serial.
    pub loaded: BTreeMap<String, String>,
    latched: BTreeSet<String>,
    targeted: BTreeSet<String>,
}

/// `/modules`: every attached module with its live data.
pub fn list(modules: &[SimModule], physical: &BTreeMap<String, Physical>, robot: Robot) -> Value {
    let data: Vec<Value> = modules
        .iter()
        .map(|m| {
            let p = physical.get(&m.serial).cloned().unwrap_or_default();
            let status = if p.target_c.is_some() || p.rpm > 0.0 { "heating" } else { "idle" };
            let data = match m.kind {
                ModuleKind::HeaterShaker => json!({
                    "status": status, "labwareLatchStatus": if p.latch_open { "idle_open" } else { "idle_closed" },
                    "speedStatus": if p.rpm > 0.0 { "holding at target" } else { "idle" },
                    "currentSpeed": p.rpm, "targetSpeed": if p.rpm > 0.0 { json!(p.rpm) } else { Value::Null },
                    "temperatureStatus": if p.target_c.is_some() { "holding at target" } else { "idle" },
                    "currentTemperature": p.temperature_c, "targetTemperature": p.target_c, "errorDetails": null,
                }),
                ModuleKind::TemperatureModule => json!({
                    "status": status, "currentTemperature": p.temperature_c, "targetTemperature": p.target_c,
                }),
                ModuleKind::Thermocycler => json!({
                    "status": status, "lidStatus": if p.lid_open { "open" } else { "closed" },
                    "lidTemperature": AMBIENT_C, "lidTargetTemperature": null, "lidTemperatureStatus": "idle",
                    "currentTemperature": p.temperature_c, "targetTemperature": p.target_c,
                    "holdTime": null, "rampRate": null, "currentCycleIndex": null, "totalCycleCount": null,
                    "currentStepIndex": null, "totalStepCount": null,
                }),
            };
            json!({
                "id": m.serial, "serialNumber": m.serial, "firmwareVersion": "sim-1.0", "hardwareRevision": "sim",
                "hasAvailableUpdate": false, "moduleType": m.kind.module_type(), "moduleModel": m.kind.model(),
                "moduleOffset": {"slot": robot.slot_name(m.slot)}, "usbPort": {"port": 1}, "data": data,
            })
        })
        .collect();
    json!({"data": data, "meta": {"cursor": 0, "totalLength": data.len()}})
}

/// Whether a command type is a module's.
pub fn is_module_command(kind: &str) -> bool {
    kind == "loadModule"
        || kind.starts_with("heaterShaker/")
        || kind.starts_with("thermocycler/")
        || kind.starts_with("temperatureModule/")
}

/// Carries out a module command: its result and device seconds.
pub(crate) fn execute(
    modules: &[SimModule],
    physical: &mut BTreeMap<String, Physical>,
    run: &mut InRun,
    robot: Robot,
    kind: &str,
    p: &Value,
) -> Result<(Value, f64), Refusal> {
    if kind == "loadModule" {
        let model = p.get("model").and_then(Value::as_str).unwrap_or("");
        let slot = p.pointer("/location/slotName").and_then(Value::as_str).unwrap_or("");
        let Some(m) = modules.iter().find(|m| m.kind.model() == model && robot.slot_name(m.slot) == slot) else {
            return Err(refuse(
                "ModuleNotAttachedError",
                format!("no {model} is attached in slot {slot:?} of this robot"),
            ));
        };
        if run.loaded.values().any(|s| s == &m.serial) {
            return Err(refuse("LocationIsOccupiedError", format!("slot {slot} already holds a loaded module")));
        }
        let id = format!("module-{}", m.serial);
        run.loaded.insert(id.clone(), m.serial.clone());
        return Ok((json!({"moduleId": id, "model": model, "serialNumber": m.serial}), 0.0));
    }
    let id = p.get("moduleId").and_then(Value::as_str).unwrap_or("").to_string();
    let Some(serial) = run.loaded.get(&id).cloned() else {
        return Err(refuse("ModuleNotLoadedError", format!("module {id:?} is not loaded in this run")));
    };
    let Some(module) = modules.iter().find(|m| m.serial == serial).cloned() else {
        return Err(refuse("ModuleNotAttachedError", format!("module {serial} is no longer attached")));
    };
    let expects = if kind.starts_with("heaterShaker/") {
        ModuleKind::HeaterShaker
    } else if kind.starts_with("temperatureModule/") {
        ModuleKind::TemperatureModule
    } else {
        ModuleKind::Thermocycler
    };
    if module.kind != expects {
        return Err(refuse("WrongModuleTypeError", format!("{kind} is not a command of a {}", module.kind.name())));
    }
    let phys = physical.entry(serial).or_default();
    let celsius = || -> Result<f64, Refusal> {
        let c = p.get("celsius").and_then(Value::as_f64).unwrap_or(f64::NAN);
        let (lo, hi) = module.kind.temperature_range();
        if !(lo..=hi).contains(&c) {
            return Err(refuse(
                "InvalidTargetTemperatureError",
                format!("Cannot set {} to {c} °C. Valid range is {lo}–{hi} °C.", module.kind.name()),
            ));
        }
        Ok(c)
    };
    let latched = |run: &InRun| -> Result<(), Refusal> {
        if !run.latched.contains(&id) {
            return Err(refuse(
                "CannotPerformModuleAction",
                "Heater-Shaker cannot start or deactivate shaking if the labware latch has not been set to closed."
                    .into(),
            ));
        }
        Ok(())
    };
    let settle = |phys: &mut Physical, rate: f64| -> f64 {
        let Some(t) = phys.target_c else { return 0.0 };
        let secs = (t - phys.temperature_c).abs() / rate;
        phys.temperature_c = t;
        secs
    };
    let none = json!({});
    Ok(match kind {
        "heaterShaker/closeLabwareLatch" => {
            phys.latch_open = false;
            run.latched.insert(id);
            (none, 2.0)
        }
        "heaterShaker/openLabwareLatch" => {
            if phys.rpm > 0.0 {
                return Err(refuse(
                    "CannotPerformModuleAction",
                    "Heater-Shaker cannot open its latch while shaking".into(),
                ));
            }
            phys.latch_open = true;
            run.latched.remove(&id);
            (json!({"pipetteRetracted": false}), 2.0)
        }
        "heaterShaker/setTargetTemperature"
        | "thermocycler/setTargetBlockTemperature"
        | "temperatureModule/setTargetTemperature" => {
            // A temperature module sets whole degrees.
            let c = if module.kind == ModuleKind::TemperatureModule { celsius()?.round() } else { celsius()? };
            phys.target_c = Some(c);
            run.targeted.insert(id);
            match kind {
                "thermocycler/setTargetBlockTemperature" => (json!({"targetBlockTemperature": c}), 0.1),
                "temperatureModule/setTargetTemperature" => (json!({"targetTemperature": c}), 0.1),
                _ => (none, 0.1),
            }
        }
        "heaterShaker/waitForTemperature"
        | "thermocycler/waitForBlockTemperature"
        | "temperatureModule/waitForTemperature" => {
            if !run.targeted.contains(&id) || phys.target_c.is_none() {
                return Err(refuse(
                    "NoTargetTemperatureSetError",
                    format!("Module {id} does not have a target temperature set."),
                ));
            }
            let secs = settle(phys, module.rate());
            (none, secs)
        }
        "heaterShaker/setAndWaitForShakeSpeed" => {
            latched(run)?;
            let rpm = p.get("rpm").and_then(Value::as_f64).unwrap_or(f64::NAN);
            if !(200.0..=3000.0).contains(&rpm) {
                return Err(refuse(
                    "InvalidTargetSpeedError",
                    format!("Cannot set Heater-Shaker to shake at {rpm} rpm. Valid speed range is 200–3000 rpm."),
                ));
            }
            phys.rpm = rpm.round();
            (json!({"pipetteRetracted": false}), 3.0)
        }
        "heaterShaker/deactivateShaker" => {
            latched(run)?;
            phys.rpm = 0.0;
            (none, 3.0)
        }
        "heaterShaker/deactivateHeater" | "thermocycler/deactivateBlock" | "temperatureModule/deactivate" => {
            phys.target_c = None;
            phys.temperature_c = AMBIENT_C;
            run.targeted.remove(&id);
            (none, 0.1)
        }
        "thermocycler/deactivateLid" => (none, 0.1),
        "thermocycler/openLid" | "thermocycler/closeLid" => {
            phys.lid_open = kind == "thermocycler/openLid";
            (none, 20.0)
        }
        other => return Err(refuse("CommandDoesNotExistError", format!("this simulator does not carry out {other}"))),
    })
}
