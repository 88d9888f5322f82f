//! Opentrons' protocol analysis (`opentrons analyze --json-output`, what the Opentrons App
//! shows before a run) into an Opentrons JSON protocol (schema 8), which
//! [`super::opentrons`] then reads like any exported protocol. This is how Labwright takes an
//! Opentrons *Python* protocol: Opentrons' own analyzer runs the Python (on the scientist's
//! machine: `labctl`), and only its command list reaches the compiler.
//!
//! Pure: the analysis in, a protocol document (or the analysis's errors, with the Python line
//! each names) out. Running the analyzer is `labctl`'s.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// An error the analyzer reported: the protocol raised, or the engine refused a command.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisError {
    /// The protocol file's line the analyzer names (`NameError [line 13]: …`), 1-based.
    pub line: Option<usize>,
    pub message: String,
}

/// Reads the analysis: the protocol document, or every error the analyzer reported. Labware
/// whose load name `standard` does not know (custom labware, or Opentrons labware newer than
/// Labwright's library) travels with the protocol as its definition from the analysis.
pub fn to_protocol(analysis: &Value, standard: impl Fn(&str) -> bool) -> Result<Value, Vec<AnalysisError>> {
    let errors: Vec<AnalysisError> =
        analysis["errors"].as_array().map(|es| es.iter().map(error_of).collect()).unwrap_or_default();
    if !errors.is_empty() {
        return Err(errors);
    }
    let Some(commands) = analysis["commands"].as_array() else {
        return Err(vec![AnalysisError {
            line: None,
            message: "the analysis has no `commands` list (is it `opentrons analyze --json-output` output?)".into(),
        }]);
    };
    let names = Names::of(analysis, commands);
    let mut definitions = Map::new();
    let mut out = Vec::with_capacity(commands.len());
    for c in commands {
        let kind = c["commandType"].as_str().unwrap_or_default();
        let mut params = c["params"].as_object().cloned().unwrap_or_default();
        // The analysis puts a loaded thing's id in the command's result; a protocol file has it
        // in the params.
        for (load, key) in [("loadLabware", "labwareId"), ("loadPipette", "pipetteId"), ("loadModule", "moduleId")] {
            if kind == load {
                if let Some(id) = c["result"][key].as_str() {
                    params.insert(key.into(), Value::String(id.into()));
                }
            }
        }
        let opentrons = params.get("namespace").and_then(Value::as_str) == Some("opentrons");
        let known = params.get("loadName").and_then(Value::as_str).is_some_and(&standard);
        if kind == "loadLabware" && !(opentrons && known) {
            let def = &c["result"]["definition"];
            if let Some(uri) = uri_of(def) {
                definitions.insert(uri, def.clone());
            }
        }
        names.rename(&mut params);
        out.push(json!({"commandType": kind, "key": c["key"], "params": params}));
    }
    let liquids: Map<String, Value> = analysis["liquids"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter_map(|l| {
                    let id = l["id"].as_str()?;
                    Some((id.to_string(), json!({"displayName": l["displayName"], "description": l["description"]})))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({
        "schemaVersion": 8,
        "metadata": analysis["metadata"],
        "robot": {"model": analysis["robotType"]},
        "liquids": liquids,
        "labwareDefinitions": definitions,
        "commands": out,
    }))
}

/// One error of the analysis, with the line of the protocol it names.
fn error_of(e: &Value) -> AnalysisError {
    let detail = e["detail"].as_str().unwrap_or("the analyzer reported an error without detail");
    let line = line_in(detail).or_else(|| {
        // A wrapped Python exception's traceback ends in the protocol's own frame.
        e["wrappedErrors"].as_array()?.iter().rev().find_map(|w| protocol_frame(w["errorInfo"]["traceback"].as_str()?))
    });
    AnalysisError { line, message: detail.to_string() }
}

/// The line of the innermost traceback frame in the protocol's own file (not Opentrons' code,
/// not the `exec` wrapper's `<string>`).
fn protocol_frame(traceback: &str) -> Option<usize> {
    traceback.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix("File \"")?;
        let (file, rest) = rest.split_once('"')?;
        if file.starts_with('<') || file.contains("site-packages") {
            return None;
        }
        rest.trim_start_matches(',').trim().strip_prefix("line ")?.split(',').next()?.trim().parse().ok()
    })
}

