//! Opentrons JSON protocols (schemas 6, 7 and 8) into Labwright's experiment tree.
//!
//! The protocol's embedded labware definitions are imported with `labware::opentrons`; its
//! commands become low-level pipetting steps, heater-shaker module steps, waits and manual
//! pauses. Commands with no Labwright equivalent get a P0502 diagnostic naming the command type
//! and its index.

use crate::ast::*;
use crate::diag::{Diagnostic, Diagnostics};
use crate::source::Span;
use crate::syntax::{Node, Value};
use labware::Library;
use std::collections::BTreeMap;

/// Opentrons pipette models: (name, channels, min µL, max µL).
const PIPETTES: &[(&str, u32, f64, f64)] = &[
    ("p10_single", 1, 1.0, 10.0),
    ("p10_multi", 8, 1.0, 10.0),
    ("p20_single_gen2", 1, 1.0, 20.0),
    ("p20_multi_gen2", 8, 1.0, 20.0),
    ("p50_single", 1, 5.0, 50.0),
    ("p50_multi", 8, 5.0, 50.0),
    ("p300_single", 1, 30.0, 300.0),
    ("p300_multi", 8, 30.0, 300.0),
    ("p300_single_gen2", 1, 20.0, 300.0),
    ("p300_multi_gen2", 8, 20.0, 300.0),
    ("p1000_single", 1, 100.0, 1000.0),
    ("p1000_single_gen2", 1, 100.0, 1000.0),
    ("p50_single_flex", 1, 1.0, 50.0),
    ("p50_multi_flex", 8, 1.0, 50.0),
    ("p1000_single_flex", 1, 5.0, 1000.0),
    ("p1000_multi_flex", 8, 5.0, 1000.0),
    ("p200_96", 96, 1.0, 200.0),
    ("p1000_96", 96, 5.0, 1000.0),
];

struct Importer<'a> {
    /// Standard labware the protocol names but does not embed (Opentrons resolves those from its library).
    lib: &'a Library,
    protocol: Protocol,
    /// Definition id (`namespace/loadName/version`) → load name of the imported definition.
    defs: BTreeMap<String, String>,
    /// v6: labware id → definition id, from the top-level `labware` map.
    v6_labware: BTreeMap<String, String>,
    /// v6: pipette id → model name.
    v6_pipettes: BTreeMap<String, String>,
    /// Labware id → module id it sits on; module id → model.
    on_module: BTreeMap<String, String>,
    modules: BTreeMap<String, String>,
    liquids: BTreeMap<String, String>,
    pending: Vec<LowLevel>,
    pending_span: Option<Span>,
    /// Where each pipette last was, for the `…InPlace` commands of Opentrons' analyses.
    at: BTreeMap<String, WellRef>,
    /// A thermocycler's block target (°C) and whether a hold was given with it.
    block: Option<(f64, bool)>,
    /// Warnings said once: labware pipetted off its module, a lid temperature not carried.
    warned: std::collections::BTreeSet<String>,
}

