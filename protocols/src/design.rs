//! The experimental design of a plate: which sample, group and role each well holds, at what
//! concentration, and which replicate it is. Declared once per labware (`map:`, inline or as a
//! CSV table) and carried through compilation into every result row. Pure.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a well is in the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Sample,
    Blank,
    Control,
    Standard,
}

impl Role {
    /// The words `parse` takes (any case; `unknown` is a sample).
    pub const WORDS: &'static [&'static str] = &["sample", "unknown", "blank", "control", "standard"];

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "sample" | "unknown" => Role::Sample,
            "blank" => Role::Blank,
            "control" => Role::Control,
            "standard" => Role::Standard,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sample => "sample",
            Role::Blank => "blank",
            Role::Control => "control",
            Role::Standard => "standard",
        }
    }
}

/// Concentration units a plate map may use; the value is kept in the unit written.
pub const CONCENTRATION_UNITS: [&str; 16] = [
    "M", "mM", "uM", "nM", "pM", "fM", "g/L", "mg/mL", "ug/mL", "ng/mL", "pg/mL", "%", "x", "U/mL", "IU/mL", "cells/mL",
];

/// Reads `10 uM`, `0.5 mg/mL`, `2 x`: the value and the unit as listed in
/// [`CONCENTRATION_UNITS`] (`µ` written as `u`).
pub fn concentration(text: &str) -> Result<(f64, String), String> {
    let t = text.trim();
    let (number, unit) = crate::units::split_number(t);
    let value: f64 = number.parse().map_err(|_| format!("`{t}` is not a concentration like `10 uM`"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("`{t}`: a concentration is a finite number ≥ 0"));
    }
    let unit = unit.replace(['µ', 'μ'], "u");
    match CONCENTRATION_UNITS.iter().find(|u| u.eq_ignore_ascii_case(&unit)) {
        Some(u) => Ok((value, u.to_string())),
        None => {
            Err(format!("`{t}`: unknown concentration unit `{unit}` (use one of {})", CONCENTRATION_UNITS.join(", ")))
        }
    }
}

/// Concentrations of one map entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Concentration {
    None,
    /// Every well the same.
    Fixed {
        value: f64,
        unit: String,
    },
    /// The i-th well (in the selection's order) at start ÷ factor^i: a dilution series.
    Series {
        start: f64,
        unit: String,
        factor: f64,
    },
    /// One per well, in the selection's order.
    List {
        values: Vec<f64>,
        unit: String,
    },
}

/// One well's design, as the plan and every result row carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WellDesign {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concentration: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// 1, 2, … among the wells of the same role, sample and concentration (in map order).
    pub replicate: u32,
}

/// A map entry with its wells resolved (in selection order).
#[derive(Debug, Clone)]
pub struct Entry {
    pub wells: Vec<String>,
    pub sample: Option<String>,
    pub group: Option<String>,
    pub role: Role,
    pub concentration: Concentration,
}

/// The wells' designs from the map's entries; an error names a well declared twice or a list of
/// concentrations that does not match its wells.
pub fn layout(entries: &[Entry]) -> Result<BTreeMap<String, WellDesign>, (usize, String)> {
    let mut out: BTreeMap<String, WellDesign> = BTreeMap::new();
    let mut replicates: BTreeMap<(Role, Option<String>, Option<String>), u32> = BTreeMap::new();
    for (k, e) in entries.iter().enumerate() {
        if let Concentration::List { values, .. } = &e.concentration {
            if values.len() != e.wells.len() {
                return Err((
                    k,
                    format!(
                        "{} concentrations for {} wells; give one per well, in the wells' order",
                        values.len(),
                        e.wells.len()
                    ),
                ));
            }
        }
        for (i, well) in e.wells.iter().enumerate() {
            let (value, unit) = match &e.concentration {
                Concentration::None => (None, None),
                Concentration::Fixed { value, unit } => (Some(*value), Some(unit.clone())),
                Concentration::Series { start, unit, factor } => {
                    (Some(start / factor.powi(i as i32)), Some(unit.clone()))
                }
                Concentration::List { values, unit } => (values.get(i).copied(), Some(unit.clone())),
            };
            // Replicates share role, sample and concentration (to 1e-9 relative).
            let conc_key = value.map(|v| format!("{:.9e} {}", v, unit.clone().unwrap_or_default()));
            let n = replicates.entry((e.role, e.sample.clone(), conc_key)).or_insert(0);
            *n += 1;
            let design = WellDesign {
                sample: e.sample.clone(),
                group: e.group.clone(),
                role: e.role,
                concentration: value,
                unit,
                replicate: *n,
            };
            if out.insert(well.clone(), design).is_some() {
                return Err((k, format!("well {well} is in the map twice; each well has one design")));
            }
        }
    }
    Ok(out)
}

