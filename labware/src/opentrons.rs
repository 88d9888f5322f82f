//! Importer for Opentrons labware definitions (schema v2) into Labwright's format.
//!
//! Only geometry is carried over: Opentrons' `x`, `y`, `z` are already the well's bottom centre
//! relative to the front-left-bottom corner, which is Labwright's convention too. Wells keep the
//! Opentrons `ordering` (column by column).

use crate::def::{Footprint, LabwareDef, LabwareError, LabwareKind, TipSpec, Well, WellShape, FORMAT};
use serde_json::Value;

/// Converts the text of an Opentrons v2 labware definition.
pub fn import(text: &str) -> Result<LabwareDef, LabwareError> {
    let v: Value = serde_json::from_str(text).map_err(|e| LabwareError::Json(e.to_string()))?;
    import_value(&v)
}

fn bad(path: &str, what: &str) -> LabwareError {
    LabwareError::Invalid(format!("{path}: {what}"))
}

fn num(v: &Value, path: &str) -> Result<f64, LabwareError> {
    v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| bad(path, "expected a number"))
}

fn field<'a>(v: &'a Value, key: &str, path: &str) -> Result<&'a Value, LabwareError> {
    v.get(key).ok_or_else(|| bad(path, &format!("missing key `{key}`")))
}

/// Converts an already parsed Opentrons v2 labware definition (protocols embed them).
pub fn import_value(v: &Value) -> Result<LabwareDef, LabwareError> {
    let schema = v.get("schemaVersion").and_then(Value::as_f64);
    if schema != Some(2.0) {
        return Err(bad("$.schemaVersion", "expected 2 (Opentrons labware schema v2)"));
    }
    let params = field(v, "parameters", "$")?;
    let load_name = field(params, "loadName", "$.parameters")?
        .as_str()
        .ok_or_else(|| bad("$.parameters.loadName", "expected a string"))?
        .to_string();
    let meta = field(v, "metadata", "$")?;
    let display_name = meta.get("displayName").and_then(Value::as_str).unwrap_or(&load_name).to_string();
    let is_tiprack = params.get("isTiprack").and_then(Value::as_bool).unwrap_or(false);
    let kind = match meta.get("displayCategory").and_then(Value::as_str) {
        _ if is_tiprack => LabwareKind::TipRack,
        Some("wellPlate") => LabwareKind::WellPlate,
        Some("tipRack") => LabwareKind::TipRack,
        Some("reservoir") => LabwareKind::Reservoir,
        Some("tubeRack") => LabwareKind::TubeRack,
        Some("aluminumBlock") => LabwareKind::AluminumBlock,
        Some("adapter") => LabwareKind::Adapter,
        Some("lid") => LabwareKind::Lid,
        Some("trash") => LabwareKind::Trash,
        _ => LabwareKind::Other,
    };
    let dims = field(v, "dimensions", "$")?;
    let footprint = Footprint {
        x_mm: num(field(dims, "xDimension", "$.dimensions")?, "$.dimensions.xDimension")?,
        y_mm: num(field(dims, "yDimension", "$.dimensions")?, "$.dimensions.yDimension")?,
        z_mm: num(field(dims, "zDimension", "$.dimensions")?, "$.dimensions.zDimension")?,
    };
    let wells_obj = field(v, "wells", "$")?.as_object().ok_or_else(|| bad("$.wells", "expected an object"))?;
    let ordering = field(v, "ordering", "$")?.as_array().ok_or_else(|| bad("$.ordering", "expected a list"))?;
    let mut wells = Vec::with_capacity(wells_obj.len());
    for (ci, column) in ordering.iter().enumerate() {
        let column = column.as_array().ok_or_else(|| bad(&format!("$.ordering[{ci}]"), "expected a list"))?;
        for (wi, name) in column.iter().enumerate() {
            let path = format!("$.ordering[{ci}][{wi}]");
            let name = name.as_str().ok_or_else(|| bad(&path, "expected a well name"))?;
            let w = wells_obj.get(name).ok_or_else(|| bad(&path, &format!("well {name} is not in $.wells")))?;
            wells.push(import_well(name, w)?);
        }
    }
    if wells.len() != wells_obj.len() {
        return Err(bad("$.ordering", "does not list every well of $.wells exactly once"));
    }
    let tip = if is_tiprack {
        let length_mm = num(field(params, "tipLength", "$.parameters")?, "$.parameters.tipLength")?;
        let volume_ul = wells.first().map(|w| w.max_volume_ul).unwrap_or(0.0);
        Some(TipSpec { volume_ul, length_mm })
    } else {
        None
    };
    let brand = v.get("brand").and_then(|b| b.get("brand")).and_then(Value::as_str).map(str::to_string);
    let version = v.get("version").and_then(Value::as_f64).unwrap_or(1.0);
    let namespace = v.get("namespace").and_then(Value::as_str).unwrap_or("opentrons");
    LabwareDef {
        format: FORMAT.to_string(),
        load_name: load_name.clone(),
        display_name,
        kind,
        brand,
        footprint,
        tip,
        wells,
        source: Some(format!("Opentrons labware schema v2 {namespace}/{load_name}/{version} (Apache-2.0)")),
        index: Default::default(),
    }
    .validated()
}