/// `N` in `… [line N]: …`.
fn line_in(detail: &str) -> Option<usize> {
    let rest = detail.split("[line ").nth(1)?;
    rest.split(']').next()?.trim().parse().ok()
}

/// `namespace/loadName/version` of a labware definition.
fn uri_of(def: &Value) -> Option<String> {
    let ns = def["namespace"].as_str()?;
    let name = def["parameters"]["loadName"].as_str()?;
    let version = def["version"].as_u64()?;
    Some(format!("{ns}/{name}/{version}"))
}

/// Readable names for the analysis's ids: labware by its label or load name and slot
/// (`corning_96_wellplate_360ul_flat_slot3`), pipettes by mount (`left`), modules by model and
/// slot. These names are what results and the technician's lists show.
struct Names(BTreeMap<String, String>);

impl Names {
    fn of(analysis: &Value, commands: &[Value]) -> Names {
        let mut names = BTreeMap::new();
        let mut taken = std::collections::BTreeSet::new();
        let mut give = |id: &str, wanted: String, names: &mut BTreeMap<String, String>| {
            let mut name = wanted.clone();
            let mut n = 2;
            while !taken.insert(name.clone()) {
                name = format!("{wanted}_{n}");
                n += 1;
            }
            names.insert(id.to_string(), name);
        };
        let mut module_slot = BTreeMap::new();
        for c in commands {
            let p = &c["params"];
            match c["commandType"].as_str().unwrap_or_default() {
                "loadModule" => {
                    let (Some(id), Some(model)) = (c["result"]["moduleId"].as_str(), p["model"].as_str()) else {
                        continue;
                    };
                    let slot = p["location"]["slotName"].as_str().unwrap_or("?").to_string();
                    module_slot.insert(id.to_string(), slot.clone());
                    give(id, format!("{}_slot{}", clean(model), clean(&slot)), &mut names);
                }
                "loadPipette" => {
                    if let (Some(id), Some(mount)) = (c["result"]["pipetteId"].as_str(), p["mount"].as_str()) {
                        give(id, clean(mount), &mut names);
                    }
                }
                "loadLabware" => {
                    let Some(id) = c["result"]["labwareId"].as_str() else { continue };
                    let wanted = match p["displayName"].as_str().filter(|s| !s.trim().is_empty()) {
                        Some(label) => clean(label),
                        None => {
                            let load = clean(p["loadName"].as_str().unwrap_or("labware"));
                            let at = &p["location"];
                            match (at["slotName"].as_str(), at["moduleId"].as_str(), at["addressableAreaName"].as_str())
                            {
                                (Some(s), _, _) | (_, _, Some(s)) => format!("{load}_slot{}", clean(s)),
                                (_, Some(m), _) => {
                                    format!("{load}_slot{}", clean(module_slot.get(m).map_or("?", String::as_str)))
                                }
                                _ => load,
                            }
                        }
                    };
                    give(id, wanted, &mut names);
                }
                _ => {}
            }
        }
        // Labware the analysis lists but no command loaded (a trash, say) keeps a readable name too.
        for l in analysis["labware"].as_array().into_iter().flatten() {
            if let (Some(id), Some(load)) = (l["id"].as_str(), l["loadName"].as_str()) {
                if !names.contains_key(id) {
                    give(id, clean(load), &mut names);
                }
            }
        }
        Names(names)
    }

