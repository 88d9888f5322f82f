//! A run's results in the shape people use them: one row per well and wavelength with what the
//! plate map says the well is ([`result_rows`]: `labctl results` as CSV and Parquet, the Python
//! client's DataFrame), and one read per result and wavelength for the analysis ([`reads`]:
//! `labctl results --plot`, the console's results page).

use protos::labwright::v1 as pb;

/// One row of a run's results: a well at one wavelength, what it is in the experiment, its
/// value. `labctl results` writes these as CSV and as Parquet, the Python client as a
/// DataFrame, all with the same columns (docs/python-client.md lists them).
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow<'a> {
    pub run: &'a str,
    pub protocol: &'a str,
    pub result: &'a str,
    pub labware: &'a str,
    pub kind: &'a str,
    pub well: &'a str,
    /// The plate map's entry for the well; `None` where the map says nothing.
    pub design: Option<&'a pb::WellDesign>,
    /// Absorbance: the wavelength; fluorescence: the emission; `None` for luminescence.
    pub wavelength_nm: Option<f64>,
    pub value: f64,
    pub unit: &'a str,
    pub read_at_ms: i64,
    /// Where the well's contents came from (lineage); `None` when not from the lab's containers.
    pub origin: Option<&'a pb::WellOrigin>,
}

/// The rows of a run's results: one per well and wavelength (values are well-major).
pub fn result_rows<'a>(run: &'a pb::RunInfo, rs: &'a [pb::Result]) -> Vec<ResultRow<'a>> {
    let mut rows = Vec::new();
    for r in rs {
        let absorbance = r.kind == "absorbance";
        let per = if absorbance { r.wavelengths_nm.len().max(1) } else { 1 };
        for (i, well) in r.wells.iter().enumerate() {
            for k in 0..per {
                // Fluorescence lists excitation then emission; the emission is what is read.
                let wavelength_nm = r.wavelengths_nm.get(if absorbance { k } else { 1 }).copied();
                rows.push(ResultRow {
                    run: &run.id,
                    protocol: &run.name,
                    result: &r.id,
                    labware: &r.labware,
                    kind: &r.kind,
                    well,
                    design: r.design.get(i).filter(|d| !d.role.is_empty()),
                    wavelength_nm,
                    value: r.values.get(i * per + k).copied().unwrap_or(f64::NAN),
                    unit: &r.unit,
                    read_at_ms: r.read_at_ms,
                    origin: r.origins.get(i).filter(|o| !o.samples.is_empty() || !o.from.is_empty()),
                });
            }
        }
    }
    rows
}

/// A run's results as the analysis reads them: one read per result and wavelength.
pub fn reads(run: &pb::RunInfo, rs: &[pb::Result]) -> Vec<analysis::Read> {
    let mut reads: Vec<analysis::Read> = Vec::new();
    for row in result_rows(run, rs) {
        let same = |r: &&mut analysis::Read| r.result == row.result && r.wavelength_nm == row.wavelength_nm;
        let well = analysis::Well {
            well: row.well.to_string(),
            value: row.value,
            role: row.design.map(|d| d.role.clone()).unwrap_or_default(),
            sample: row.design.map(|d| d.sample.clone()).unwrap_or_default(),
            group: row.design.map(|d| d.group.clone()).unwrap_or_default(),
            concentration: row.design.and_then(|d| d.concentration),
            concentration_unit: row.design.map(|d| d.concentration_unit.clone()).unwrap_or_default(),
        };
        match reads.iter_mut().find(|r| same(r)) {
            Some(r) => r.wells.push(well),
            None => reads.push(analysis::Read {
                result: row.result.to_string(),
                labware: row.labware.to_string(),
                kind: row.kind.to_string(),
                wavelength_nm: row.wavelength_nm,
                unit: row.unit.to_string(),
                wells: vec![well],
            }),
        }
    }
    reads
}