fn import_well(name: &str, w: &Value) -> Result<Well, LabwareError> {
    let path = format!("$.wells.{name}");
    let get = |k: &str| -> Result<f64, LabwareError> { num(field(w, k, &path)?, &format!("{path}.{k}")) };
    let shape = match w.get("shape").and_then(Value::as_str) {
        Some("circular") => WellShape::Circular { diameter_mm: get("diameter")? },
        Some("rectangular") => WellShape::Rectangular { length_mm: get("xDimension")?, width_mm: get("yDimension")? },
        _ => return Err(bad(&format!("{path}.shape"), "expected \"circular\" or \"rectangular\"")),
    };
    Ok(Well {
        name: name.to_string(),
        x_mm: get("x")?,
        y_mm: get("y")?,
        z_mm: get("z")?,
        depth_mm: get("depth")?,
        shape,
        max_volume_ul: get("totalLiquidVolume")?,
    })
}

/// Where an Opentrons robot finds a labware type: `namespace/loadName/version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionUri {
    pub namespace: String,
    pub load_name: String,
    pub version: u32,
}

impl std::fmt::Display for DefinitionUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.load_name, self.version)
    }
}

/// The namespace Opentrons gives labware a client defines itself.
pub const CUSTOM_NAMESPACE: &str = "custom_beta";

/// The Opentrons definition a labware type was imported from (its `source` says so), if it is
/// one of Opentrons' own (namespace `opentrons`): a robot already carries those and loads them by
/// name; any other type (a protocol's custom labware too) is posted to the run first ([`export`]).
pub fn uri_of(def: &LabwareDef) -> Option<DefinitionUri> {
    let rest = def.source.as_deref()?.strip_prefix("Opentrons labware schema v2 ")?;
    let uri = rest.split_whitespace().next()?;
    let mut parts = uri.split('/');
    let (namespace, load_name, version) = (parts.next()?, parts.next()?, parts.next()?);
    let version = version.parse::<f64>().ok().filter(|v| v.fract() == 0.0 && *v >= 1.0)? as u32;
    let carried = namespace == "opentrons";
    (parts.next().is_none() && load_name == def.load_name && carried).then(|| DefinitionUri {
        namespace: namespace.to_string(),
        load_name: load_name.to_string(),
        version,
    })
}

