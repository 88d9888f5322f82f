//! How client commands print what the server answered: results as CSV, listings as JSON,
//! the verdict on a run behind its results.

use crate::results::result_rows;
use anyhow::Result;
use protos::labwright::v1 as pb;

/// Results as CSV: one row per well and wavelength, each with the run, its protocol's name
/// (as the tenant named it), what the well is in the experiment (the plate map: sample, group,
/// role, replicate, concentration) and when the read was recorded (RFC 3339, UTC), so a file
/// stands on its own once it leaves labctl; last, the samples shipped the well's contents came
/// from and the container wells the run drew them from (`; ` between several).
pub(crate) fn results_csv(run: &pb::RunInfo, rs: &[pb::Result]) -> String {
    let mut s = String::from(
        "run,protocol,result,labware,kind,well,sample,group,role,replicate,concentration,concentration_unit,wavelength_nm,value,unit,read_at,source_samples,source_wells\n",
    );
    for r in result_rows(run, rs) {
        let (samples, wells) =
            r.origin.map_or((String::new(), String::new()), |o| (o.samples.join("; "), o.from.join("; ")));
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(r.run),
            csv_field(r.protocol),
            csv_field(r.result),
            csv_field(r.labware),
            csv_field(r.kind),
            csv_field(r.well),
            design_fields(r.design),
            r.wavelength_nm.unwrap_or(0.0),
            r.value,
            csv_field(r.unit),
            crate::clock::rfc3339(r.read_at_ms),
            csv_field(&samples),
            csv_field(&wells),
        ));
    }
    s
}

/// The plate map's six fields of one well, empty where the map says nothing.
fn design_fields(d: Option<&pb::WellDesign>) -> String {
    let Some(d) = d else { return ",,,,,".into() };
    format!(
        "{},{},{},{},{},{}",
        csv_field(&d.sample),
        csv_field(&d.group),
        csv_field(&d.role),
        d.replicate,
        d.concentration.map_or(String::new(), |c| c.to_string()),
        csv_field(&d.concentration_unit)
    )
}

/// One result as JSON, with its wells' designs when the protocol maps them.
pub(super) fn result_json(run: &pb::RunInfo, r: &pb::Result) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": r.id, "run": run.id, "protocol": run.name, "task": r.task, "labware": r.labware, "kind": r.kind,
        "wells": r.wells, "wavelengths_nm": r.wavelengths_nm, "values": r.values, "unit": r.unit,
        "read_at": crate::clock::rfc3339(r.read_at_ms),
    });
    if !r.origins.is_empty() {
        v["origins"] = r.origins.iter().map(|o| serde_json::json!({"samples": o.samples, "from": o.from})).collect();
    }
    if !r.design.is_empty() {
        v["design"] = r
            .design
            .iter()
            .map(|d| {
                serde_json::json!({"sample": d.sample, "group": d.group, "role": d.role, "replicate": d.replicate,
                                   "concentration": d.concentration, "concentration_unit": d.concentration_unit})
            })
            .collect();
    }
    v
}

/// A CSV field: quoted (quotes doubled) when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// What `labctl results` adds on stderr about the run behind the results, and its exit code: a
/// run that failed or was cancelled exits 1 and says why and what was kept (the reads that did
/// happen); one still under way says so; a finished run without measurements says that.
pub(super) fn results_verdict(run: &pb::RunInfo, n: usize) -> (String, i32) {
    let kept = match n {
        0 => "no read happened, so there are no results".to_string(),
        1 => "the 1 result shown is from a read that happened before it ended".to_string(),
        n => format!("the {n} results shown are from reads that happened before it ended"),
    };
    let why = if run.reason.is_empty() { String::new() } else { format!(" ({})", run.reason) };
    match run.state.as_str() {
        "failed" | "cancelled" => (format!("run {} {}{why}: {kept}", run.id, run.state), 1),
        "succeeded" if n == 0 => (format!("run {} succeeded and measured nothing (no read step)", run.id), 0),
        "succeeded" => (String::new(), 0),
        state => (format!("run {} is {state}: {n} result(s) so far", run.id), 0),
    }
}

