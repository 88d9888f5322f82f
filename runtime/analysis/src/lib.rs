//! Results people can use, from one read of a plate and its plate map: replicate statistics
//! with outliers flagged, a linear standard curve with the unknowns read off it, a
//! four-parameter logistic per dose-response series, and the plate and curves as SVG. Pure:
//! values in, numbers and pictures out (labctl and the console call it).
//!
//! The rules, in one place:
//! - Blanks: where the read has wells of role `blank`, their mean is subtracted from every other
//!   well before anything is fitted (reported as `blank`).
//! - Replicates: wells of the same role, sample, group and concentration; mean, SD (n − 1), CV;
//!   with 3 or more, a well whose modified z-score (0.6745 · |x − median| / MAD) exceeds 3.5 is
//!   flagged an outlier (Iglewicz and Hoaglin); flagged wells stay in the fits.
//! - Standard curve: wells of role `standard` with a concentration, a straight line; wells of
//!   role `sample` without a concentration are unknowns, read off the line (flagged when outside
//!   the standards' range).
//! - Dose-response: wells of role `sample` with concentrations, one logistic per sample and
//!   group.

pub mod fit;
pub mod plot;

use serde::Serialize;
use std::collections::BTreeMap;

/// One well of a read, with what the plate map says it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Well {
    pub well: String,
    pub value: f64,
    /// `sample`, `blank`, `control`, `standard`; empty where the map says nothing.
    pub role: String,
    pub sample: String,
    pub group: String,
    pub concentration: Option<f64>,
    pub concentration_unit: String,
}

/// One read (at one wavelength).
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub result: String,
    pub labware: String,
    pub kind: String,
    pub wavelength_nm: Option<f64>,
    pub unit: String,
    pub wells: Vec<Well>,
}

/// Replicates of one condition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replicates {
    pub role: String,
    pub sample: String,
    pub group: String,
    pub concentration: Option<f64>,
    pub wells: Vec<String>,
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation; `None` for a single well.
    pub sd: Option<f64>,
    /// SD / mean, %; `None` where SD is, or the mean is 0.
    pub cv_percent: Option<f64>,
    pub outliers: Vec<String>,
}

/// An unknown read off the standard curve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unknown {
    pub sample: String,
    pub group: String,
    pub wells: Vec<String>,
    /// The (blank-corrected) mean reading.
    pub mean: f64,
    pub concentration: f64,
    /// Outside the standards' concentrations: extrapolated, not interpolated.
    pub extrapolated: bool,
}

/// The standard curve and what it says about the unknowns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StandardCurve {
    pub unit: String,
    pub points: Vec<(f64, f64)>,
    pub fit: Result<fit::Line, String>,
    pub unknowns: Vec<Unknown>,
}

/// A dose-response series and its logistic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DoseResponse {
    pub sample: String,
    pub group: String,
    pub unit: String,
    pub points: Vec<(f64, f64)>,
    pub fit: Result<fit::Logistic, String>,
}

/// Everything about one read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub result: String,
    pub labware: String,
    pub kind: String,
    pub wavelength_nm: Option<f64>,
    pub unit: String,
    /// Mean of the blanks, subtracted from every other well; `None` without blanks.
    pub blank: Option<f64>,
    pub replicates: Vec<Replicates>,
    pub standard_curve: Option<StandardCurve>,
    pub dose_response: Vec<DoseResponse>,
}

/// What makes wells replicates of each other.
#[derive(Debug, Clone, PartialEq)]
struct Condition {
    role: String,
    sample: String,
    group: String,
    concentration: Option<f64>,
}

impl Condition {
    fn of(w: &Well) -> Condition {
        Condition {
            role: w.role.clone(),
            sample: w.sample.clone(),
            group: w.group.clone(),
            concentration: w.concentration,
        }
    }
}