/// Reads an Opentrons JSON protocol.
pub fn parse(root: &Node, lib: &Library, d: &mut Diagnostics) -> Protocol {
    let mut im = Importer {
        lib,
        protocol: Protocol::empty(
            root.get("metadata")
                .and_then(|m| m.get("protocolName"))
                .and_then(Node::as_str)
                .unwrap_or("opentrons protocol")
                .to_string(),
            UnlistedWells::Unknown,
            TipSource::Protocol,
        ),
        defs: BTreeMap::new(),
        v6_labware: BTreeMap::new(),
        v6_pipettes: BTreeMap::new(),
        on_module: BTreeMap::new(),
        modules: BTreeMap::new(),
        liquids: BTreeMap::new(),
        pending: Vec::new(),
        pending_span: None,
        at: BTreeMap::new(),
        block: None,
        warned: Default::default(),
    };
    let version = root.get("schemaVersion").and_then(Node::as_f64);
    match version {
        Some(v) if (6.0..=8.0).contains(&v) => {}
        Some(v) => {
            d.push(
                Diagnostic::error(
                    "P0100",
                    root.get("schemaVersion").map_or(root.span, |n| n.span),
                    format!("Opentrons protocol schema {v} is not supported"),
                )
                .with_hint("Labwright reads Opentrons JSON protocols of schemas 6, 7 and 8"),
            );
            return im.protocol;
        }
        None => {
            d.push(Diagnostic::error("P0102", root.span, "not an Opentrons protocol: `schemaVersion` is missing"));
            return im.protocol;
        }
    }
    if let Some(defs) = root.get("labwareDefinitions").and_then(Node::as_map) {
        for (k, v) in defs {
            match labware::opentrons::import_value(&v.to_json()) {
                Ok(def) => {
                    im.defs.insert(k.name.clone(), def.load_name.clone());
                    if !im.protocol.custom_labware.iter().any(|c| c.load_name == def.load_name) {
                        im.protocol.custom_labware.push(def);
                    }
                }
                Err(e) => d.push(Diagnostic::error(
                    "P0201",
                    k.span,
                    format!("labware definition `{}` cannot be read: {e}", k.name),
                )),
            }
        }
    }
    for (key, map) in [("labware", &mut im.v6_labware), ("pipettes", &mut im.v6_pipettes)] {
        if let Some(entries) = root.get(key).and_then(Node::as_map) {
            for (k, v) in entries {
                let field = if key == "labware" { "definitionId" } else { "name" };
                if let Some(s) = v.get(field).and_then(Node::as_str) {
                    map.insert(k.name.clone(), s.to_string());
                }
            }
        }
    }
    if let Some(entries) = root.get("modules").and_then(Node::as_map) {
        for (k, v) in entries {
            if let Some(m) = v.get("model").and_then(Node::as_str) {
                im.modules.insert(k.name.clone(), m.to_string());
            }
        }
    }
    if let Some(entries) = root.get("liquids").and_then(Node::as_map) {
        for (k, v) in entries {
            let name = v.get("displayName").and_then(Node::as_str).unwrap_or(&k.name).to_string();
            im.protocol.liquids.push(Named { name: name.clone(), span: k.span });
            im.liquids.insert(k.name.clone(), name);
        }
    }
    let Some(commands) = root.get("commands").and_then(Node::as_list) else {
        d.push(Diagnostic::error("P0102", root.span, "Opentrons protocol has no `commands` list"));
        return im.protocol;
    };
    for (i, c) in commands.iter().enumerate() {
        im.command(i, c, d);
    }
    im.flush();
    im.protocol
}

fn param<'a>(c: &'a Node, key: &str) -> Option<&'a Node> {
    c.get("params").and_then(|p| p.get(key))
}

/// A required string parameter of command `index`, reported when missing.
fn required(c: &Node, key: &str, index: usize, kind: &str, d: &mut Diagnostics) -> Option<String> {
    let v = param_str(c, key);
    if v.is_none() {
        d.push(Diagnostic::error("P0102", c.span, format!("command {index} (`{kind}`) is missing `params.{key}`")));
    }
    v
}

fn param_str(c: &Node, key: &str) -> Option<String> {
    param(c, key).and_then(Node::as_str).map(str::to_string)
}