/// A labware type as an Opentrons schema v2 definition in `namespace` (version 1), for a robot
/// that does not carry it: what [`import`] reads back, geometry for geometry.
pub fn export(def: &LabwareDef, namespace: &str) -> Value {
    use serde_json::{json, Map};
    let mut ordering: Vec<(u32, Vec<Value>)> = Vec::new();
    let mut wells = Map::new();
    for w in &def.wells {
        let column: u32 = w.name.trim_start_matches(|c: char| c.is_ascii_alphabetic()).parse().unwrap_or(0);
        match ordering.iter_mut().find(|(c, _)| *c == column) {
            Some((_, names)) => names.push(json!(w.name)),
            None => ordering.push((column, vec![json!(w.name)])),
        }
        let mut well = json!({
            "depth": w.depth_mm, "totalLiquidVolume": w.max_volume_ul,
            "x": w.x_mm, "y": w.y_mm, "z": w.z_mm,
        });
        match w.shape {
            WellShape::Circular { diameter_mm } => {
                well["shape"] = json!("circular");
                well["diameter"] = json!(diameter_mm);
            }
            WellShape::Rectangular { length_mm, width_mm } => {
                well["shape"] = json!("rectangular");
                well["xDimension"] = json!(length_mm);
                well["yDimension"] = json!(width_mm);
            }
        }
        wells.insert(w.name.clone(), well);
    }
    let category = match def.kind {
        LabwareKind::WellPlate => "wellPlate",
        LabwareKind::TipRack => "tipRack",
        LabwareKind::Reservoir => "reservoir",
        LabwareKind::TubeRack => "tubeRack",
        LabwareKind::AluminumBlock => "aluminumBlock",
        LabwareKind::Adapter => "adapter",
        LabwareKind::Lid => "lid",
        LabwareKind::Trash => "trash",
        _ => "other",
    };
    let mut parameters = json!({
        "format": "irregular", "loadName": def.load_name, "isTiprack": def.tip.is_some(),
        "isMagneticModuleCompatible": false,
    });
    if let Some(tip) = def.tip {
        parameters["tipLength"] = json!(tip.length_mm);
    }
    let names: Vec<Value> = def.wells.iter().map(|w| json!(w.name)).collect();
    json!({
        "schemaVersion": 2, "version": 1, "namespace": namespace,
        "metadata": {"displayName": def.display_name, "displayCategory": category, "displayVolumeUnits": "µL", "tags": []},
        "brand": {"brand": def.brand.clone().unwrap_or_else(|| "generic".into()), "brandId": []},
        "parameters": parameters,
        "ordering": ordering.into_iter().map(|(_, names)| Value::Array(names)).collect::<Vec<_>>(),
        "cornerOffsetFromSlot": {"x": 0, "y": 0, "z": 0},
        "dimensions": {"xDimension": def.footprint.x_mm, "yDimension": def.footprint.y_mm, "zDimension": def.footprint.z_mm},
        "wells": wells,
        "groups": [{"metadata": {}, "wells": names}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_type_names_its_opentrons_definition_and_exports_to_the_same_geometry() {
        let lib = crate::Library::shipped();
        assert!(lib.len() >= 40);
        for def in lib.iter() {
            let uri = uri_of(def).unwrap_or_else(|| panic!("{} has no Opentrons URI", def.load_name));
            assert_eq!(uri.namespace, "opentrons");
            assert_eq!(uri.load_name, def.load_name);
            let back = import_value(&export(def, CUSTOM_NAMESPACE)).unwrap();
            assert_eq!(back.wells, def.wells, "{}", def.load_name);
            assert_eq!((back.kind, back.tip, back.footprint), (def.kind, def.tip, def.footprint), "{}", def.load_name);
            let source = back.source.clone().unwrap_or_default();
            assert!(source.contains(&format!("custom_beta/{}/1", def.load_name)), "{source}");
            assert_eq!(uri_of(&back), None, "a custom definition is posted to the run, not loaded by name");
        }
    }

    #[test]
    fn a_type_from_elsewhere_has_no_opentrons_uri() {
        let mut def = crate::Library::shipped().get("corning_96_wellplate_360ul_flat").unwrap().clone();
        def.source = Some("measured with calipers, 2026".into());
        assert_eq!(uri_of(&def), None);
        def.source = Some("Opentrons labware schema v2 opentrons/other_plate/1 (Apache-2.0)".into());
        assert_eq!(uri_of(&def), None, "a URI naming another load name is not this type's");
    }
}