/// Analyses one read.
pub fn analyze(read: &Read) -> Analysis {
    let blanks: Vec<f64> = read.wells.iter().filter(|w| w.role == "blank").map(|w| w.value).collect();
    let blank = (!blanks.is_empty()).then(|| mean(&blanks));
    let corrected = |w: &Well| if w.role == "blank" { w.value } else { w.value - blank.unwrap_or(0.0) };

    // Replicates: wells of one condition, in plate order of their first well.
    let mut groups: Vec<(Condition, Vec<&Well>)> = Vec::new();
    for w in read.wells.iter().filter(|w| !w.role.is_empty()) {
        let key = Condition::of(w);
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(w),
            None => groups.push((key, vec![w])),
        }
    }
    // Standards first, then samples, controls and blanks; plate order within each.
    let rank = |role: &str| ["standard", "sample", "control", "blank"].iter().position(|r| *r == role).unwrap_or(4);
    groups.sort_by_key(|g| rank(&g.0.role));
    let replicates: Vec<Replicates> = groups
        .into_iter()
        .map(|(c, wells)| {
            let values: Vec<f64> = wells.iter().map(|w| corrected(w)).collect();
            let m = mean(&values);
            let sd = (values.len() > 1).then(|| sd(&values, m));
            Replicates {
                outliers: outliers(&values).into_iter().map(|i| wells[i].well.clone()).collect(),
                wells: wells.iter().map(|w| w.well.clone()).collect(),
                role: c.role,
                sample: c.sample,
                group: c.group,
                concentration: c.concentration,
                n: values.len(),
                mean: m,
                sd,
                cv_percent: sd.filter(|_| m != 0.0).map(|s| 100.0 * s / m.abs()),
            }
        })
        .collect();

    let unit_of = |ws: &[&Well]| ws.first().map(|w| w.concentration_unit.clone()).unwrap_or_default();
    let standards: Vec<&Well> =
        read.wells.iter().filter(|w| w.role == "standard" && w.concentration.is_some()).collect();
    let standard_curve = (!standards.is_empty()).then(|| {
        let points: Vec<(f64, f64)> =
            standards.iter().map(|w| (w.concentration.unwrap_or(0.0), corrected(w))).collect();
        let fit = fit::line(&points);
        let (lo, hi) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let unknowns = match &fit {
            Ok(line) => replicates
                .iter()
                .filter(|r| r.role == "sample" && r.concentration.is_none())
                .map(|r| {
                    let c = line.solve(r.mean);
                    Unknown {
                        sample: r.sample.clone(),
                        group: r.group.clone(),
                        wells: r.wells.clone(),
                        mean: r.mean,
                        concentration: c,
                        extrapolated: c < lo || c > hi,
                    }
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        StandardCurve { unit: unit_of(&standards), points, fit: fit.map_err(|e| e.to_string()), unknowns }
    });

    let mut series: BTreeMap<(String, String), Vec<&Well>> = BTreeMap::new();
    for w in read.wells.iter().filter(|w| w.role == "sample" && w.concentration.is_some()) {
        series.entry((w.sample.clone(), w.group.clone())).or_default().push(w);
    }
    let dose_response = series
        .into_iter()
        .map(|((sample, group), wells)| {
            let points: Vec<(f64, f64)> =
                wells.iter().map(|w| (w.concentration.unwrap_or(0.0), corrected(w))).collect();
            DoseResponse {
                sample,
                group,
                unit: unit_of(&wells),
                fit: fit::four_pl(&points).map_err(|e| e.to_string()),
                points,
            }
        })
        .collect();

    Analysis {
        result: read.result.clone(),
        labware: read.labware.clone(),
        kind: read.kind.clone(),
        wavelength_nm: read.wavelength_nm,
        unit: read.unit.clone(),
        blank,
        replicates,
        standard_curve,
        dose_response,
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn sd(v: &[f64], m: f64) -> f64 {
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() as f64 - 1.0)).sqrt()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Indices of the values whose modified z-score exceeds 3.5 (n ≥ 3).
fn outliers(v: &[f64]) -> Vec<usize> {
    if v.len() < 3 {
        return Vec::new();
    }
    let med = median(v);
    let mad = median(&v.iter().map(|x| (x - med).abs()).collect::<Vec<_>>());
    if mad == 0.0 {
        // Most wells agree exactly: any that differs is the odd one out.
        let same = v.iter().filter(|x| **x == med).count();
        if same * 2 <= v.len() {
            return Vec::new();
        }
        return v.iter().enumerate().filter(|(_, x)| **x != med).map(|(i, _)| i).collect();
    }
    v.iter().enumerate().filter(|(_, x)| 0.6745 * (*x - med).abs() / mad > 3.5).map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn well(well: &str, value: f64, role: &str, sample: &str, c: Option<f64>) -> Well {
        Well {
            well: well.into(),
            value,
            role: role.into(),
            sample: sample.into(),
            group: String::new(),
            concentration: c,
            concentration_unit: "mg/mL".into(),
        }
    }

    #[test]
    fn blanks_standards_unknowns_and_replicates() {
        let mut wells = vec![well("A9", 0.1, "blank", "", None), well("B9", 0.1, "blank", "", None)];
        for (i, c) in [2.0, 1.0, 0.5, 0.25].iter().enumerate() {
            wells.push(well(&format!("A{}", i + 1), 0.1 + 0.5 * c, "standard", "bsa", Some(*c)));
            wells.push(well(&format!("B{}", i + 1), 0.1 + 0.5 * c, "standard", "bsa", Some(*c)));
        }
        for (w, v) in [("C1", 0.6), ("D1", 0.6), ("E1", 0.6), ("F1", 0.95)] {
            wells.push(well(w, v, "sample", "lysate", None));
        }
        let read = Read {
            result: "r".into(),
            labware: "assay".into(),
            kind: "absorbance".into(),
            wavelength_nm: Some(595.0),
            unit: "OD".into(),
            wells,
        };
        let a = analyze(&read);
        assert_eq!(a.blank, Some(0.1));
        let curve = a.standard_curve.unwrap();
        let line = curve.fit.unwrap();
        assert!((line.slope.value - 0.5).abs() < 1e-12 && line.intercept.value.abs() < 1e-12);
        let u = &curve.unknowns[0];
        assert_eq!(u.wells, ["C1", "D1", "E1", "F1"]);
        let lysate = a.replicates.iter().find(|r| r.sample == "lysate").unwrap();
        assert_eq!(lysate.outliers, ["F1"], "{lysate:?}");
        assert!((u.concentration - (lysate.mean / 0.5)).abs() < 1e-12);
        assert!(!u.extrapolated);
    }
}