    /// Renames every id a command's params carry (and the ids inside its location).
    fn rename(&self, params: &mut Map<String, Value>) {
        for (key, v) in params.iter_mut() {
            match v {
                Value::String(s) if key.ends_with("Id") => {
                    if let Some(n) = self.0.get(s.as_str()) {
                        *s = n.clone();
                    }
                }
                Value::Object(inner) if key == "location" || key == "newLocation" => self.rename(inner),
                _ => {}
            }
        }
    }
}

/// A name made of letters, digits and `_` (what Labwright names allow everywhere).
fn clean(s: &str) -> String {
    let out: String = s.trim().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if out.is_empty() {
        "_".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(kind: &str, params: Value, result: Value) -> Value {
        json!({"commandType": kind, "key": "k", "params": params, "result": result, "status": "succeeded"})
    }

    #[test]
    fn ids_become_readable_names_and_custom_labware_travels() {
        let custom = json!({"namespace": "custom_beta", "version": 1, "parameters": {"loadName": "my_plate"}});
        let analysis = json!({
            "errors": [],
            "robotType": "OT-2 Standard",
            "metadata": {"protocolName": "p"},
            "liquids": [{"id": "L1", "displayName": "buffer", "description": ""}],
            "labware": [],
            "commands": [
                command("loadLabware", json!({"location": {"slotName": "3"}, "loadName": "corning_96_wellplate_360ul_flat", "namespace": "opentrons", "version": 2}), json!({"labwareId": "u-1"})),
                command("loadLabware", json!({"location": {"slotName": "3"}, "loadName": "corning_96_wellplate_360ul_flat", "namespace": "opentrons", "version": 2}), json!({"labwareId": "u-2"})),
                command("loadLabware", json!({"location": {"slotName": "5"}, "loadName": "my_plate", "namespace": "custom_beta", "version": 1, "displayName": "cells plate"}), json!({"labwareId": "u-3", "definition": custom})),
                command("loadPipette", json!({"pipetteName": "p300_single_gen2", "mount": "left"}), json!({"pipetteId": "p-1"})),
                command("aspirate", json!({"pipetteId": "p-1", "labwareId": "u-1", "wellName": "A1", "volume": 10.0}), json!({})),
            ],
        });
        let p = to_protocol(&analysis, |n| n == "corning_96_wellplate_360ul_flat").unwrap();
        let cs = p["commands"].as_array().unwrap();
        assert_eq!(cs[0]["params"]["labwareId"], "corning_96_wellplate_360ul_flat_slot3");
        assert_eq!(cs[1]["params"]["labwareId"], "corning_96_wellplate_360ul_flat_slot3_2", "names stay unique");
        assert_eq!(cs[2]["params"]["labwareId"], "cells_plate", "a label names its labware");
        assert_eq!(cs[4]["params"]["pipetteId"], "left");
        assert_eq!(cs[4]["params"]["labwareId"], "corning_96_wellplate_360ul_flat_slot3");
        assert_eq!(p["labwareDefinitions"]["custom_beta/my_plate/1"], custom);
        assert!(p["labwareDefinitions"].as_object().unwrap().len() == 1, "standard labware is the library's");
        assert_eq!(p["liquids"]["L1"]["displayName"], "buffer");
        assert_eq!(p["schemaVersion"], 8);
    }

    #[test]
    fn errors_carry_the_line_the_analyzer_names() {
        let analysis = json!({"commands": [], "errors": [
            {"detail": "NameError [line 13]: name 'get_values' is not defined"},
            {"detail": "Cannot aspirate more than the tip holds", "wrappedErrors": [
                {"errorInfo": {"traceback": "  File \"<string>\", line 1, in <module>\n\n  File \"p.py\", line 21, in run\n  File \"/v/site-packages/opentrons/x.py\", line 99, in f\n"}}
            ]},
            {"detail": "something else"},
        ]});
        let e = to_protocol(&analysis, |_| true).unwrap_err();
        assert_eq!(e[0].line, Some(13));
        assert_eq!(e[1].line, Some(21));
        assert_eq!(e[2], AnalysisError { line: None, message: "something else".into() });
    }
}