/// One row of a CSV plate map: the well selection and the fields as written.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRow {
    pub line: usize,
    pub wells: String,
    pub fields: BTreeMap<String, String>,
}

/// Reads a plate map written as a CSV table: a header with `well` and any of `sample`, `group`,
/// `role`, `concentration`; one row per well (or well selection). Plain comma-separated values;
/// a field in double quotes may hold commas.
pub fn csv(text: &str) -> Result<Vec<CsvRow>, String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else { return Err("the plate map table is empty".into()) };
    let names: Vec<String> = split_csv(header).into_iter().map(|h| h.trim().to_ascii_lowercase()).collect();
    let known = ["well", "wells", "sample", "group", "role", "concentration"];
    if let Some(bad) = names.iter().find(|n| !known.contains(&n.as_str())) {
        return Err(format!("unknown column `{bad}` in the plate map (columns: {})", known.join(", ")));
    }
    let Some(well_col) = names.iter().position(|n| n == "well" || n == "wells") else {
        return Err("the plate map table needs a `well` column".into());
    };
    let mut rows = Vec::new();
    for (i, line) in lines {
        let cells = split_csv(line);
        if cells.len() != names.len() {
            return Err(format!("line {}: {} cells for {} columns", i + 1, cells.len(), names.len()));
        }
        let fields = names
            .iter()
            .zip(&cells)
            .enumerate()
            .filter(|(k, (_, v))| *k != well_col && !v.trim().is_empty())
            .map(|(_, (n, v))| (n.clone(), v.trim().to_string()))
            .collect();
        rows.push(CsvRow { line: i + 1, wells: cells[well_col].trim().to_string(), fields });
    }
    Ok(rows)
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(wells: &[&str], sample: &str, role: Role, c: Concentration) -> Entry {
        Entry {
            wells: wells.iter().map(|w| w.to_string()).collect(),
            sample: Some(sample.into()),
            group: None,
            role,
            concentration: c,
        }
    }

    #[test]
    fn a_dilution_series_and_its_replicates() {
        let series = |wells: &[&str]| {
            entry(wells, "drug", Role::Sample, Concentration::Series { start: 90.0, unit: "uM".into(), factor: 3.0 })
        };
        let map = layout(&[series(&["A1", "A2", "A3"]), series(&["B1", "B2", "B3"])]).unwrap();
        assert_eq!(map["A3"].concentration, Some(10.0));
        assert_eq!((map["A2"].replicate, map["B2"].replicate), (1, 2), "same sample and concentration: replicates");
        assert_eq!(map["B1"].unit.as_deref(), Some("uM"));
    }

    #[test]
    fn a_well_twice_and_a_short_list_are_refused() {
        let blank = entry(&["A1"], "blank", Role::Blank, Concentration::None);
        assert!(layout(&[blank.clone(), blank]).unwrap_err().1.contains("twice"));
        let short =
            entry(&["A1", "A2"], "s", Role::Sample, Concentration::List { values: vec![1.0], unit: "nM".into() });
        assert!(layout(&[short]).unwrap_err().1.contains("1 concentrations for 2 wells"));
    }

    #[test]
    fn concentrations_read_with_their_unit() {
        assert_eq!(concentration("10 µM").unwrap(), (10.0, "uM".into()));
        assert_eq!(concentration("0.5 mg/ml").unwrap(), (0.5, "mg/mL".into()));
        assert!(concentration("10 furlongs").unwrap_err().contains("unknown concentration unit"));
        assert!(concentration("-1 uM").is_err());
    }

    #[test]
    fn a_csv_table_reads_by_header() {
        let rows =
            csv("well,sample,group,role,concentration\nA1,,,blank,\nB1:B3,\"std, lot 4\",curve,standard,10 ng/mL\n")
                .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].wells, "B1:B3");
        assert_eq!(rows[1].fields["sample"], "std, lot 4");
        assert!(!rows[0].fields.contains_key("sample"));
        assert!(csv("well,colour\nA1,red\n").unwrap_err().contains("unknown column `colour`"));
        assert!(csv("sample\nx\n").unwrap_err().contains("`well` column"));
    }
}
