//! Autoprotocol JSON (`{"refs": {...}, "instructions": [...]}`) into Labwright's experiment tree.
//!
//! Containers: Autoprotocol container types map to shipped labware with the well volume the
//! Autoprotocol container type states (so a 175 µL transfer into a `96-pcr` well is over its
//! 160 µL, as a remote lab would say). Wells are `ref/index` (row-major, from 0) or `ref/A1`.
//! Instructions Labwright cannot run (sequencing, gel purification, flow cytometry, …) get a
//! P0501 diagnostic naming the `op` and its index.

use crate::ast::*;
use crate::diag::{Diagnostic, Diagnostics};
use crate::read::{list_field, quantity, str_field, string};
use crate::source::Span;
use crate::syntax::{Node, Value};
use crate::units::Dim;
use labware::{LabwareDef, Library};
use std::collections::BTreeMap;

/// Autoprotocol container type → (shipped load name, well volume in µL stated by Autoprotocol).
const CONTAINER_TYPES: &[(&str, &str, f64)] = &[
    ("96-flat", "corning_96_wellplate_360ul_flat", 340.0),
    ("96-flat-uv", "corning_96_wellplate_360ul_flat", 340.0),
    ("96-flat-tc", "corning_96_wellplate_360ul_flat", 340.0),
    ("96-pcr", "biorad_96_wellplate_200ul_pcr", 160.0),
    ("96-deep", "nest_96_wellplate_2ml_deep", 2000.0),
    ("384-flat", "corning_384_wellplate_112ul_flat", 112.0),
    ("384-pcr", "biorad_384_wellplate_50ul", 50.0),
    ("6-flat", "corning_6_wellplate_16.8ml_flat", 15000.0),
    ("res-sw96-hp", "nest_1_reservoir_195ml", 170_000.0),
    ("res-mw8-hp", "nest_8_reservoir_22ml", 22_000.0),
    ("res-mw12-hp", "nest_12_reservoir_15ml", 15_000.0),
    ("micro-1.5", "opentrons_24_tuberack_eppendorf_1.5ml_safelock_snapcap", 1500.0),
    ("micro-2.0", "opentrons_24_tuberack_nest_2ml_screwcap", 2000.0),
];

/// Instructions with no Labwright equivalent; reported by name.
const UNSUPPORTED: &[&str] = &[
    "flow_analyze",
    "illumina_sequence",
    "sanger_sequence",
    "gel_purify",
    "gel_separate",
    "magnetic_transfer",
    "measure_concentration",
    "measure_mass",
    "measure_volume",
    "oligosynthesize",
    "acoustic_transfer",
    "image_plate",
    "image",
    "autopick",
    "spread",
    "thermocycle",
    "agitate",
    "evaporate",
    "flash_freeze",
    "sonicate",
    "count_cells",
];

struct Importer<'a> {
    lib: &'a Library,
    /// Ref name → its definition (with Autoprotocol's well volumes).
    refs: BTreeMap<String, LabwareDef>,
    /// Fragments (bare instruction lists) name containers they never declare.
    implicit_refs: bool,
    protocol: Protocol,
}

/// Reads an Autoprotocol document (or a bare list of instructions).
pub fn parse(root: &Node, lib: &Library, d: &mut Diagnostics) -> Protocol {
    let mut im = Importer {
        lib,
        refs: BTreeMap::new(),
        implicit_refs: false,
        protocol: Protocol::empty("autoprotocol", UnlistedWells::Unknown, TipSource::Lab),
    };
    let instructions = match &root.value {
        Value::List(_) => {
            im.implicit_refs = true;
            root
        }
        Value::Map(_) => {
            match root.get("refs") {
                Some(refs) => im.refs(refs, d),
                None => d.push(Diagnostic::error("P0102", root.span, "Autoprotocol document has no `refs`")),
            }
            match root.get("instructions") {
                Some(i) => i,
                None => {
                    d.push(
                        Diagnostic::error(
                            "P0102",
                            root.span,
                            "not an Autoprotocol protocol: `instructions` is missing",
                        )
                        .with_hint("an Autoprotocol file is {\"refs\": {...}, \"instructions\": [...]}"),
                    );
                    return im.protocol;
                }
            }
        }
        _ => {
            d.push(Diagnostic::error(
                "P0103",
                root.span,
                "an Autoprotocol file must be an object or a list of instructions",
            ));
            return im.protocol;
        }
    };
    let Some(list) = instructions.as_list() else {
        d.push(Diagnostic::error("P0103", instructions.span, "`instructions` must be a list"));
        return im.protocol;
    };
    let constrained = root.get("time_constraints").map(|tc| im.constrained(tc)).unwrap_or_default();
    for (i, ins) in list.iter().enumerate() {
        let id = constrained.contains(&i).then(|| Named { name: format!("instruction[{i}]"), span: ins.span });
        im.instruction(i, ins, id, d);
    }
    if let Some(tc) = root.get("time_constraints") {
        im.time_constraints(tc, d);
    }
    im.protocol
}

