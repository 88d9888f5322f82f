//! The fits against SciPy's: the same data fitted here and by `scipy.optimize.curve_fit` (the
//! logistic, from the same starting point) and `scipy.stats.linregress` (the line), in the
//! peers' venv (`scripts/peers`). Estimates agree to 1e-4 relative; standard errors, confidence
//! intervals (with `scipy.stats.t`) and R² too.

use analysis::fit;
use std::path::PathBuf;
use std::process::Command;

fn peers_python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = std::env::var_os("LABWRIGHT_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".peers"))
        .join("bin/python");
    if py.exists() {
        return Some(py);
    }
    assert!(
        std::env::var("LABWRIGHT_REQUIRE_PEERS").as_deref() != Ok("1"),
        "the SciPy reference is required but {} is missing: run scripts/peers",
        py.display()
    );
    eprintln!("skipped: no {} (scripts/peers installs it)", py.display());
    None
}

/// Deterministic noise in [-1, 1).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

const SCIPY: &str = r#"
import json, sys
import numpy as np
from scipy.optimize import curve_fit
from scipy.stats import linregress, t
data = json.load(sys.stdin)
out = []
for case in data:
    x, y = np.array(case["x"]), np.array(case["y"])
    n = len(x)
    if case["kind"] == "line":
        r = linregress(x, y)
        q = t.ppf(0.975, n - 2)
        out.append({"values": [r.intercept, r.slope], "se": [r.intercept_stderr, r.stderr],
                    "ci_low": [r.intercept - q * r.intercept_stderr, r.slope - q * r.stderr], "r2": r.rvalue ** 2})
    else:
        f = lambda x, b, tp, e, h: b + (tp - b) / (1 + (e / x) ** h)
        p, cov = curve_fit(f, x, y, p0=case["p0"], maxfev=20000)
        se = np.sqrt(np.diag(cov))
        rss = float(np.sum((y - f(x, *p)) ** 2)); tss = float(np.sum((y - y.mean()) ** 2))
        q = t.ppf(0.975, n - 4)
        out.append({"values": list(p), "se": list(se), "ci_low": list(p - q * se), "r2": 1 - rss / tss})
print(json.dumps(out))
"#;

fn close(what: &str, ours: f64, theirs: f64, rel: f64) {
    let scale = theirs.abs().max(1e-12);
    assert!(
        (ours - theirs).abs() / scale <= rel,
        "{what}: ours {ours}, SciPy {theirs} (relative {:e})",
        (ours - theirs).abs() / scale
    );
}

#[test]
fn fits_agree_with_scipy() {
    let mut noise = Noise(42);
    let mut cases = Vec::new();
    // Dose-response: inhibition and activation, 10 points 1:3, triplicates, 3 % noise.
    for truth in [[95.0, 4.0, 0.35, 1.3], [0.05, 1.8, 2.5, 0.9], [12000.0, 300.0, 0.02, 2.2]] {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..10 {
            let c = 30.0 / 3f64.powi(i);
            for _ in 0..3 {
                x.push(c);
                let v = fit::logistic(truth, c);
                y.push(v + 0.03 * (truth[0] - truth[1]).abs() * noise.next());
            }
        }
        cases.push(("4pl", x, y));
    }
    // Standard curves: Bradford-like, 8 points in duplicate.
    for (a, b) in [(0.05, 0.62), (0.0, 1250.0)] {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..8 {
            let c = 2.0 / 2f64.powi(i);
            for _ in 0..2 {
                x.push(c);
                y.push(a + b * c + 0.02 * b * noise.next());
            }
        }
        cases.push(("line", x, y));
    }
    let input: Vec<serde_json::Value> = cases
        .iter()
        .map(|(kind, x, y)| {
            let pts: Vec<(f64, f64)> = x.iter().copied().zip(y.iter().copied()).collect();
            serde_json::json!({"kind": kind, "x": x, "y": y, "p0": fit::initial_guess(&pts)})
        })
        .collect();
    let Some(py) = peers_python() else { return };
    let mut child = Command::new(py)
        .args(["-c", SCIPY])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::Value::Array(input).to_string().as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let nums = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>();
    for ((kind, x, y), r) in cases.iter().zip(&reference) {
        let pts: Vec<(f64, f64)> = x.iter().copied().zip(y.iter().copied()).collect();
        let (values, se, low, r2) = (nums(&r["values"]), nums(&r["se"]), nums(&r["ci_low"]), r["r2"].as_f64().unwrap());
        let ours: Vec<fit::Estimate> = if *kind == "line" {
            let l = fit::line(&pts).unwrap();
            close("R²", l.r_squared, r2, 1e-6);
            vec![l.intercept, l.slope]
        } else {
            let f = fit::four_pl(&pts).unwrap();
            close("R²", f.r_squared, r2, 1e-6);
            // SciPy's parameters as given; ours keep hill > 0 (the same curve either way).
            assert!(values[3] > 0.0, "SciPy converged to the same orientation: {values:?}");
            vec![f.bottom, f.top, f.ec50, f.hill]
        };
        let names = if *kind == "line" { vec!["intercept", "slope"] } else { vec!["bottom", "top", "EC50", "Hill"] };
        for (i, e) in ours.iter().enumerate() {
            close(&format!("{kind} {}", names[i]), e.value, values[i], 1e-4);
            close(&format!("{kind} {} SE", names[i]), e.se, se[i], 1e-3);
            close(&format!("{kind} {} CI low", names[i]), e.ci95.0, low[i], 1e-3);
        }
    }
}
