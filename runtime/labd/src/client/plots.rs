//! `labctl results RUN --plot DIR`: each read's pictures as SVG and the analysis as JSON
//! (docs/results.md).

use crate::results::reads;
use anyhow::Result;
use protos::labwright::v1 as pb;

/// `labctl results --plot DIR`: every read's pictures as SVG and `analysis.json`; returns what
/// to tell the user (a line per file and per fit).
pub(super) fn write(run: &pb::RunInfo, rs: &[pb::Result], dir: &std::path::Path) -> Result<Vec<String>> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut said = Vec::new();
    let mut all = Vec::new();
    for (i, read) in reads(run, rs).iter().enumerate() {
        let a = analysis::analyze(read);
        for (name, svg) in analysis::plot::pictures(read, &a, i) {
            let path = dir.join(&name);
            std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
            said.push(format!("wrote {}", path.display()));
        }
        if let Some(c) = &a.standard_curve {
            match &c.fit {
                Ok(l) => said.push(format!(
                    "read {i}: standard curve y = {:.6} + {:.6} x (R² {:.4}); {} unknown(s) read off it",
                    l.intercept.value,
                    l.slope.value,
                    l.r_squared,
                    c.unknowns.len()
                )),
                Err(e) => said.push(format!("read {i}: no standard curve: {e}")),
            }
        }
        for d in &a.dose_response {
            match &d.fit {
                Ok(f) => said.push(format!(
                    "read {i}: {} {}: {} {:.6} {} (95% CI {:.6} to {:.6}), Hill {:.4}, R² {:.4}",
                    d.sample,
                    d.group,
                    f.midpoint,
                    f.ec50.value,
                    d.unit,
                    f.ec50.ci95.0,
                    f.ec50.ci95.1,
                    f.hill.value,
                    f.r_squared
                )),
                Err(e) => said.push(format!("read {i}: {} {}: no fit: {e}", d.sample, d.group)),
            }
        }
        all.push(a);
    }
    let path = dir.join("analysis.json");
    std::fs::write(&path, serde_json::to_string_pretty(&all)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    said.push(format!("wrote {}", path.display()));
    Ok(said)
}