impl Importer<'_> {
    fn refs(&mut self, node: &Node, d: &mut Diagnostics) {
        let Some(entries) = node.as_map() else {
            d.push(Diagnostic::error("P0103", node.span, "`refs` must be an object of name: {new|id, store|discard}"));
            return;
        };
        for (k, v) in entries {
            let ty = v.get("new").and_then(Node::as_str).or_else(|| v.get("container_type").and_then(Node::as_str));
            let span = v.get("new").map_or(k.span, |n| n.span);
            let ty = match ty {
                Some(t) => t.to_string(),
                None => {
                    d.push(
                        Diagnostic::warning(
                            "P0510",
                            k.span,
                            format!("ref `{}` names an existing container of unstated type; assuming 96-flat", k.name),
                        )
                        .with_hint("give `new: <container type>` so the wells can be checked"),
                    );
                    "96-flat".to_string()
                }
            };
            // A `new` container comes empty from the lab's stock; an existing one (`id`)
            // holds what earlier runs left, which the protocol does not say.
            let after = after_run(v, &k.name, d);
            self.declare(&k.name, k.span, &ty, span, v.get("new").is_some(), d);
            if let Some(decl) = self.protocol.labware.iter_mut().find(|l| l.name.name == k.name) {
                decl.after = after;
            }
        }
    }

    fn declare(&mut self, name: &str, name_span: Span, ty: &str, ty_span: Span, new: bool, d: &mut Diagnostics) {
        let Some(&(_, load, volume)) = CONTAINER_TYPES.iter().find(|(t, _, _)| *t == ty) else {
            let known: Vec<&str> = CONTAINER_TYPES.iter().map(|c| c.0).collect();
            d.push(
                Diagnostic::error("P0201", ty_span, format!("unknown Autoprotocol container type `{ty}`"))
                    .with_hint(format!("known types: {}", known.join(", "))),
            );
            return;
        };
        let Some(base) = self.lib.get(load) else { return };
        let mut def = base.clone();
        let tube = ty.starts_with("micro-");
        if tube {
            // An Autoprotocol tube is a one-well container.
            def.wells.truncate(1);
        }
        for w in &mut def.wells {
            w.max_volume_ul = volume;
        }
        def.load_name = format!("autoprotocol:{ty}");
        def.display_name = format!("Autoprotocol {ty} ({})", base.display_name);
        let Ok(def) = def.validated() else { return };
        self.protocol.labware.push(LabwareDecl {
            name: Named { name: name.to_string(), span: name_span },
            load_name: Named { name: def.load_name.clone(), span: ty_span },
            contents: Vec::new(),
            starts_empty: new,
            map: Vec::new(),
            container: None,
            after: None,
        });
        if !self.protocol.custom_labware.iter().any(|c| c.load_name == def.load_name) {
            self.protocol.custom_labware.push(def.clone());
        }
        self.refs.insert(name.to_string(), def);
    }

    /// `ref/3` or `ref/A1` → a well reference.
    fn well(&mut self, node: &Node, d: &mut Diagnostics) -> Option<WellRef> {
        let s = string(node, "a well", d)?;
        let Some((r, w)) = s.rsplit_once('/') else {
            d.push(
                Diagnostic::error("P0205", node.span, format!("`{s}` is not an Autoprotocol well"))
                    .with_hint("write `<ref>/<index>`, e.g. `plate/0`"),
            );
            return None;
        };
        if !self.refs.contains_key(r) && self.implicit_refs {
            d.push(Diagnostic::warning(
                "P0510",
                node.span,
                format!("container `{r}` is not declared (an instruction fragment); assuming 96-flat"),
            ));
            self.declare(r, node.span, "96-flat", node.span, false, d);
        }
        let Some(def) = self.refs.get(r) else {
            d.push(
                Diagnostic::error("P0202", node.span, format!("no ref named `{r}`"))
                    .with_hint("declare it under `refs`"),
            );
            return None;
        };
        let name = match w.parse::<usize>() {
            Ok(i) => match def.row_major_names().get(i) {
                Some(n) => n.to_string(),
                None => {
                    d.push(Diagnostic::error(
                        "P0203",
                        node.span,
                        format!(
                            "well index {i} does not exist: `{r}` has {} wells (0 to {})",
                            def.wells.len(),
                            def.wells.len().saturating_sub(1)
                        ),
                    ));
                    return None;
                }
            },
            Err(_) => w.to_string(),
        };
        Some(WellRef { labware: r.to_string(), selection: name, span: node.span })
    }

    fn object(&self, ins: &Node, d: &mut Diagnostics) -> Option<Named> {
        let n = ins.get("object").or_else(|| ins.get("container"));
        match n {
            Some(n) => string(n, "`object`", d).map(|name| Named { name, span: n.span }),
            None => {
                d.push(Diagnostic::error("P0102", ins.span, "instruction is missing `object`"));
                None
            }
        }
    }

    fn push(&mut self, op: Op, span: Span, id: &Option<Named>) {
        self.protocol.steps.push(Step { id: id.clone(), after: Vec::new(), span, op, fields: Vec::new() });
    }

    fn instruction(&mut self, index: usize, ins: &Node, id: Option<Named>, d: &mut Diagnostics) {
        let Some(op_node) = ins.get("op") else {
            d.push(Diagnostic::error("P0102", ins.span, format!("instruction {index} has no `op`")));
            return;
        };
        let Some(op) = string(op_node, "`op`", d) else { return };
        let span = ins.span;
        let vol = |n: &Node, d: &mut Diagnostics| quantity(n, Dim::Volume, "volume", (0.0, 1e7), d);
        let dur = |n: &Node, d: &mut Diagnostics| quantity(n, Dim::Duration, "duration", (0.0, 1e7), d);
        match op.as_str() {
            "pipette" => self.pipette(index, ins, &id, d),
            "liquid_handle" => self.liquid_handle(ins, &id, d),
            "provision" => {
                let Some(reagent) = str_field(ins, "resource_id", &format!("instruction {index} (`provision`)"), d)
                else {
                    return;
                };
                let mut to = Vec::new();
                if ins.get("measurement_mode").and_then(Node::as_str) == Some("mass") {
                    d.push(
                        Diagnostic::error(
                            "P0501",
                            span,
                            format!("instruction {index} (`provision` by mass) is not supported"),
                        )
                        .with_hint("provision by volume"),
                    );
                    return;
                }
                for t in list_field(ins, "to", &format!("instruction {index} (`provision`)"), d) {
                    let (Some(w), Some(v)) = (t.get("well"), t.get("volume")) else {
                        d.push(Diagnostic::error("P0102", t.span, "provision target needs `well` and `volume`"));
                        continue;
                    };
                    if let (Some(w), Some(v)) = (self.well(w, d), vol(v, d)) {
                        to.push((w, v));
                    }
                }
                self.push(Op::AddReagent { reagent, to }, span, &id);
            }
            "dispense" => {
                let Some(obj) = self.object(ins, d) else { return };
                let what = format!("instruction {index} (`dispense`)");
                let key = if ins.get("reagent").is_none() && ins.get("resource_id").is_some() {
                    "resource_id"
                } else {
                    "reagent"
                };
                let Some(reagent) = str_field(ins, key, &what, d) else { return };
                let mut to = Vec::new();
                for c in list_field(ins, "columns", &what, d) {
                    let (Some(col), Some(v)) = (c.get("column").and_then(Node::as_f64), c.get("volume")) else {
                        d.push(Diagnostic::error("P0102", c.span, "dispense column needs `column` and `volume`"));
                        continue;
                    };
                    // Autoprotocol counts columns from 0; no plate has anywhere near this many.
                    if !(col.fract() == 0.0 && (0.0..10_000.0).contains(&col)) {
                        let msg = format!("dispense `column` {col} is not a column index (a whole number from 0)");
                        d.push(Diagnostic::error("P0102", c.span, msg));
                        continue;
                    }
                    if let Some(v) = vol(v, d) {
                        to.push((
                            WellRef {
                                labware: obj.name.clone(),
                                selection: format!("{}", col as i64 + 1),
                                span: c.span,
                            },
                            v,
                        ));
                    }
                }
                self.push(Op::AddReagent { reagent, to }, span, &id);
            }
            "incubate" => {
                let Some(labware) = self.object(ins, d) else { return };
                let Some(where_) = str_field(ins, "where", &format!("instruction {index} (`incubate`)"), d) else {
                    return;
                };
                let where_ = where_.as_str();
                let Some(temperature_c) = storage_temperature(where_) else {
                    d.push(
                        Diagnostic::error(
                            "P0110",
                            ins.get("where").map_or(span, |n| n.span),
                            format!("unknown incubation location `{where_}`"),
                        )
                        .with_hint("use warm_37, warm_30, cold_4, ambient, …"),
                    );
                    return;
                };
                let Some(duration_s) = ins.get("duration").and_then(|n| dur(n, d)) else { return };
                let shake_rpm = (ins.get("shaking").and_then(|n| match n.value {
                    Value::Bool(b) => Some(b),
                    _ => None,
                }) == Some(true))
                .then_some(300.0);
                let co2_percent = ins.get("co2_percent").and_then(Node::as_f64).filter(|c| *c > 0.0);
                self.push(Op::Incubate { labware, temperature_c, duration_s, shake_rpm, co2_percent }, span, &id);
            }
            "absorbance" | "fluorescence" | "luminescence" => {
                let Some(labware) = self.object(ins, d) else { return };
                let wells = self.well_list(ins.get("wells"), &labware, d);
                let op = match op.as_str() {
                    "absorbance" => {
                        let Some(w) = ins
                            .get("wavelength")
                            .and_then(|n| quantity(n, Dim::Wavelength, "wavelength", (1.0, 5000.0), d))
                        else {
                            return;
                        };
                        Op::ReadAbsorbance { labware, wells, wavelengths_nm: vec![w] }
                    }
                    "fluorescence" => {
                        let ex = ins
                            .get("excitation")
                            .and_then(|n| quantity(n, Dim::Wavelength, "excitation", (1.0, 5000.0), d));
                        let em = ins
                            .get("emission")
                            .and_then(|n| quantity(n, Dim::Wavelength, "emission", (1.0, 5000.0), d));
                        let (Some(excitation_nm), Some(emission_nm)) = (ex, em) else { return };
                        Op::ReadFluorescence { labware, wells, excitation_nm, emission_nm }
                    }
                    _ => Op::ReadLuminescence { labware, wells },
                };
                self.push(op, span, &id);
            }
            "spectrophotometry" => {
                let Some(labware) = self.object(ins, d) else { return };
                let what = format!("a group of instruction {index} (`spectrophotometry`)");
                for g in list_field(ins, "groups", &format!("instruction {index} (`spectrophotometry`)"), d) {
                    let Some(mode) = str_field(g, "mode", &what, d) else { continue };
                    let Some(params) = g.get("mode_params") else {
                        d.push(Diagnostic::error("P0102", g.span, format!("{what} is missing `mode_params`")));
                        continue;
                    };
                    let wells = self.well_list(params.get("wells"), &labware, d);
                    let nm =
                        |n: &Node, d: &mut Diagnostics| quantity(n, Dim::Wavelength, "wavelength", (1.0, 5000.0), d);
                    let op = match mode.as_str() {
                        "absorbance" => {
                            let ws: Vec<f64> = list_field(params, "wavelength", "`mode_params`", d)
                                .iter()
                                .filter_map(|n| nm(n, d))
                                .collect();
                            if ws.is_empty() {
                                continue;
                            }
                            Op::ReadAbsorbance { labware: labware.clone(), wells, wavelengths_nm: ws }
                        }
                        "fluorescence" => {
                            let first = |k: &str| {
                                params
                                    .get(k)
                                    .and_then(Node::as_list)
                                    .and_then(|l| l.first())
                                    .and_then(|x| x.get("wavelength"))
                            };
                            let (Some(ex), Some(em)) = (first("excitation"), first("emission")) else {
                                d.push(
                                    Diagnostic::error(
                                        "P0102",
                                        params.span,
                                        "fluorescence needs `excitation` and `emission` wavelengths",
                                    )
                                    .with_hint(
                                        "give `excitation: [{wavelength: ...}]` and `emission: [{wavelength: ...}]`",
                                    ),
                                );
                                continue;
                            };
                            let (Some(ex), Some(em)) = (nm(ex, d), nm(em, d)) else { continue };
                            Op::ReadFluorescence { labware: labware.clone(), wells, excitation_nm: ex, emission_nm: em }
                        }
                        "luminescence" => Op::ReadLuminescence { labware: labware.clone(), wells },
                        other => {
                            d.push(Diagnostic::error(
                                "P0501",
                                g.span,
                                format!("instruction {index}: spectrophotometry mode `{other}` is not supported"),
                            ));
                            continue;
                        }
                    };
                    self.push(op, g.span, &id);
                }
            }
            "seal" | "unseal" | "cover" | "uncover" => {
                if let Some(labware) = self.object(ins, d) {
                    let op = match op.as_str() {
                        "seal" => Op::Seal { labware },
                        "unseal" => Op::Unseal { labware },
                        "cover" => Op::Cover { labware },
                        _ => Op::Uncover { labware },
                    };
                    self.push(op, span, &id);
                }
            }
            "spin" => {
                let Some(labware) = self.object(ins, d) else { return };
                let g = ins.get("acceleration").and_then(|n| quantity(n, Dim::Force, "acceleration", (1.0, 1e6), d));
                let t = ins.get("duration").and_then(|n| dur(n, d));
                if let (Some(g), Some(duration_s)) = (g, t) {
                    self.push(Op::Centrifuge { labware, g, duration_s }, span, &id);
                }
            }
            other => {
                let why = if UNSUPPORTED.contains(&other) {
                    "is not supported by Labwright"
                } else {
                    "is not a known Autoprotocol instruction"
                };
                d.push(
                    Diagnostic::error("P0501", op_node.span, format!("instruction {index} (`{other}`) {why}"))
                        .with_hint("remove it, or run this part of the experiment elsewhere"),
                );
            }
        }
    }

    fn well_list(&mut self, node: Option<&Node>, labware: &Named, d: &mut Diagnostics) -> Option<WellRef> {
        let list = node?.as_list()?;
        let mut names = Vec::new();
        for w in list {
            let r = self.well(w, d)?;
            if r.labware != labware.name {
                d.push(Diagnostic::error(
                    "P0203",
                    w.span,
                    format!("well `{}` is not in `{}`", r.labware, labware.name),
                ));
                return None;
            }
            names.push(r.selection);
        }
        Some(WellRef { labware: labware.name.clone(), selection: names.join(", "), span: node?.span })
    }

    fn pipette(&mut self, index: usize, ins: &Node, id: &Option<Named>, d: &mut Diagnostics) {
        let Some(groups) = ins.get("groups").and_then(Node::as_list) else {
            d.push(Diagnostic::error("P0102", ins.span, format!("instruction {index} (`pipette`) has no `groups`")));
            return;
        };
        let vol = |n: &Node, d: &mut Diagnostics| quantity(n, Dim::Volume, "volume", (0.0, 1e7), d);
        let mix = |n: Option<&Node>, d: &mut Diagnostics| -> Option<MixSpec> {
            let n = n?;
            let volume_ul = vol(n.get("volume")?, d)?;
            let times = n.get("repetitions").and_then(Node::as_f64).unwrap_or(10.0) as u32;
            Some(MixSpec { times: times.clamp(1, 100), volume_ul })
        };
        for g in groups {
            let Some((kind, body)) = g.as_map().and_then(|m| m.first()) else {
                d.push(Diagnostic::error(
                    "P0103",
                    g.span,
                    "a pipette group is an object such as {\"transfer\": [...]}",
                ));
                continue;
            };
            match kind.name.as_str() {
                "transfer" => {
                    for t in list_field(g, "transfer", "a pipette group", d) {
                        let (Some(f), Some(to), Some(v)) = (t.get("from"), t.get("to"), t.get("volume")) else {
                            d.push(Diagnostic::error("P0102", t.span, "a transfer needs `from`, `to` and `volume`"));
                            continue;
                        };
                        let (Some(from), Some(to), Some(v)) = (self.well(f, d), self.well(to, d), vol(v, d)) else {
                            continue;
                        };
                        let tr = Transfer {
                            kind: TransferKind::Transfer,
                            from,
                            to,
                            volumes: Volumes::Same(v),
                            volume_span: t.span,
                            tips: TipPolicy::Always,
                            mix_before: mix(t.get("mix_before"), d),
                            mix_after: mix(t.get("mix_after"), d),
                        };
                        self.push(Op::Transfer(tr), t.span, id);
                    }
                }
                "distribute" | "consolidate" => {
                    let distribute = kind.name == "distribute";
                    let (one_key, many_key) = if distribute { ("from", "to") } else { ("to", "from") };
                    let (Some(one), Some(many)) = (body.get(one_key), body.get(many_key).and_then(Node::as_list))
                    else {
                        d.push(Diagnostic::error(
                            "P0102",
                            body.span,
                            format!("`{}` needs `{one_key}` and a list `{many_key}`", kind.name),
                        ));
                        continue;
                    };
                    let Some(one) = self.well(one, d) else { continue };
                    let mut wells = Vec::new();
                    let mut vols = Vec::new();
                    for m in many {
                        let (Some(w), Some(v)) = (m.get("well"), m.get("volume")) else { continue };
                        let (Some(w), Some(v)) = (self.well(w, d), vol(v, d)) else { continue };
                        wells.push(w);
                        vols.push(v);
                    }
                    // One step per destination/source labware keeps each well list in one labware.
                    for w in wells.iter().zip(&vols) {
                        let (from, to) =
                            if distribute { (one.clone(), w.0.clone()) } else { (w.0.clone(), one.clone()) };
                        let tr = Transfer {
                            kind: if distribute { TransferKind::Distribute } else { TransferKind::Consolidate },
                            from,
                            to,
                            volumes: Volumes::Same(*w.1),
                            volume_span: body.span,
                            tips: TipPolicy::Once,
                            mix_before: None,
                            mix_after: None,
                        };
                        self.push(Op::Transfer(tr), body.span, id);
                    }
                }
                "mix" => {
                    for m in list_field(g, "mix", "a pipette group", d) {
                        let (Some(w), Some(v)) = (m.get("well"), m.get("volume")) else { continue };
                        let (Some(wells), Some(volume_ul)) = (self.well(w, d), vol(v, d)) else { continue };
                        let times =
                            m.get("repetitions").and_then(Node::as_f64).unwrap_or(10.0).clamp(1.0, 100.0) as u32;
                        self.push(
                            Op::Mix { wells, mix: MixSpec { times, volume_ul }, tips: TipPolicy::Always },
                            m.span,
                            id,
                        );
                    }
                }
                other => d.push(Diagnostic::error(
                    "P0501",
                    kind.span,
                    format!("instruction {index}: pipette group `{other}` is not supported"),
                )),
            }
        }
    }

    fn liquid_handle(&mut self, ins: &Node, id: &Option<Named>, d: &mut Diagnostics) {
        let mut cmds = Vec::new();
        let pipette = "autoprotocol".to_string();
        for loc in list_field(ins, "locations", "a `liquid_handle` instruction", d) {
            let Some(n) = loc.get("location") else {
                d.push(Diagnostic::error("P0102", loc.span, "a `liquid_handle` location is missing `location`"));
                continue;
            };
            let Some(w) = self.well(n, d) else { continue };
            for t in list_field(loc, "transports", "a `liquid_handle` location", d) {
                // A transport without a volume moves the tip (to the well top, the liquid
                // surface, with or without detection); one of liquid class `air` takes in or
                // lets out an air gap, which is pipette state, not liquid in the well.
                // `pump_override_volume` changes what the plunger displaces, not what moves.
                let air = t
                    .get("mode_params")
                    .and_then(|m| m.get("liquid_class"))
                    .and_then(Node::as_str)
                    .is_some_and(|c| c == "air");
                let Some(n) = t.get("volume").filter(|_| !air) else {
                    cmds.push(LowLevel::MoveTo { pipette: pipette.clone(), at: Some(w.clone()) });
                    continue;
                };
                let Some(v) = quantity(n, Dim::Volume, "volume", (-1e7, 1e7), d) else { continue };
                if v < 0.0 {
                    cmds.push(LowLevel::Aspirate { pipette: pipette.clone(), at: w.clone(), volume_ul: -v });
                } else if v > 0.0 {
                    cmds.push(LowLevel::Dispense { pipette: pipette.clone(), at: w.clone(), volume_ul: v });
                }
            }
        }
        if !self.protocol.pipettes.iter().any(|p| p.id == pipette) {
            self.protocol.pipettes.push(PipetteDecl {
                id: pipette.clone(),
                name: "liquid_handle".into(),
                channels: 1,
                min_ul: 0.5,
                max_ul: 1000.0,
            });
        }
        self.push(Op::Pipetting(cmds), ins.span, id);
    }

    fn constrained(&self, tc: &Node) -> Vec<usize> {
        let mut out = Vec::new();
        for c in tc.as_list().unwrap_or_default() {
            for side in ["from", "to"] {
                if let Some(s) = c.get(side) {
                    for k in ["instruction_start", "instruction_end"] {
                        if let Some(i) = s.get(k).and_then(Node::as_f64) {
                            out.push(i as usize);
                        }
                    }
                }
            }
        }
        out
    }

    fn time_constraints(&mut self, tc: &Node, d: &mut Diagnostics) {
        let Some(list) = tc.as_list() else {
            d.push(Diagnostic::error(
                "P0103",
                tc.span,
                format!("`time_constraints` must be a list, found {}", tc.type_name()),
            ));
            return;
        };
        for c in list {
            let side = |k: &str| -> Option<(usize, Span)> {
                let s = c.get(k)?;
                let i = s.get("instruction_end").or_else(|| s.get("instruction_start"))?.as_f64()?;
                Some((i as usize, s.span))
            };
            let (Some(from), Some(to)) = (side("from"), side("to")) else {
                d.push(Diagnostic::error(
                    "P0102",
                    c.span,
                    "a time constraint needs `from` and `to` with an instruction index",
                ));
                continue;
            };
            let Some(max) = c.get("less_than").and_then(|n| quantity(n, Dim::Duration, "less_than", (0.0, 1e7), d))
            else {
                d.push(Diagnostic::warning(
                    "P0511",
                    c.span,
                    "only `less_than` time constraints are enforced; this one is ignored",
                ));
                continue;
            };
            self.protocol.constraints.push(LagConstraint {
                from: Named { name: format!("instruction[{}]", from.0), span: from.1 },
                to: Named { name: format!("instruction[{}]", to.0), span: to.1 },
                min_s: None,
                max_s: Some(max),
                span: c.span,
            });
        }
    }
}