/// A listing as one JSON document: `--format json` prints exactly one per command.
pub(super) fn json_array(items: impl Iterator<Item = serde_json::Value>) -> serde_json::Value {
    serde_json::Value::Array(items.collect())
}

pub(super) fn run_json(r: &pb::RunInfo) -> serde_json::Value {
    use crate::clock::rfc3339_opt;
    serde_json::json!({
        "id": r.id, "tenant": r.tenant, "name": r.name, "state": r.state, "reason": r.reason,
        "submitted_at": rfc3339_opt(r.submitted_at_ms), "started_at": rfc3339_opt(r.started_at_ms),
        "finished_at": rfc3339_opt(r.finished_at_ms), "service_class": r.service_class,
    })
}

pub(super) fn reservation_json(r: &pb::ReservationInfo) -> serde_json::Value {
    serde_json::json!({"id": r.id, "tenant": r.tenant, "instrument": r.instrument, "starts_at_ms": r.starts_at_ms, "ends_at_ms": r.ends_at_ms})
}

pub(super) fn print_reservation(r: &pb::ReservationInfo) -> Result<()> {
    out!(
        "{} {} reserves {} for {:.0} min",
        r.id,
        r.tenant,
        r.instrument,
        (r.ends_at_ms - r.starts_at_ms) as f64 / 60_000.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_results_row_names_its_run_protocol_and_read_time_and_quotes_what_needs_it() {
        let run = pb::RunInfo { id: "run_1".into(), name: "Bradford, v2".into(), ..Default::default() };
        let r = pb::Result {
            id: "res_1".into(),
            labware: "assay".into(),
            kind: "absorbance".into(),
            wells: vec!["A1".into(), "A2".into()],
            wavelengths_nm: vec![595.0],
            values: vec![0.5, 0.25],
            unit: "OD".into(),
            read_at_ms: 1_764_979_200_000,
            ..Default::default()
        };
        let csv = results_csv(&run, std::slice::from_ref(&r));
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "run,protocol,result,labware,kind,well,sample,group,role,replicate,concentration,concentration_unit,wavelength_nm,value,unit,read_at,source_samples,source_wells"
        );
        assert_eq!(
            lines[1],
            "run_1,\"Bradford, v2\",res_1,assay,absorbance,A1,,,,,,,595,0.5,OD,2025-12-06T00:00:00Z,,"
        );
        assert_eq!(lines.len(), 3);
        // With a plate map: the well's design in its row.
        let mapped = pb::Result {
            design: vec![
                pb::WellDesign {
                    sample: "BSA".into(),
                    group: "standards, lot 4".into(),
                    role: "standard".into(),
                    concentration: Some(2.0),
                    concentration_unit: "mg/mL".into(),
                    replicate: 2,
                },
                pb::WellDesign { role: "blank".into(), replicate: 1, ..Default::default() },
            ],
            ..r
        };
        let csv = results_csv(&run, std::slice::from_ref(&mapped));
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[1], "run_1,\"Bradford, v2\",res_1,assay,absorbance,A1,BSA,\"standards, lot 4\",standard,2,2,mg/mL,595,0.5,OD,2025-12-06T00:00:00Z,,");
        assert_eq!(
            lines[2],
            "run_1,\"Bradford, v2\",res_1,assay,absorbance,A2,,,blank,1,,,595,0.25,OD,2025-12-06T00:00:00Z,,"
        );
        // With lineage: the samples shipped and the container wells drawn, several joined.
        let traced = pb::Result {
            origins: vec![
                pb::WellOrigin {
                    samples: vec!["S-1".into(), "S-2".into()],
                    from: vec!["PL-1/A1".into(), "PL-1/B1".into()],
                },
                pb::WellOrigin::default(),
            ],
            ..mapped
        };
        let csv = results_csv(&run, &[traced]);
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[1].ends_with(",OD,2025-12-06T00:00:00Z,S-1; S-2,PL-1/A1; PL-1/B1"), "{}", lines[1]);
        assert!(lines[2].ends_with(",OD,2025-12-06T00:00:00Z,,"), "{}", lines[2]);
    }
}
