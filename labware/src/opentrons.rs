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