/// Autoprotocol storage/incubation locations → temperature.
/// An Autoprotocol incubation location's temperature: `Some(None)` for ambient (uncontrolled).
/// A ref's `store: { where: cold_4 }` or `discard: true`, as Labwright's storage conditions.
fn after_run(v: &Node, name: &str, d: &mut Diagnostics) -> Option<crate::ast::After> {
    use crate::ast::After;
    if v.get("discard").is_some_and(|n| n.value == crate::syntax::Value::Bool(true)) {
        return Some(After::Discard);
    }
    let at = v.get("store")?.get("where")?;
    let where_ = at.as_str()?;
    let condition = match where_ {
        "ambient" => "ambient",
        "cold_4" => "4C",
        "cold_20" => "-20C",
        "cold_80" => "-80C",
        "warm_30" => "30C",
        "warm_35" => "35C",
        "warm_37" => "37C",
        _ => {
            d.push(
                Diagnostic::error("P0211", at.span, format!("ref `{name}`: this lab does not store at `{where_}`"))
                    .with_hint("store at ambient, cold_4, cold_20, cold_80, warm_30, warm_35 or warm_37"),
            );
            return None;
        }
    };
    Some(After::Store(condition.to_string()))
}

fn storage_temperature(where_: &str) -> Option<Option<f64>> {
    Some(Some(match where_ {
        "ambient" => return Some(None),
        "warm_37" => 37.0,
        "warm_35" => 35.0,
        "warm_33" => 33.0,
        "warm_30" => 30.0,
        "warm_30_shaking" | "warm_37_shaking" => return where_.get(5..7).and_then(|s| s.parse().ok()).map(Some),
        "cold_4" => 4.0,
        "cold_20" => -20.0,
        "cold_80" => -80.0,
        _ => return None,
    }))
}
