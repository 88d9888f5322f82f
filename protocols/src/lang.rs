//! The Labwright experiment language (YAML or JSON), reference in `docs/protocol-language.md`.

use crate::ast::*;
use crate::diag::{did_you_mean, Diagnostic, Diagnostics};
use crate::read::{check_keys, count, named, quantity, required, string, well_ref};
use crate::shape;
use crate::source::Span;
use crate::syntax::{Node, Value};
use crate::units::Dim;

const MAX_VOLUME_UL: f64 = 1e7;
const MAX_DURATION_S: f64 = 30.0 * 24.0 * 3600.0;
/// Unrolled steps allowed from `repeat`, so a typo like `times: 1000000` cannot hang the compiler.
const MAX_UNROLLED: usize = 100_000;

/// Reads a document tree as a Labwright protocol.
pub fn parse(root: &Node, d: &mut Diagnostics) -> Protocol {
    let mut p = Protocol::empty("", UnlistedWells::Empty, TipSource::Protocol);
    if !check_keys(root, "the protocol", &shape::PROTOCOL.names(), d) {
        return p;
    }
    match root.get("labwright") {
        Some(v) if v.as_f64() == Some(1.0) => {}
        Some(v) => d.push(
            Diagnostic::error("P0100", v.span, "unsupported language version")
                .with_hint("this Labwright reads `labwright: 1`"),
        ),
        None => d.push(
            Diagnostic::error("P0100", Span::new(0, 0), "not a Labwright protocol: the `labwright: 1` line is missing")
                .with_hint("start the file with `labwright: 1`; to import Autoprotocol or Opentrons JSON use --from"),
        ),
    }
    if let Some(n) = root.get("name") {
        p.name = string(n, "`name`", d).unwrap_or_default();
    }
    if let Some(desc) = root.get("description") {
        string(desc, "`description`", d);
    }
    if let Some(liq) = root.get("liquids") {
        parse_liquids(liq, &mut p, d);
    }
    if let Some(lw) = required(root, "labware", "the protocol", d) {
        parse_labware(lw, &mut p, d);
    }
    if let Some(steps) = required(root, "steps", "the protocol", d) {
        let mut budget = MAX_UNROLLED;
        p.steps = parse_steps(steps, "", d, &mut budget);
    }
    if let Some(cs) = root.get("constraints") {
        parse_constraints(cs, &mut p, d);
    }
    p
}

/// `liquids`: name: description, or name: { description, absorbance, fluorescence, luminescence }.
fn parse_liquids(node: &Node, p: &mut Protocol, d: &mut Diagnostics) {
    let Some(entries) = node.as_map() else {
        d.push(Diagnostic::error(
            "P0103",
            node.span,
            format!("`liquids` must be a map of name: description, found {}", node.type_name()),
        ));
        return;
    };
    for (k, v) in entries {
        p.liquids.push(Named { name: k.name.clone(), span: k.span });
        match &v.value {
            Value::String(_) | Value::Null => {}
            Value::Map(_) => {
                let what = format!("liquid `{}`", k.name);
                if !check_keys(v, &what, &shape::LIQUID.names(), d) {
                    continue;
                }
                if let Some(desc) = v.get("description") {
                    string(desc, &format!("the description of {what}"), d);
                }
                if let Some(r) = v.get("reagent") {
                    if let Some(name) = string(r, &format!("the reagent of {what}"), d) {
                        p.reagents.insert(k.name.clone(), Named { name, span: r.span });
                    }
                }
                let optics = liquid_optics(v, &what, d);
                if !optics.is_empty() {
                    p.optics.insert(k.name.clone(), optics);
                }
                if let Some(w) = v.get("max_wait") {
                    let what = format!("the `max_wait` of {what}");
                    if let Some(s) = quantity(w, Dim::Duration, &what, (0.0, MAX_DURATION_S), d) {
                        p.max_wait_s.insert(k.name.clone(), s);
                    }
                }
            }
            _ => d.push(
                Diagnostic::error(
                    "P0103",
                    v.span,
                    format!("liquid `{}`: the value is a description or a map of properties", k.name),
                )
                .with_hint("e.g. `dye: Coomassie reagent` or `dye: { description: Coomassie, absorbance: { 595 nm: 0.4 OD } }`"),
            ),
        }
    }
}