impl Importer<'_> {
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let cmds = std::mem::take(&mut self.pending);
            let span = self.pending_span.take().unwrap_or_default();
            self.protocol.steps.push(Step {
                id: None,
                after: Vec::new(),
                span,
                op: Op::Pipetting(cmds),
                fields: Vec::new(),
            });
        }
    }

    fn pipetting(&mut self, cmd: LowLevel, span: Span) {
        self.pending_span = Some(self.pending_span.map_or(span, |s| s.join(span)));
        self.pending.push(cmd);
    }

    fn step(&mut self, op: Op, span: Span) {
        self.flush();
        self.protocol.steps.push(Step { id: None, after: Vec::new(), span, op, fields: Vec::new() });
    }

    fn declare(&mut self, id: &str, def_id: &str, span: Span, d: &mut Diagnostics) {
        if self.protocol.labware.iter().any(|l| l.name.name == id) {
            return;
        }
        let standard =
            def_id.strip_prefix("opentrons/").and_then(|r| r.split('/').next()).filter(|n| self.lib.get(n).is_some());
        let Some(load) = self.defs.get(def_id).cloned().or(standard.map(str::to_string)) else {
            d.push(
                Diagnostic::error(
                    "P0201",
                    span,
                    format!("labware `{id}` uses definition `{def_id}`, which the protocol does not include"),
                )
                .with_hint("export the protocol with its labware definitions"),
            );
            return;
        };
        self.protocol.labware.push(LabwareDecl {
            name: Named { name: id.to_string(), span },
            load_name: Named { name: load, span },
            contents: Vec::new(),
            starts_empty: false,
            map: Vec::new(),
            container: None,
            after: None,
        });
    }

    /// A well reference from `labwareId` + `wellName`; declares v6 labware on first use.
    fn well(&mut self, c: &Node, d: &mut Diagnostics) -> Option<WellRef> {
        let (Some(lw), Some(w)) = (param_str(c, "labwareId"), param_str(c, "wellName")) else {
            d.push(Diagnostic::error("P0102", c.span, "command needs `labwareId` and `wellName`"));
            return None;
        };
        if let Some(def_id) = self.v6_labware.get(&lw).cloned() {
            self.declare(&lw, &def_id, c.span, d);
        }
        let on_thermocycler = self
            .on_module
            .get(&lw)
            .and_then(|m| self.modules.get(m))
            .is_some_and(|model| model.starts_with("thermocycler"));
        if on_thermocycler && self.warned.insert(format!("pipetted {lw}")) {
            d.push(
                Diagnostic::warning(
                    "P0513",
                    c.span,
                    format!("`{lw}` sits on a thermocycler in this protocol; Labwright pipettes it on a liquid handler's deck, at room temperature, and thermocycles it on the site's thermocycler"),
                )
                .with_hint("if it must stay cold while it is filled, keep the liquids cold instead, or fill it quickly"),
            );
        }
        Some(WellRef { labware: lw, selection: w, span: c.span })
    }

    /// A thermocycler command: holds become a `thermocycle` step on the plate the module
    /// holds (consecutive ones, one step); the lid and switching off are the site
    /// thermocycler's own business.
    fn thermocycler(&mut self, index: usize, kind: &str, c: &Node, span: Span, d: &mut Diagnostics) {
        let Some(module) = required(c, "moduleId", index, kind, d) else { return };
        let Some(labware) =
            self.on_module.iter().find(|(_, m)| **m == module).map(|(l, _)| Named { name: l.clone(), span })
        else {
            d.push(Diagnostic::error(
                "P0502",
                span,
                format!("command {index} (`thermocycler/{kind}`): no plate is on that thermocycler"),
            ));
            return;
        };
        let mut stages = Vec::new();
        match kind {
            "setTargetBlockTemperature" => {
                let Some(celsius) = self.number(c, "celsius", d) else { return };
                let hold = match param(c, "holdTimeSeconds") {
                    Some(_) => match self.number(c, "holdTimeSeconds", d) {
                        Some(h) => Some(h),
                        None => return,
                    },
                    None => None,
                };
                if let Some(h) = hold {
                    stages.push((celsius, h));
                }
                self.block = Some((celsius, hold.is_some()));
            }
            "waitForBlockTemperature" => match self.block {
                Some((celsius, false)) => stages.push((celsius, 0.0)),
                _ => return,
            },
            "runProfile" | "runExtendedProfile" => {
                let Some(profile) = param(c, "profile").and_then(Node::as_list) else {
                    d.push(Diagnostic::error(
                        "P0102",
                        span,
                        format!("command {index} (`thermocycler/{kind}`) has no `params.profile` list"),
                    ));
                    return;
                };
                let hold = |n: &Node| {
                    let (c, h) = (n.get("celsius")?.as_f64()?, n.get("holdSeconds")?.as_f64()?);
                    (h >= 0.0).then_some((c, h))
                };
                for item in profile {
                    match (item.get("repetitions").and_then(Node::as_f64), item.get("steps").and_then(Node::as_list)) {
                        (Some(times), Some(steps)) => {
                            if !(0.0..=1000.0).contains(&times) || times.fract() != 0.0 {
                                d.push(Diagnostic::error(
                                    "P0103",
                                    item.span,
                                    "`repetitions` is a whole number from 0 to 1000",
                                ));
                                return;
                            }
                            let one: Vec<(f64, f64)> = steps.iter().filter_map(hold).collect();
                            if one.len() != steps.len() {
                                d.push(Diagnostic::error(
                                    "P0103",
                                    item.span,
                                    "each profile step needs `celsius` and a non-negative `holdSeconds`",
                                ));
                                return;
                            }
                            for _ in 0..times as usize {
                                stages.extend(one.iter().copied());
                            }
                        }
                        _ => match hold(item) {
                            Some(h) => stages.push(h),
                            None => {
                                d.push(Diagnostic::error(
                                    "P0103",
                                    item.span,
                                    "a profile step needs `celsius` and `holdSeconds`",
                                ));
                                return;
                            }
                        },
                    }
                }
            }
            "setTargetLidTemperature" | "waitForLidTemperature" => {
                if self.warned.insert("lid".into()) {
                    d.push(Diagnostic::warning(
                        "P0513",
                        span,
                        "the thermocycler's lid temperature is not carried: the site's thermocycler runs its lid as it is set up",
                    ));
                }
                return;
            }
            "openLid" | "closeLid" | "deactivateBlock" | "deactivateLid" => return,
            other => {
                d.push(Diagnostic::error(
                    "P0502",
                    span,
                    format!("command {index} (`thermocycler/{other}`) is not supported"),
                ));
                return;
            }
        }
        if stages.is_empty() {
            return;
        }
        self.flush();
        if let Some(Step { op: Op::Thermocycle { labware: l, stages: have }, span: s, .. }) =
            self.protocol.steps.last_mut()
        {
            if l.name == labware.name {
                have.extend(stages);
                *s = s.join(span);
                return;
            }
        }
        self.step(Op::Thermocycle { labware, stages }, span);
    }

    /// The well a pipette is at, for a command that acts where the pipette is.
    fn in_place(&self, pipette: &str, index: usize, kind: &str, c: &Node, d: &mut Diagnostics) -> Option<WellRef> {
        let at = self.at.get(pipette).cloned();
        if at.is_none() {
            d.push(
                Diagnostic::error(
                    "P0502",
                    c.span,
                    format!("command {index} (`{kind}`) acts where the pipette is, which is not a well"),
                )
                .with_hint("aspirate, dispense and blow out in a named well"),
            );
        }
        at.map(|w| WellRef { span: c.span, ..w })
    }

    fn number(&self, c: &Node, key: &str, d: &mut Diagnostics) -> Option<f64> {
        match param(c, key).map(|n| &n.value) {
            Some(Value::Number(v)) if v.is_finite() && *v >= 0.0 => Some(*v),
            _ => {
                d.push(Diagnostic::error("P0103", c.span, format!("`params.{key}` must be a non-negative number")));
                None
            }
        }
    }

    fn command(&mut self, index: usize, c: &Node, d: &mut Diagnostics) {
        let Some(kind) = c.get("commandType").and_then(Node::as_str) else {
            d.push(Diagnostic::error("P0102", c.span, format!("command {index} has no `commandType`")));
            return;
        };
        let span = c.span;
        let pipette = param_str(c, "pipetteId").unwrap_or_default();
        match kind {
            "loadPipette" => {
                let name = param_str(c, "pipetteName").or_else(|| self.v6_pipettes.get(&pipette).cloned());
                let Some(name) = name else {
                    d.push(Diagnostic::error(
                        "P0102",
                        span,
                        format!("command {index} (loadPipette) does not name the pipette model"),
                    ));
                    return;
                };
                match PIPETTES.iter().find(|p| p.0 == name) {
                    Some(&(_, channels, min_ul, max_ul)) => {
                        self.protocol.pipettes.push(PipetteDecl { id: pipette, name, channels, min_ul, max_ul });
                    }
                    None => d.push(Diagnostic::error(
                        "P0502",
                        span,
                        format!("command {index}: pipette model `{name}` is not known"),
                    )),
                }
            }
            "loadLabware" => {
                let Some(id) = param_str(c, "labwareId") else {
                    d.push(Diagnostic::error("P0102", span, format!("command {index} (loadLabware) has no labwareId")));
                    return;
                };
                let def_id = match (
                    param_str(c, "namespace"),
                    param_str(c, "loadName"),
                    param(c, "version").and_then(Node::as_f64),
                ) {
                    (Some(ns), Some(ln), Some(v)) => Some(format!("{ns}/{ln}/{v}")),
                    _ => self.v6_labware.get(&id).cloned(),
                };
                match def_id {
                    Some(def_id) => self.declare(&id, &def_id, span, d),
                    None => d.push(Diagnostic::error(
                        "P0102",
                        span,
                        format!("command {index} (loadLabware) does not say which definition `{id}` uses"),
                    )),
                }
                if let Some(m) = param(c, "location").and_then(|l| l.get("moduleId")).and_then(Node::as_str) {
                    self.on_module.insert(id, m.to_string());
                }
            }
            "loadModule" => {
                if let (Some(id), Some(model)) = (param_str(c, "moduleId"), param_str(c, "model")) {
                    self.modules.insert(id, model);
                }
            }
            "loadLiquid" => {
                let (Some(lw), Some(liquid)) =
                    (required(c, "labwareId", index, kind, d), required(c, "liquidId", index, kind, d))
                else {
                    return;
                };
                let liquid = self.liquids.get(&liquid).cloned().unwrap_or(liquid);
                if let Some(def_id) = self.v6_labware.get(&lw).cloned() {
                    self.declare(&lw, &def_id, span, d);
                }
                let Some(decl) = self.protocol.labware.iter_mut().find(|l| l.name.name == lw) else {
                    d.push(Diagnostic::error(
                        "P0202",
                        span,
                        format!("command {index}: loadLiquid into `{lw}`, which is not loaded"),
                    ));
                    return;
                };
                let Some(volumes) = param(c, "volumeByWell").and_then(Node::as_map) else {
                    d.push(Diagnostic::error(
                        "P0102",
                        span,
                        format!("command {index} (`{kind}`) needs `params.volumeByWell`, a map of well: µL"),
                    ));
                    return;
                };
                for (well, v) in volumes {
                    match v.as_f64() {
                        Some(vol) if vol.is_finite() && vol >= 0.0 => decl.contents.push(Contents {
                            selection: well.name.clone(),
                            liquid: liquid.clone(),
                            volume_ul: vol,
                            span: v.span,
                        }),
                        _ => d.push(Diagnostic::error(
                            "P0103",
                            v.span,
                            "volumeByWell values must be non-negative numbers",
                        )),
                    }
                }
            }
            "home" => self.pipetting(LowLevel::Home, span),
            "pickUpTip" => {
                if let Some(rack) = self.well(c, d) {
                    self.pipetting(LowLevel::PickUpTip { pipette, rack }, span);
                }
            }
            "aspirate" | "dispense" | "aspirateInPlace" | "dispenseInPlace" => {
                let at = if kind.ends_with("InPlace") {
                    self.in_place(&pipette, index, kind, c, d)
                } else {
                    self.well(c, d)
                };
                let (Some(at), Some(volume_ul)) = (at, self.number(c, "volume", d)) else { return };
                self.at.insert(pipette.clone(), at.clone());
                let cmd = if kind.starts_with("aspirate") {
                    LowLevel::Aspirate { pipette, at, volume_ul }
                } else {
                    LowLevel::Dispense { pipette, at, volume_ul }
                };
                self.pipetting(cmd, span);
            }
            "blowout" | "blowOutInPlace" => {
                let at =
                    if kind == "blowOutInPlace" { self.in_place(&pipette, index, kind, c, d) } else { self.well(c, d) };
                if let Some(at) = at {
                    self.at.insert(pipette.clone(), at.clone());
                    self.pipetting(LowLevel::BlowOut { pipette, at }, span);
                }
            }
            "touchTip" | "moveToWell" => {
                if let Some(at) = self.well(c, d) {
                    self.at.insert(pipette.clone(), at.clone());
                    self.pipetting(LowLevel::MoveTo { pipette, at: Some(at) }, span);
                }
            }
            "moveToCoordinates" | "moveRelative" | "savePosition" | "moveToAddressableArea" => {
                self.at.remove(&pipette);
                self.pipetting(LowLevel::MoveTo { pipette, at: None }, span)
            }
            // Where Opentrons' analysis goes before dropping a tip in the trash: the drop that
            // follows goes there by itself. Comments, a pipette's volume mode and the plunger's
            // preparation move no liquid.
            "moveToAddressableAreaForDropTip" | "comment" | "configureForVolume" | "prepareToAspirate" => {
                self.at.remove(&pipette);
            }
            "dropTip" | "dropTipInPlace" => {
                self.at.remove(&pipette);
                // The trash is a labware too; declare it so the plan shows where tips go.
                if let Some(lw) = param_str(c, "labwareId") {
                    if let Some(def_id) = self.v6_labware.get(&lw).cloned() {
                        self.declare(&lw, &def_id, span, d);
                    }
                }
                self.pipetting(LowLevel::DropTip { pipette }, span);
            }
            "delay" | "waitForDuration" | "waitForResume" => {
                let pause =
                    kind == "waitForResume" || param(c, "waitForResume").is_some_and(|n| n.value == Value::Bool(true));
                if pause {
                    let msg = param_str(c, "message").unwrap_or_else(|| "resume the protocol".into());
                    self.step(Op::Manual { instruction: msg, labware: Vec::new(), duration_s: 60.0 }, span);
                } else if let Some(s) = self.number(c, "seconds", d) {
                    self.step(Op::Wait { duration_s: s }, span);
                }
            }
            "moveLabware" => {
                let Some(lw) = required(c, "labwareId", index, kind, d) else { return };
                let to = param(c, "newLocation").and_then(|n| match &n.value {
                    Value::String(s) => Some(s.clone()),
                    _ => n
                        .get("slotName")
                        .or_else(|| n.get("moduleId"))
                        .or_else(|| n.get("labwareId"))
                        .and_then(Node::as_str)
                        .map(str::to_string),
                });
                let Some(to) = to else {
                    d.push(
                        Diagnostic::error(
                            "P0102",
                            span,
                            format!(
                                "command {index} (`{kind}`) does not say where to: `params.newLocation` is missing"
                            ),
                        )
                        .with_hint("give `newLocation` as a slot name, module id, labware id or \"offDeck\""),
                    );
                    return;
                };
                self.pipetting(LowLevel::MoveLabware { labware: Named { name: lw, span }, to }, span);
            }
            k if k.starts_with("thermocycler/") => {
                let kind = k["thermocycler/".len()..].to_string();
                self.thermocycler(index, &kind, c, span, d)
            }
            k if k.starts_with("heaterShaker/") => {
                let Some(module) = required(c, "moduleId", index, kind, d) else { return };
                let labware =
                    self.on_module.iter().find(|(_, m)| **m == module).map(|(l, _)| Named { name: l.clone(), span });
                let cmd = match &k["heaterShaker/".len()..] {
                    "setTargetTemperature" => self.number(c, "celsius", d).map(ModuleCommand::SetTemperature),
                    "waitForTemperature" => Some(ModuleCommand::WaitForTemperature),
                    "setAndWaitForShakeSpeed" | "setShakeSpeed" => {
                        self.number(c, "rpm", d).map(ModuleCommand::SetShakeSpeed)
                    }
                    "deactivateShaker" => Some(ModuleCommand::StopShaking),
                    "deactivateHeater" => Some(ModuleCommand::StopHeating),
                    "openLabwareLatch" => Some(ModuleCommand::Latch { open: true }),
                    "closeLabwareLatch" => Some(ModuleCommand::Latch { open: false }),
                    _ => {
                        d.push(Diagnostic::error("P0502", span, format!("command {index} (`{k}`) is not supported")));
                        None
                    }
                };
                if let Some(cmd) = cmd {
                    // Consecutive module commands on one module form one step.
                    self.flush();
                    if let Some(Step { op: Op::HeaterShaker { labware: l, commands }, span: s, .. }) =
                        self.protocol.steps.last_mut()
                    {
                        if l.as_ref().map(|x| &x.name) == labware.as_ref().map(|x| &x.name) {
                            commands.push(cmd);
                            *s = s.join(span);
                            return;
                        }
                    }
                    self.step(Op::HeaterShaker { labware, commands: vec![cmd] }, span);
                }
            }
            other => {
                let module = other.split('/').next().filter(|_| other.contains('/'));
                let hint = match module {
                    Some(m @ "temperatureModule") => format!("an Opentrons protocol's `{m}` commands are not imported yet: write the thermal steps as Labwright `incubate` steps, which the site's temperature modules run"),
                    Some(m) => format!("`{m}` modules are not part of a Labwright site; use the site's instruments (incubate, shake, …) in a Labwright protocol"),
                    None => "remove the command, or rewrite this part in Labwright's language".to_string(),
                };
                d.push(
                    Diagnostic::error(
                        "P0502",
                        c.get("commandType").map_or(span, |n| n.span),
                        format!("command {index} (`{other}`) is not supported"),
                    )
                    .with_hint(hint),
                );
            }
        }
    }
}
