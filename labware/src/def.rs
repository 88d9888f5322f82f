//! Labwright's own labware definition format (`labwright.labware/1`), documented in `docs/labware.md`.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The format tag every Labwright labware file carries.
pub const FORMAT: &str = "labwright.labware/1";

/// What a piece of labware is for; decides which instruments accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum LabwareKind {
    WellPlate,
    TipRack,
    Reservoir,
    TubeRack,
    AluminumBlock,
    Adapter,
    Lid,
    Trash,
    Other,
}

impl LabwareKind {
    /// The snake_case name used in files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            LabwareKind::WellPlate => "well_plate",
            LabwareKind::TipRack => "tip_rack",
            LabwareKind::Reservoir => "reservoir",
            LabwareKind::TubeRack => "tube_rack",
            LabwareKind::AluminumBlock => "aluminum_block",
            LabwareKind::Adapter => "adapter",
            LabwareKind::Lid => "lid",
            LabwareKind::Trash => "trash",
            LabwareKind::Other => "other",
        }
    }
}

/// Outer dimensions of the labware in millimetres (x = length, y = width, z = height).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Footprint {
    pub x_mm: f64,
    pub y_mm: f64,
    pub z_mm: f64,
}

/// Cross-section of a well.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WellShape {
    Circular { diameter_mm: f64 },
    Rectangular { length_mm: f64, width_mm: f64 },
}

/// One well (or tube, or tip position). `x`, `y`, `z` are the well's bottom centre relative to
/// the labware's front-left-bottom corner, in millimetres.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Well {
    pub name: String,
    pub x_mm: f64,
    pub y_mm: f64,
    pub z_mm: f64,
    pub depth_mm: f64,
    pub shape: WellShape,
    pub max_volume_ul: f64,
}

/// The tip a tip rack holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TipSpec {
    pub volume_ul: f64,
    pub length_mm: f64,
}

/// One labware type. Wells are listed column by column (A1, B1, … H1, A2, …), the order a
/// pipette visits them by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabwareDef {
    pub format: String,
    pub load_name: String,
    pub display_name: String,
    pub kind: LabwareKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    pub footprint: Footprint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tip: Option<TipSpec>,
    pub wells: Vec<Well>,
    /// Where the dimensions come from (a catalogue, a drawing, an imported definition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip)]
    pub(crate) index: WellIndex,
}

/// Lookup tables derived from `wells`; rebuilt by [`LabwareDef::validated`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct WellIndex {
    by_name: HashMap<String, usize>,
    rows: Vec<String>,
    columns: Vec<u32>,
}

/// A labware definition that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LabwareError {
    #[error("not valid labware JSON: {0}")]
    Json(String),
    #[error("unsupported format {found:?}: expected \"{FORMAT}\"")]
    Format { found: String },
    #[error("well {well}: {problem}")]
    Well { well: String, problem: String },
    #[error("{0}")]
    Invalid(String),
}

impl LabwareDef {
    /// Parses and validates a Labwright labware JSON file.
    pub fn from_json(text: &str) -> Result<LabwareDef, LabwareError> {
        let def: LabwareDef = serde_json::from_str(text).map_err(|e| LabwareError::Json(e.to_string()))?;
        def.validated()
    }