/// A liquid's optical properties: `absorbance: { 595 nm: 1.2 OD, ... }`, `fluorescence: 40000 RFU`,
/// `luminescence: 250000 RLU/s`, each as the liquid reads undiluted in a well.
fn liquid_optics(v: &Node, what: &str, d: &mut Diagnostics) -> labware::optics::Optics {
    let mut o = labware::optics::Optics::default();
    if let Some(a) = v.get("absorbance") {
        match a.as_map() {
            Some(entries) => {
                for (nm, od) in entries {
                    let at = format!("the absorbance of {what} at `{}`", nm.name);
                    let wl = match crate::units::parse(&nm.name, Dim::Wavelength) {
                        Ok(w) if (100.0..=2000.0).contains(&w) => Some(w),
                        _ => {
                            d.push(
                                Diagnostic::error(
                                    "P0103",
                                    nm.span,
                                    format!("{what}: `{}` is not a wavelength between 100 and 2000 nm", nm.name),
                                )
                                .with_hint("write each wavelength with its unit: `absorbance: { 595 nm: 1.2 OD }`"),
                            );
                            None
                        }
                    };
                    if let (Some(wl), Some(od)) = (wl, quantity(od, Dim::Absorbance, &at, (0.0, 1000.0), d)) {
                        if o.absorbance.iter().any(|(w, _)| *w == wl) {
                            d.push(Diagnostic::error(
                                "P0103",
                                nm.span,
                                format!("{what}: the absorbance at {} nm is given twice", crate::units::trim(wl)),
                            ));
                        }
                        o.absorbance.push((wl, od));
                    }
                }
                o.absorbance.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            None => d.push(
                Diagnostic::error("P0103", a.span, format!("{what}: `absorbance` must be a map of wavelength: OD"))
                    .with_hint("e.g. `absorbance: { 595 nm: 1.2 OD }`"),
            ),
        }
    }
    if let Some(f) = v.get("fluorescence") {
        o.fluorescence_rfu = quantity(f, Dim::Fluorescence, &format!("the fluorescence of {what}"), (0.0, 1e9), d);
    }
    if let Some(l) = v.get("luminescence") {
        o.luminescence_rlu_per_s =
            quantity(l, Dim::Luminescence, &format!("the luminescence of {what}"), (0.0, 1e12), d);
    }
    o
}

fn parse_labware(node: &Node, p: &mut Protocol, d: &mut Diagnostics) {
    let Some(entries) = node.as_map() else {
        d.push(Diagnostic::error(
            "P0103",
            node.span,
            format!("`labware` must be a map of name: {{type: ...}}, found {}", node.type_name()),
        ));
        return;
    };
    for (k, v) in entries {
        let what = format!("labware `{}`", k.name);
        if k.name.contains('/') || k.name.trim().is_empty() {
            d.push(Diagnostic::error(
                "P0103",
                k.span,
                format!("labware name `{}` must be non-empty and contain no `/`", k.name),
            ));
            continue;
        }
        if !check_keys(v, &what, &shape::LABWARE.names(), d) {
            continue;
        }
        let container = v.get("container").and_then(|c| named(c, "`container`", d));
        let ty = match (v.get("type"), &container) {
            (Some(_), Some(c)) => {
                d.push(
                    Diagnostic::error("P0103", c.span, format!("{what} names both a `type` and a `container`"))
                        .with_hint("a container's type comes from the lab's inventory: drop `type`"),
                );
                continue;
            }
            (None, Some(c)) => c.clone(),
            _ => match required(v, "type", &what, d).and_then(|t| named(t, "`type`", d)) {
                Some(t) => t,
                None => continue,
            },
        };
        if let (Some(c), Some(contents)) = (&container, v.get("contents")) {
            d.push(
                Diagnostic::error(
                    "P0103",
                    contents.span,
                    format!("{what} is container `{}`: its contents come from the lab's inventory", c.name),
                )
                .with_hint("drop `contents`"),
            );
            continue;
        }
        let mut contents = Vec::new();
        if let Some(c) = v.get("contents") {
            match c.as_map() {
                Some(wells) => {
                    for (sel, liquids) in wells {
                        let Some(ls) = liquids.as_map() else {
                            d.push(
                                Diagnostic::error(
                                    "P0103",
                                    liquids.span,
                                    format!("contents of {}/{} must be a map of liquid: volume", k.name, sel.name),
                                )
                                .with_hint("e.g. `A1: { water: 100 uL }`"),
                            );
                            continue;
                        };
                        for (liquid, vol) in ls {
                            let what = format!("volume of `{}` in {}/{}", liquid.name, k.name, sel.name);
                            if let Some(volume_ul) = quantity(vol, Dim::Volume, &what, (0.0, MAX_VOLUME_UL), d) {
                                contents.push(Contents {
                                    selection: sel.name.clone(),
                                    liquid: liquid.name.clone(),
                                    volume_ul,
                                    span: sel.span.join(vol.span),
                                });
                            }
                        }
                    }
                }
                None => d.push(Diagnostic::error(
                    "P0103",
                    c.span,
                    format!("`contents` of {what} must be a map of wells: {{liquid: volume}}"),
                )),
            }
        }
        let map = v.get("map").map(|m| plate_map(m, &k.name, d)).unwrap_or_default();
        let after = after_run(v, &what, d);
        p.labware.push(LabwareDecl {
            name: Named { name: k.name.clone(), span: k.span },
            load_name: ty,
            contents,
            starts_empty: false,
            map,
            container,
            after,
        });
    }
}

/// `store: { condition: 4C }` or `discard: true`: what becomes of a labware after the run.
fn after_run(v: &Node, what: &str, d: &mut Diagnostics) -> Option<crate::ast::After> {
    use crate::ast::After;
    let discard = match v.get("discard").map(|n| (n, &n.value)) {
        None => false,
        Some((_, Value::Bool(b))) => *b,
        Some((n, _)) => {
            d.push(Diagnostic::error("P0103", n.span, format!("`discard` of {what} is `true` or `false`")));
            false
        }
    };
    let Some(store) = v.get("store") else { return discard.then_some(After::Discard) };
    if discard {
        d.push(
            Diagnostic::error("P0103", store.span, format!("{what} is both stored and discarded"))
                .with_hint("keep `store` or `discard: true`, not both"),
        );
        return None;
    }
    let at = format!("`store` of {what}");
    if !check_keys(store, &at, &shape::STORE.names(), d) {
        return None;
    }
    let condition = required(store, "condition", &at, d)?;
    let name = string(condition, &format!("the condition of {at}"), d)?;
    if !shape::CONDITIONS.contains(&name.as_str()) {
        d.push(
            Diagnostic::error("P0211", condition.span, format!("unknown storage condition `{name}`"))
                .with_hint(format!("the lab stores at: {}", shape::CONDITIONS.join(", "))),
        );
        return None;
    }
    Some(After::Store(name))
}

/// A labware's plate map: `well selection: {sample, group, role, concentration | concentrations}`
/// entries, or the same as a CSV table in a string.
fn plate_map(node: &Node, labware: &str, d: &mut Diagnostics) -> Vec<crate::ast::MapEntry> {
    use crate::design::{self, Concentration, Role};
    let mut out = Vec::new();
    let bad = |span, msg: String| Diagnostic::error("P0208", span, msg);
    let role_of = |text: &str, span, d: &mut Diagnostics| match Role::parse(text) {
        Some(r) => Some(r),
        None => {
            d.push(
                bad(span, format!("`{text}` is not a role")).with_hint("a role is sample, blank, control or standard"),
            );
            None
        }
    };
    let fixed = |text: &str, span, d: &mut Diagnostics| match design::concentration(text) {
        Ok((value, unit)) => Some(Concentration::Fixed { value, unit }),
        Err(e) => {
            d.push(bad(span, e));
            None
        }
    };
    if let Some(text) = node.as_str() {
        let rows = match design::csv(text) {
            Ok(rows) => rows,
            Err(e) => {
                d.push(bad(node.span, format!("the plate map of `{labware}`: {e}")));
                return out;
            }
        };
        for row in rows {
            let role = match row.fields.get("role") {
                Some(r) => match role_of(r, node.span, d) {
                    Some(r) => r,
                    None => continue,
                },
                None => Role::Sample,
            };
            let concentration = match row.fields.get("concentration") {
                Some(c) => match fixed(c, node.span, d) {
                    Some(c) => c,
                    None => continue,
                },
                None => Concentration::None,
            };
            out.push(crate::ast::MapEntry {
                selection: row.wells,
                sample: row.fields.get("sample").cloned(),
                group: row.fields.get("group").cloned(),
                role,
                concentration,
                span: node.span,
            });
        }
        return out;
    }
    let Some(entries) = node.as_map() else {
        d.push(
            bad(node.span, format!("the `map` of `{labware}` must be a map of wells: {{sample, group, role, concentration}} or a CSV table"))
                .with_hint("e.g. `\"A1:A3\": { role: blank }` or `map: |` followed by `well,sample,role`"),
        );
        return out;
    };
    for (sel, entry) in entries {
        let what = format!("the map entry {labware}/{}", sel.name);
        if !check_keys(entry, &what, &shape::MAP_ENTRY.names(), d) {
            continue;
        }
        let text = |key: &str, d: &mut Diagnostics| entry.get(key).and_then(|n| string(n, &format!("`{key}`"), d));
        let role = match entry.get("role") {
            Some(r) => match string(r, "`role`", d).and_then(|t| role_of(&t, r.span, d)) {
                Some(r) => r,
                None => continue,
            },
            None => Role::Sample,
        };
        let concentration = match (entry.get("concentration"), entry.get("concentrations")) {
            (Some(_), Some(c)) => {
                d.push(bad(
                    c.span,
                    format!("{what}: give `concentration` (every well) or `concentrations` (per well), not both"),
                ));
                continue;
            }
            (Some(c), None) => match string(c, "`concentration`", d).and_then(|t| fixed(&t, c.span, d)) {
                Some(c) => c,
                None => continue,
            },
            (None, Some(c)) => match (c.as_list(), c.as_map()) {
                (Some(items), _) => {
                    let mut values = Vec::new();
                    let mut unit: Option<String> = None;
                    let mut ok = true;
                    for item in items {
                        match string(item, "a concentration", d).map(|t| design::concentration(&t)) {
                            Some(Ok((v, u))) if unit.as_ref().is_none_or(|x| *x == u) => {
                                values.push(v);
                                unit = Some(u);
                            }
                            Some(Ok((_, u))) => {
                                d.push(bad(
                                    item.span,
                                    format!("`{u}` differs from the list's first unit; one unit per list"),
                                ));
                                ok = false;
                            }
                            Some(Err(e)) => {
                                d.push(bad(item.span, e));
                                ok = false;
                            }
                            None => ok = false,
                        }
                    }
                    if !ok {
                        continue;
                    }
                    Concentration::List { values, unit: unit.unwrap_or_default() }
                }
                (None, Some(_)) => {
                    if !check_keys(c, "`concentrations`", &shape::SERIES.names(), d) {
                        continue;
                    }
                    let start = required(c, "start", "`concentrations`", d)
                        .and_then(|n| string(n, "`start`", d).map(|t| (t, n.span)))
                        .and_then(|(t, span)| match design::concentration(&t) {
                            Ok(x) => Some(x),
                            Err(e) => {
                                d.push(bad(span, e));
                                None
                            }
                        });
                    let factor = required(c, "factor", "`concentrations`", d).and_then(|n| match n.as_f64() {
                        Some(f) if f.is_finite() && f > 1.0 => Some(f),
                        _ => {
                            d.push(bad(n.span, "the dilution `factor` is a number above 1 (3 for 1:3)".into()));
                            None
                        }
                    });
                    let (Some((start, unit)), Some(factor)) = (start, factor) else { continue };
                    Concentration::Series { start, unit, factor }
                }
                _ => {
                    d.push(bad(
                        c.span,
                        format!("{what}: `concentrations` is a list (one per well) or {{start, factor}}"),
                    ));
                    continue;
                }
            },
            (None, None) => Concentration::None,
        };
        let sample = text("sample", d);
        if sample.is_none() && role != Role::Blank {
            d.push(bad(sel.span, format!("{what} names no sample")).with_hint("add `sample: NAME` (blanks need none)"));
            continue;
        }
        out.push(crate::ast::MapEntry {
            selection: sel.name.clone(),
            sample,
            group: text("group", d),
            role,
            concentration,
            span: sel.span.join(entry.span),
        });
    }
    out
}

/// How many steps a `steps` list unrolls to (a `repeat` counts its times × its body), read from
/// the tree without expanding anything; what does not parse counts as one step.
fn unrolled(node: &Node) -> usize {
    let Some(items) = node.as_list() else { return 1 };
    items.iter().fold(0usize, |sum, item| {
        let one = match item.get("repeat") {
            Some(r) => {
                let times = r.get("times").and_then(Node::as_f64).filter(|t| t.is_finite() && *t >= 0.0);
                let body = r.get("steps").map_or(1, unrolled);
                times.map_or(1, |t| (t.min(u64::MAX as f64) as usize).saturating_mul(body))
            }
            None => 1,
        };
        sum.saturating_add(one)
    })
}

fn parse_steps(node: &Node, id_suffix: &str, d: &mut Diagnostics, budget: &mut usize) -> Vec<Step> {
    let operations = shape::operation_names();
    let Some(items) = node.as_list() else {
        d.push(Diagnostic::error("P0103", node.span, format!("`steps` must be a list, found {}", node.type_name())));
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let Some(entries) = item.as_map() else {
            d.push(Diagnostic::error(
                "P0103",
                item.span,
                format!("a step must be a map such as `- transfer: {{...}}`, found {}", item.type_name()),
            ));
            continue;
        };
        let mut id = None;
        let mut after = Vec::new();
        let mut ops = Vec::new();
        for (k, v) in entries {
            match k.name.as_str() {
                "id" => {
                    id =
                        named(v, "step `id`", d).map(|n| Named { name: format!("{}{id_suffix}", n.name), span: n.span })
                }
                "after" => match &v.value {
                    Value::String(s) => after.push(Named { name: format!("{s}{id_suffix}"), span: v.span }),
                    Value::List(xs) => {
                        for x in xs {
                            if let Some(n) = named(x, "`after`", d) {
                                after.push(Named { name: format!("{}{id_suffix}", n.name), span: n.span });
                            }
                        }
                    }
                    _ => d.push(Diagnostic::error("P0103", v.span, "`after` must be a step id or a list of step ids")),
                },
                name if operations.contains(&name) => ops.push((k, v)),
                other => {
                    let hint = did_you_mean(other, operations.iter().copied().chain(shape::STEP_FIELDS.names()))
                        .unwrap_or_else(|| format!("operations are: {}", operations.join(", ")));
                    d.push(Diagnostic::error("P0104", k.span, format!("unknown operation `{other}`")).with_hint(hint));
                }
            }
        }
        match ops.as_slice() {
            [] => {
                if !entries.iter().any(|(k, _)| {
                    !shape::STEP_FIELDS.names().contains(&k.name.as_str()) && !operations.contains(&k.name.as_str())
                }) {
                    d.push(
                        Diagnostic::error("P0102", item.span, "this step names no operation")
                            .with_hint(format!("operations are: {}", operations.join(", "))),
                    );
                }
            }
            [(k, v)] if k.name == "repeat" => {
                if id.is_some() || !after.is_empty() {
                    d.push(Diagnostic::error(
                        "P0103",
                        k.span,
                        "`repeat` takes no `id` or `after`; put them on the steps inside",
                    ));
                }
                if !check_keys(v, "`repeat`", &shape::REPEAT.names(), d) {
                    continue;
                }
                let times = required(v, "times", "`repeat`", d).and_then(|t| count(t, "`times`", 10_000, d));
                let body = required(v, "steps", "`repeat`", d);
                // Counted from the loop structure before anything is expanded: nested repeats
                // multiply, and a 500-byte file must not cost gigabytes to refuse.
                let unrolls = times.zip(body).map(|(n, b)| (n as usize).saturating_mul(unrolled(b)));
                if let Some(n) = unrolls.filter(|&n| n > *budget) {
                    d.push(
                        Diagnostic::error(
                            "P0111",
                            k.span,
                            format!(
                                "`repeat` would unroll to {} steps; a protocol unrolls to at most {MAX_UNROLLED}",
                                if n == usize::MAX { "more than 10^18".to_string() } else { n.to_string() }
                            ),
                        )
                        .with_hint("split the experiment into several runs"),
                    );
                    *budget = 0;
                    continue;
                }
                if let (Some(times), Some(body)) = (times, body) {
                    for i in 0..times {
                        if *budget == 0 {
                            d.push(
                                Diagnostic::error(
                                    "P0111",
                                    k.span,
                                    format!("`repeat` unrolls to more than {MAX_UNROLLED} steps"),
                                )
                                .with_hint("split the experiment into several runs"),
                            );
                            break;
                        }
                        let inner = parse_steps(body, &format!("{id_suffix}[{}]", i + 1), d, budget);
                        out.extend(inner);
                    }
                }
            }
            [(k, v)] => {
                *budget = budget.saturating_sub(1);
                if let Some(op) = parse_op(&k.name, k.span, v, d) {
                    let fields = v
                        .as_map()
                        .map(|m| m.iter().map(|(k, n)| (k.name.clone(), n.span)).collect())
                        .unwrap_or_default();
                    out.push(Step { id, after, span: item.span, op, fields });
                }
            }
            [_, (k2, _), ..] => d.push(
                Diagnostic::error("P0103", k2.span, format!("a step has one operation; `{}` is a second", k2.name))
                    .with_hint("split it into two steps"),
            ),
        }
    }
    out
}

fn tip_policy(node: Option<&Node>, default: TipPolicy, d: &mut Diagnostics) -> TipPolicy {
    let Some(n) = node else { return default };
    match n.as_str() {
        Some("always") => TipPolicy::Always,
        Some("per_source") => TipPolicy::PerSource,
        Some("once") => TipPolicy::Once,
        _ => {
            d.push(
                Diagnostic::error("P0103", n.span, "`tips` must be `always`, `per_source` or `once`")
                    .with_hint("`always`: a new tip per aspirate; `per_source`: when the source well changes; `once`: one tip for the step"),
            );
            default
        }
    }
}

fn mix_spec(node: &Node, what: &str, d: &mut Diagnostics) -> Option<MixSpec> {
    if !check_keys(node, what, &shape::MIX.names(), d) {
        return None;
    }
    let times = required(node, "times", what, d).and_then(|t| count(t, "`times`", 100, d));
    let volume = required(node, "volume", what, d)
        .and_then(|v| quantity(v, Dim::Volume, "mix `volume`", (0.0, MAX_VOLUME_UL), d));
    Some(MixSpec { times: times?, volume_ul: volume? })
}

/// Accepts `seal: plate` as well as `seal: { labware: plate }`.
fn labware_arg(node: &Node, what: &str, d: &mut Diagnostics) -> Option<Named> {
    if let Value::String(s) = &node.value {
        return Some(Named { name: s.clone(), span: node.span });
    }
    if !check_keys(node, what, &shape::LABWARE_ONLY.names(), d) {
        return None;
    }
    required(node, "labware", what, d).and_then(|n| named(n, "`labware`", d))
}

fn parse_op(name: &str, name_span: Span, v: &Node, d: &mut Diagnostics) -> Option<Op> {
    let what = format!("`{name}`");
    let vol = |n: &Node, w: &str, d: &mut Diagnostics| quantity(n, Dim::Volume, w, (0.0, MAX_VOLUME_UL), d);
    let dur = |n: &Node, w: &str, d: &mut Diagnostics| quantity(n, Dim::Duration, w, (0.0, MAX_DURATION_S), d);
    let temp = |n: &Node, d: &mut Diagnostics| quantity(n, Dim::Temperature, "`temperature`", (-80.0, 120.0), d);
    let rpm = |n: &Node, d: &mut Diagnostics| quantity(n, Dim::Speed, "shaking speed", (0.0, 5000.0), d);
    let nm = |n: &Node, w: &str, d: &mut Diagnostics| quantity(n, Dim::Wavelength, w, (100.0, 2000.0), d);
    let wells_opt = |v: &Node, d: &mut Diagnostics| v.get("wells").and_then(|w| well_ref(w, "`wells`", d));
    match name {
        "transfer" | "distribute" | "consolidate" => {
            let kind = match name {
                "distribute" => TransferKind::Distribute,
                "consolidate" => TransferKind::Consolidate,
                _ => TransferKind::Transfer,
            };
            if !check_keys(v, &what, &shape::TRANSFER.names(), d) {
                return None;
            }
            let from = required(v, "from", &what, d).and_then(|n| well_ref(n, "`from`", d));
            let volumes_table = v.get("volumes");
            let to = match (v.get("to"), volumes_table) {
                (Some(n), _) => well_ref(n, "`to`", d),
                (None, Some(_)) => None, // filled from the table below
                (None, None) => required(v, "to", &what, d).and_then(|n| well_ref(n, "`to`", d)),
            };
            let (volumes, volume_span, to) = match (v.get("volume"), volumes_table) {
                (Some(_), Some(t)) => {
                    d.push(Diagnostic::error(
                        "P0103",
                        t.span,
                        format!("{what} has both `volume` and `volumes`; keep one"),
                    ));
                    return None;
                }
                (Some(n), None) => {
                    let vols = match &n.value {
                        Value::List(items) => {
                            let vs: Vec<f64> = items.iter().filter_map(|i| vol(i, "`volume`", d)).collect();
                            if vs.len() != items.len() {
                                return None;
                            }
                            Volumes::PerPair(vs)
                        }
                        _ => Volumes::Same(vol(n, "`volume`", d)?),
                    };
                    (vols, n.span, to)
                }
                (None, Some(t)) => {
                    let (to_ref, vols) = volume_table(t, to.as_ref(), d)?;
                    (Volumes::PerPair(vols), t.span, Some(to_ref))
                }
                (None, None) => {
                    required(v, "volume", &what, d);
                    return None;
                }
            };
            let tips = tip_policy(v.get("tips"), TipPolicy::Once, d);
            let mix_before = v.get("mix_before").and_then(|m| mix_spec(m, "`mix_before`", d));
            let mix_after = v.get("mix_after").and_then(|m| mix_spec(m, "`mix_after`", d));
            Some(Op::Transfer(Transfer {
                kind,
                from: from?,
                to: to?,
                volumes,
                volume_span,
                tips,
                mix_before,
                mix_after,
            }))
        }
        "serial_dilution" => {
            if !check_keys(v, &what, &shape::SERIAL_DILUTION.names(), d) {
                return None;
            }
            let mut series = Vec::new();
            if let Some(s) = v.get("series") {
                match s.as_list() {
                    Some(items) => series.extend(items.iter().filter_map(|i| well_ref(i, "series entry", d))),
                    None => d.push(Diagnostic::error(
                        "P0103",
                        s.span,
                        "`series` must be a list of well ranges, one per dilution series",
                    )),
                }
            } else {
                let plate = required(v, "plate", &what, d).and_then(|n| named(n, "`plate`", d))?;
                let rows = required(v, "rows", &what, d).and_then(|n| string(n, "`rows`", d).map(|s| (s, n.span)))?;
                // `points: N` is columns 1 to N.
                let cols = match (v.get("columns"), v.get("points")) {
                    (Some(_), Some(p)) => {
                        d.push(Diagnostic::error("P0103", p.span, "give `columns` or `points`, not both"));
                        return None;
                    }
                    (None, Some(p)) => match p.as_f64() {
                        Some(n) if n.fract() == 0.0 && (2.0..=48.0).contains(&n) => (format!("1:{n}"), p.span),
                        _ => {
                            d.push(Diagnostic::error(
                                "P0103",
                                p.span,
                                "`points` is a whole number of wells from 2 to 48",
                            ));
                            return None;
                        }
                    },
                    _ => required(v, "columns", &what, d).and_then(|n| match &n.value {
                        Value::Number(x) => Some((crate::units::trim(*x), n.span)),
                        _ => string(n, "`columns`", d).map(|s| (s, n.span)),
                    })?,
                };
                let (c0, c1) =
                    cols.0.split_once(':').map_or((cols.0.as_str(), cols.0.as_str()), |(a, b)| (a.trim(), b.trim()));
                let (r0, r1) =
                    rows.0.split_once(':').map_or((rows.0.as_str(), rows.0.as_str()), |(a, b)| (a.trim(), b.trim()));
                let letters = |a: &str, b: &str| -> Option<Vec<String>> {
                    let (a, b) = (a.to_ascii_uppercase(), b.to_ascii_uppercase());
                    if a.len() != 1 || b.len() != 1 {
                        return None;
                    }
                    let (a, b) = (a.as_bytes()[0], b.as_bytes()[0]);
                    (a.is_ascii_uppercase() && b.is_ascii_uppercase() && a <= b)
                        .then(|| (a..=b).map(|c| (c as char).to_string()).collect())
                };
                match letters(r0, r1) {
                    Some(rs) => {
                        for r in rs {
                            series.push(WellRef {
                                labware: plate.name.clone(),
                                selection: format!("{r}{c0}:{r}{c1} by row"),
                                span: rows.1.join(cols.1),
                            });
                        }
                    }
                    None => d.push(
                        Diagnostic::error("P0205", rows.1, format!("`rows` `{}` is not a row range", rows.0))
                            .with_hint("write rows like `A:H` or `B`"),
                    ),
                }
            }
            let mix = v.get("mix").and_then(|m| mix_spec(m, "`mix`", d));
            let tips = tip_policy(v.get("tips"), TipPolicy::Always, d);
            // With a factor the volumes follow: every well but the first gets `final_volume` of
            // diluent, and final_volume ÷ (factor − 1) moves along the series.
            let Some(f) = v.get("factor") else {
                let volume_ul = required(v, "volume", &what, d).and_then(|n| vol(n, "`volume`", d))?;
                return Some(Op::SerialDilution { series, volume_ul, mix, tips, diluent: None });
            };
            if let Some(n) = v.get("volume") {
                d.push(
                    Diagnostic::error("P0103", n.span, "with a `factor`, the volume moved follows from `final_volume`")
                        .with_hint("remove `volume`, or the `factor` to give the volume yourself"),
                );
                return None;
            }
            let factor = match f.as_f64() {
                Some(x) if x.is_finite() && x > 1.0 && x <= 1000.0 => x,
                _ => {
                    d.push(Diagnostic::error("P0103", f.span, "the dilution `factor` is a number above 1 (3 for 1:3)"));
                    return None;
                }
            };
            let final_ul = required(v, "final_volume", &what, d).and_then(|n| vol(n, "`final_volume`", d))?;
            let diluent = required(v, "diluent", &what, d).and_then(|n| well_ref(n, "`diluent`", d))?;
            let volume_ul = final_ul / (factor - 1.0);
            Some(Op::SerialDilution { series, volume_ul, mix, tips, diluent: Some((diluent, final_ul)) })
        }
        "mix" => {
            if !check_keys(v, &what, &shape::MIX_STEP.names(), d) {
                return None;
            }
            let wells = required(v, "wells", &what, d).and_then(|n| well_ref(n, "`wells`", d));
            let times = required(v, "times", &what, d).and_then(|t| count(t, "`times`", 100, d));
            let volume = required(v, "volume", &what, d).and_then(|n| vol(n, "`volume`", d));
            let tips = tip_policy(v.get("tips"), TipPolicy::Always, d);
            Some(Op::Mix { wells: wells?, mix: MixSpec { times: times?, volume_ul: volume? }, tips })
        }
        "incubate" => {
            if !check_keys(v, &what, &shape::INCUBATE.names(), d) {
                return None;
            }
            let labware = required(v, "labware", &what, d).and_then(|n| named(n, "`labware`", d));
            // `ambient`: the room's temperature; nothing heats or cools.
            let t = required(v, "temperature", &what, d).and_then(|n| match n.as_str() {
                Some(s) if s.trim().eq_ignore_ascii_case("ambient") => Some(None),
                _ => temp(n, d).map(Some),
            });
            let du = required(v, "duration", &what, d).and_then(|n| dur(n, "`duration`", d));
            let shake_rpm = v.get("shaking").and_then(|n| rpm(n, d));
            let co2 = match v.get("co2") {
                None => Some(None),
                Some(n) => match n
                    .as_str()
                    .map(|s| s.trim())
                    .and_then(|s| s.strip_suffix('%'))
                    .map(|x| x.trim().parse::<f64>())
                {
                    Some(Ok(x)) if (0.0..=100.0).contains(&x) => Some(Some(x)),
                    _ => {
                        d.push(
                            Diagnostic::error("P0110", n.span, "`co2` is a percentage of the atmosphere")
                                .with_hint("e.g. `co2: 5 %`"),
                        );
                        None
                    }
                },
            };
            Some(Op::Incubate { labware: labware?, temperature_c: t?, duration_s: du?, shake_rpm, co2_percent: co2? })
        }
        "shake" => {
            if !check_keys(v, &what, &shape::SHAKE.names(), d) {
                return None;
            }
            let labware = required(v, "labware", &what, d).and_then(|n| named(n, "`labware`", d));
            let speed = required(v, "speed", &what, d).and_then(|n| rpm(n, d));
            let du = required(v, "duration", &what, d).and_then(|n| dur(n, "`duration`", d));
            let temperature_c = v.get("temperature").and_then(|n| temp(n, d));
            Some(Op::Shake { labware: labware?, rpm: speed?, duration_s: du?, temperature_c })
        }
        "seal" => labware_arg(v, &what, d).map(|labware| Op::Seal { labware }),
        "unseal" => labware_arg(v, &what, d).map(|labware| Op::Unseal { labware }),
        "cover" => labware_arg(v, &what, d).map(|labware| Op::Cover { labware }),
        "uncover" => labware_arg(v, &what, d).map(|labware| Op::Uncover { labware }),
        "read_absorbance" => {
            if !check_keys(v, &what, &shape::READ_ABSORBANCE.names(), d) {
                return None;
            }
            let labware = required(v, "labware", &what, d).and_then(|n| named(n, "`labware`", d));
            let wells = wells_opt(v, d);
            let mut wavelengths_nm = Vec::new();
            match (v.get("wavelength"), v.get("wavelengths")) {
                (Some(w), None) => wavelengths_nm.extend(nm(w, "`wavelength`", d)),
                (None, Some(ws)) => match ws.as_list() {
                    Some(items) if !items.is_empty() => {
                        wavelengths_nm.extend(items.iter().filter_map(|i| nm(i, "`wavelengths`", d)))
                    }
                    _ => d.push(Diagnostic::error(
                        "P0103",
                        ws.span,
                        "`wavelengths` must be a non-empty list such as [450 nm, 620 nm]",
                    )),
                },
                (Some(_), Some(ws)) => {
                    d.push(Diagnostic::error("P0103", ws.span, "give `wavelength` or `wavelengths`, not both"))
                }
                (None, None) => {
                    d.push(
                        Diagnostic::error("P0102", v.span, format!("{what} is missing `wavelength`"))
                            .with_hint("add e.g. `wavelength: 450 nm`"),
                    );
                }
            }
            if wavelengths_nm.is_empty() {
                return None;
            }
            Some(Op::ReadAbsorbance { labware: labware?, wells, wavelengths_nm })
        }
        "read_fluorescence" => {
            if !check_keys(v, &what, &shape::READ_FLUORESCENCE.names(), d) {
                return None;
            }
            let labware = required(v, "labware", &what, d).and_then(|n| named(n, "`labware`", d));
            let wells = wells_opt(v, d);
            let ex = required(v, "excitation", &what, d).and_then(|n| nm(n, "`excitation`", d));
            let em = required(v, "emission", &what, d).and_then(|n| nm(n, "`emission`", d));
            if let (Some(x), Some(m)) = (ex, em) {
                if m <= x {
                    d.push(
                        Diagnostic::error("P0111", v.get("emission").map_or(v.span, |n| n.span), "emission must be longer than excitation")
                            .with_hint("fluorescence emits at a longer wavelength than it is excited with; check the two are not swapped"),
                    );
                    return None;
                }
            }
            Some(Op::ReadFluorescence { labware: labware?, wells, excitation_nm: ex?, emission_nm: em? })
        }
        "read_luminescence" => {
            if !check_keys(v, &what, &shape::READ_LUMINESCENCE.names(), d) {
                return None;
            }
            let labware = required(v, "labware", &what, d).and_then(|n| named(n, "`labware`", d));
            Some(Op::ReadLuminescence { labware: labware?, wells: wells_opt(v, d) })
        }
        "centrifuge" => {
            if !check_keys(v, &what, &shape::CENTRIFUGE.names(), d) {
                return None;
            }
            let labware = required(v, "labware", &what, d).and_then(|n| named(n, "`labware`", d));
            let g =
                required(v, "force", &what, d).and_then(|n| quantity(n, Dim::Force, "`force`", (1.0, 100_000.0), d));
            let du = required(v, "duration", &what, d).and_then(|n| dur(n, "`duration`", d));
            Some(Op::Centrifuge { labware: labware?, g: g?, duration_s: du? })
        }
        "thermocycle" => {
            if !check_keys(v, &what, &shape::THERMOCYCLE.names(), d) {
                return None;
            }
            let labware = required(v, "labware", &what, d).and_then(|n| named(n, "`labware`", d));
            let profile = required(v, "profile", &what, d)?;
            let Some(items) = profile.as_list().filter(|l| !l.is_empty()) else {
                d.push(
                    Diagnostic::error("P0103", profile.span, "`profile` is a list of holds and cycles").with_hint(
                        "e.g. `profile: [{ temperature: 95 C, hold: 3 min }, { cycles: 30, steps: [...] }]`",
                    ),
                );
                return None;
            };
            let hold = |n: &Node, d: &mut Diagnostics| -> Option<(f64, f64)> {
                if !check_keys(n, "a hold", &shape::HOLD.names(), d) {
                    return None;
                }
                let t = required(n, "temperature", "a hold", d).and_then(|x| temp(x, d));
                let h = required(n, "hold", "a hold", d).and_then(|x| dur(x, "`hold`", d));
                Some((t?, h?))
            };
            let mut stages = Vec::new();
            let mut ok = true;
            for item in items {
                if item.get("cycles").is_some() {
                    if !check_keys(item, "a cycle", &shape::CYCLES.names(), d) {
                        ok = false;
                        continue;
                    }
                    let times = required(item, "cycles", "a cycle", d).and_then(|t| count(t, "`cycles`", 1000, d));
                    let steps = required(item, "steps", "a cycle", d).and_then(|s| s.as_list());
                    let (Some(times), Some(steps)) = (times, steps) else {
                        ok = false;
                        continue;
                    };
                    let one: Vec<(f64, f64)> = steps.iter().filter_map(|s| hold(s, d)).collect();
                    if one.len() != steps.len() {
                        ok = false;
                        continue;
                    }
                    for _ in 0..times {
                        stages.extend(one.iter().copied());
                    }
                } else {
                    match hold(item, d) {
                        Some(h) => stages.push(h),
                        None => ok = false,
                    }
                }
            }
            if !ok {
                return None;
            }
            Some(Op::Thermocycle { labware: labware?, stages })
        }
        "wait" => {
            let n = if v.as_map().is_some() {
                if !check_keys(v, &what, &shape::WAIT.names(), d) {
                    return None;
                }
                required(v, "duration", &what, d)?
            } else {
                v
            };
            Some(Op::Wait { duration_s: dur(n, "`duration`", d)? })
        }
        "manual" => {
            if let Value::String(s) = &v.value {
                return Some(Op::Manual { instruction: s.clone(), labware: Vec::new(), duration_s: 300.0 });
            }
            if !check_keys(v, &what, &shape::MANUAL.names(), d) {
                return None;
            }
            let instruction = required(v, "instruction", &what, d).and_then(|n| string(n, "`instruction`", d))?;
            let mut labware = Vec::new();
            if let Some(l) = v.get("labware") {
                match &l.value {
                    Value::List(xs) => labware.extend(xs.iter().filter_map(|x| named(x, "`labware`", d))),
                    _ => labware.extend(named(l, "`labware`", d)),
                }
            }
            let duration_s = match v.get("duration") {
                Some(n) => dur(n, "`duration`", d)?,
                None => 300.0,
            };
            Some(Op::Manual { instruction, labware, duration_s })
        }
        _ => {
            d.push(Diagnostic::error("P0104", name_span, format!("unknown operation `{name}`")));
            None
        }
    }
}

/// Reads a per-well volume table: lines of `well, volume` (a header line is allowed), as used for
/// normalisation. Volumes without a unit are µL only if the header says `volume_ul`.
fn volume_table(t: &Node, to: Option<&WellRef>, d: &mut Diagnostics) -> Option<(WellRef, Vec<f64>)> {
    let text = string(t, "`volumes`", d)?;
    let mut wells = Vec::new();
    let mut vols = Vec::new();
    let mut bare_ul = false;
    let (labware, _) = match to {
        Some(r) => (r.labware.clone(), ()),
        None => {
            d.push(
                Diagnostic::error(
                    "P0102",
                    t.span,
                    "`volumes` needs `to: <labware>` to say which labware the table's wells are in",
                )
                .with_hint("e.g. `to: plate/A1:H12` (the wells of the table are used, in table order)"),
            );
            return None;
        }
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cols = line.split([',', '\t', ';']).map(str::trim);
        let (Some(w), Some(v)) = (cols.next(), cols.next()) else {
            d.push(Diagnostic::error(
                "P0103",
                t.span,
                format!("`volumes` line {}: expected `well, volume`, found `{line}`", i + 1),
            ));
            continue;
        };
        if i == 0 && w.eq_ignore_ascii_case("well") {
            bare_ul = v.eq_ignore_ascii_case("volume_ul");
            continue;
        }
        let spelled = if bare_ul && v.parse::<f64>().is_ok() { format!("{v} uL") } else { v.to_string() };
        match crate::units::parse(&spelled, Dim::Volume) {
            Ok(x) if x >= 0.0 => {
                wells.push(w.to_string());
                vols.push(x);
            }
            _ => d.push(
                Diagnostic::error("P0110", t.span, format!("`volumes` line {}: `{v}` is not a volume", i + 1))
                    .with_hint("write volumes with units (`12.5 uL`), or name the column `volume_ul` in a header line"),
            ),
        }
    }
    if wells.is_empty() {
        d.push(Diagnostic::error("P0102", t.span, "`volumes` table has no rows"));
        return None;
    }
    Some((WellRef { labware, selection: wells.join(", "), span: t.span }, vols))
}

fn parse_constraints(node: &Node, p: &mut Protocol, d: &mut Diagnostics) {
    let Some(items) = node.as_list() else {
        d.push(Diagnostic::error("P0103", node.span, "`constraints` must be a list"));
        return;
    };
    for c in items {
        if !check_keys(c, "a constraint", &shape::CONSTRAINT.names(), d) {
            continue;
        }
        let from = required(c, "from", "a constraint", d).and_then(|n| named(n, "`from`", d));
        let to = required(c, "to", "a constraint", d).and_then(|n| named(n, "`to`", d));
        let lag = |key: &str, d: &mut Diagnostics| {
            c.get(key).map(|n| quantity(n, Dim::Duration, &format!("`{key}`"), (0.0, MAX_DURATION_S), d))
        };
        let (min, max) = (lag("min_lag", d), lag("max_lag", d));
        if min.is_none() && max.is_none() {
            d.push(
                Diagnostic::error("P0102", c.span, "a constraint needs `min_lag`, `max_lag` or both")
                    .with_hint("e.g. `{ from: add_dye, to: read, min_lag: 5 min, max_lag: 30 min }`"),
            );
            continue;
        }
        let (Some(from), Some(to)) = (from, to) else { continue };
        // A bound that did not read was reported; the constraint goes no further.
        if matches!(min, Some(None)) || matches!(max, Some(None)) {
            continue;
        }
        let (min_s, max_s) = (min.flatten(), max.flatten());
        if let (Some(lo), Some(hi)) = (min_s, max_s) {
            if lo > hi {
                d.push(Diagnostic::error(
                    "P0402",
                    c.span,
                    format!("`min_lag` ({lo} s) is longer than `max_lag` ({hi} s): no start can keep both"),
                ));
                continue;
            }
        }
        p.constraints.push(LagConstraint { from, to, min_s, max_s, span: c.span });
    }
}