    /// Serialises to pretty JSON (the shipped library's on-disk form).
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks geometry and names, and builds the lookup index.
    pub fn validated(mut self) -> Result<LabwareDef, LabwareError> {
        if self.format != FORMAT {
            return Err(LabwareError::Format { found: self.format });
        }
        if self.load_name.is_empty() {
            return Err(LabwareError::Invalid("load_name is empty".into()));
        }
        let f = self.footprint;
        for (axis, v) in [("x", f.x_mm), ("y", f.y_mm), ("z", f.z_mm)] {
            // Zero is allowed: Opentrons ships system items (lid stacks) without a footprint.
            if !(v.is_finite() && v >= 0.0) {
                return Err(LabwareError::Invalid(format!(
                    "footprint {axis}_mm must be a non-negative number, got {v}"
                )));
            }
        }
        if let Some(tip) = self.tip {
            if !(tip.volume_ul.is_finite() && tip.volume_ul > 0.0) {
                return Err(LabwareError::Invalid("tip volume_ul must be positive".into()));
            }
        }
        let mut index = WellIndex::default();
        let mut rows = std::collections::BTreeSet::new();
        let mut cols = std::collections::BTreeSet::new();
        for (i, w) in self.wells.iter().enumerate() {
            let bad = |problem: String| LabwareError::Well { well: w.name.clone(), problem };
            let (row, col) = crate::address::split_well_name(&w.name)
                .ok_or_else(|| bad("name must be row letters then a column number, like A1".into()))?;
            for (what, v) in [("depth_mm", w.depth_mm), ("max_volume_ul", w.max_volume_ul)] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(bad(format!("{what} must be a non-negative number, got {v}")));
                }
            }
            for (what, v) in [("x_mm", w.x_mm), ("y_mm", w.y_mm), ("z_mm", w.z_mm)] {
                if !v.is_finite() {
                    return Err(bad(format!("{what} must be a number, got {v}")));
                }
            }
            if index.by_name.insert(w.name.clone(), i).is_some() {
                return Err(bad("appears twice".into()));
            }
            rows.insert((row.len(), row.to_string()));
            cols.insert(col);
        }
        index.rows = rows.into_iter().map(|(_, r)| r).collect();
        index.columns = cols.into_iter().collect();
        self.index = index;
        Ok(self)
    }

    /// The well with this exact name.
    pub fn well(&self, name: &str) -> Option<&Well> {
        self.index.by_name.get(name).map(|&i| &self.wells[i])
    }

    /// Index of the well in [`LabwareDef::wells`].
    pub fn well_index(&self, name: &str) -> Option<usize> {
        self.index.by_name.get(name).copied()
    }

    /// The wells a head of `channels` channels reaches with its first channel in well `first`
    /// (indices into [`LabwareDef::wells`]; the rule in docs/protocol-language.md,
    /// "Multi-channel heads"): the channels are 9 mm apart, so they take every row of an 8-row
    /// plate, every other row of a 16-row plate, one well each; over labware with fewer rows
    /// than channels (a reservoir's trough) they all dip into the same well. `None` when the
    /// head would reach past the last row.
    pub fn head_wells(&self, first: usize, channels: u32) -> Option<Vec<usize>> {
        let n = channels.max(1) as usize;
        if n == 1 {
            return Some(vec![first]);
        }
        let rows = self.rows();
        if rows.len() < n {
            return Some(vec![first; n]);
        }
        if rows.len() % n != 0 {
            return None;
        }
        let step = rows.len() / n;
        let name = &self.wells.get(first)?.name;
        let row = rows.iter().position(|r| name.starts_with(r.as_str()) && name[r.len()..].parse::<u32>().is_ok())?;
        let column = &name[rows[row].len()..];
        (0..n).map(|i| self.well_index(&format!("{}{column}", rows.get(row + i * step)?))).collect()
    }

    /// Row names in order (A, B, …, Z, AA, …).
    pub fn rows(&self) -> &[String] {
        &self.index.rows
    }

    /// Column numbers in order.
    pub fn columns(&self) -> &[u32] {
        &self.index.columns
    }

    /// "rows A–H, columns 1–12", for messages.
    pub fn grid_description(&self) -> String {
        match (self.rows(), self.columns()) {
            ([], _) | (_, []) => "no wells".to_string(),
            (rows, cols) => {
                let r = if rows.len() == 1 {
                    format!("row {}", rows[0])
                } else {
                    format!("rows {}–{}", rows[0], rows[rows.len() - 1])
                };
                let c = if cols.len() == 1 {
                    format!("column {}", cols[0])
                } else {
                    format!("columns {}–{}", cols[0], cols[cols.len() - 1])
                };
                format!("{r}, {c}")
            }
        }
    }

    /// Wells in row-major order (A1, A2, …), as Autoprotocol numbers them.
    pub fn row_major_names(&self) -> Vec<&str> {
        let mut names: Vec<&Well> = self.wells.iter().collect();
        names.sort_by_key(|w| {
            let (r, c) = crate::address::split_well_name(&w.name).unwrap_or(("", 0));
            (r.len(), r.to_string(), c)
        });
        names.into_iter().map(|w| w.name.as_str()).collect()
    }

    /// Whether this labware holds pipette tips.
    pub fn is_tip_rack(&self) -> bool {
        self.tip.is_some()
    }
}
