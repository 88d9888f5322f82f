//! Opentrons Python protocols, read through Opentrons' own analyzer (`opentrons analyze`, the
//! `opentrons` package's command line) on the scientist's machine: `labctl` runs it in a
//! scratch directory, and the analysis's command list becomes an Opentrons JSON protocol
//! ([`protocols::import::opentrons_analysis`]) that compiles like any other. The lab never runs
//! a tenant's Python.
//!
//! Customisation: `--values FILE` (a JSON object) answers both the Protocol Library's
//! `get_values(…)` (a definition of it is appended to the scratch copy, so line numbers stay
//! the file's) and runtime parameters (`add_parameters`, passed as `--rtp-values`).

use protocols::import::opentrons_analysis::{self, AnalysisError};
use protocols::source::Span;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The newest `opentrons` release that analyzes OT-2 protocols as well as Flex ones.
pub const ANALYZER_RELEASE: &str = "8.8.2";
/// An analysis that has not ended by then is stopped (a protocol looping forever).
const ANALYSIS_LIMIT: Duration = Duration::from_secs(300);

/// A Python protocol and what its analysis needs.
#[derive(Debug, Clone)]
pub struct PythonProtocol {
    pub path: PathBuf,
    /// Customisation values (JSON object).
    pub values: Option<PathBuf>,
    /// Custom labware definitions (Opentrons labware JSON) the protocol loads.
    pub labware: Vec<PathBuf>,
    /// The Python with the `opentrons` package.
    pub python: PathBuf,
}

/// What the analysis said.
#[derive(Debug)]
pub enum Analysis {
    /// The protocol as an Opentrons JSON protocol (schema 8), pretty-printed.
    Protocol(String),
    /// The protocol raised, or the engine refused one of its commands.
    Errors(Vec<AnalysisError>),
}

/// Why the analyzer could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("cannot run {python}: {error}; give the Python that has the `opentrons` package with --python or LABWRIGHT_OPENTRONS_PYTHON")]
    NoPython { python: String, error: std::io::Error },
    #[error("{python} has no Opentrons analyzer ({detail}); install it with `{python} -m pip install opentrons=={ANALYZER_RELEASE}` (Python ≥ 3.10), or give another Python with --python")]
    NotInstalled { python: String, detail: String },
    #[error("--values {path}: {why}")]
    Values { path: String, why: String },
    #[error("the analysis did not end within {} s; does the protocol loop forever?", ANALYSIS_LIMIT.as_secs())]
    TooLong,
    #[error("the Opentrons analyzer failed without an analysis: {0}")]
    Failed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `labctl`'s options for Python protocols (validate, compile, quote and submit share them).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PythonArgs {
    /// Customisation values of a Python protocol: a JSON object answering `get_values(…)` and
    /// runtime parameters.
    #[arg(long, value_name = "FILE")]
    pub values: Option<PathBuf>,
    /// A custom labware definition (Opentrons labware JSON) a Python protocol loads; repeatable.
    #[arg(long = "labware", value_name = "FILE")]
    pub labware: Vec<PathBuf>,
    /// The Python with Opentrons' analyzer (the `opentrons` package); default
    /// LABWRIGHT_OPENTRONS_PYTHON, else python3.
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
}

/// A protocol file as the compiler takes it: a Python protocol analyzed into an Opentrons JSON
/// protocol, anything else as it is.
#[derive(Debug)]
pub enum Read {
    /// File name and bytes for the compiler; `analyzed` when they are a Python protocol's analysis.
    Source { name: String, bytes: Vec<u8>, analyzed: bool },
    /// The Python protocol's analysis failed: its errors, as diagnostics on the Python file.
    Refused { python: protocols::SourceFile, diagnostics: Vec<protocols::Diagnostic> },
}

/// Reads a protocol file, analyzing it first when it is Python (`python`: forced by `--from
/// opentrons-python`, else recognised by [`looks_like_python`]).
pub fn read(path: &Path, python: bool, args: &PythonArgs) -> anyhow::Result<Read> {
    use anyhow::Context;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    if !python && !looks_like_python(path, &bytes) {
        if args.values.is_some() || !args.labware.is_empty() {
            anyhow::bail!("--values and --labware are for Opentrons Python protocols; {} is not one", path.display());
        }
        return Ok(Read::Source { name: path.display().to_string(), bytes, analyzed: false });
    }
    let protocol = PythonProtocol {
        path: path.to_path_buf(),
        values: args.values.clone(),
        labware: args.labware.clone(),
        python: self::python(args.python.as_deref()),
    };
    match analyze(&protocol)? {
        Analysis::Protocol(json) => {
            Ok(Read::Source { name: format!("{name} (Opentrons analysis)"), bytes: json.into_bytes(), analyzed: true })
        }
        Analysis::Errors(errors) => {
            let src = protocols::SourceFile::new(path.display().to_string(), String::from_utf8_lossy(&bytes));
            let diagnostics = errors.iter().map(|e| diagnostic(&src, e)).collect();
            Ok(Read::Refused { python: src, diagnostics })
        }
    }
}

/// Says which Opentrons command each diagnostic of an analyzed protocol is about (the Python
/// file has no line for a command the analysis accepted, and the analysis document is nobody's
/// to read): "… (Opentrons command 14: aspirate 16 µL, normalised A1)".
pub fn name_commands(analysis: &str, diagnostics: &mut [protocols::Diagnostic]) {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(analysis) else { return };
    let Some(commands) = doc["commands"].as_array() else { return };
    // Each command object opens with the `{` before its one `"commandType"` key.
    let starts: Vec<usize> =
        analysis.match_indices("\"commandType\"").map(|(at, _)| analysis[..at].rfind('{').unwrap_or(at)).collect();
    for d in diagnostics.iter_mut() {
        let at = d.span.start as usize;
        let Some(i) = starts.iter().rposition(|&s| s <= at) else { continue };
        let Some(c) = commands.get(i) else { continue };
        let p = &c["params"];
        let mut what = vec![c["commandType"].as_str().unwrap_or("?").to_string()];
        if let Some(v) = p["volume"].as_f64() {
            what.push(format!("{v} µL"));
        }
        let place: Vec<&str> = [&p["labwareId"], &p["wellName"]].iter().filter_map(|v| v.as_str()).collect();
        if !place.is_empty() {
            what.push(format!("at {}", place.join(" ")));
        }
        d.message = format!("{} (Opentrons command {i}: {})", d.message, what.join(" "));
    }
}

/// An analysis error as a diagnostic on the line of the Python file it names.
fn diagnostic(src: &protocols::SourceFile, e: &AnalysisError) -> protocols::Diagnostic {
    let span = match e.line {
        Some(line) if line >= 1 => {
            let text = src.line_text(line);
            let start = src.offset_of(line, text.chars().take_while(|c| c.is_whitespace()).count());
            Span::new(start, start + text.trim().len())
        }
        _ => Span::new(0, 0),
    };
    let hint = if e.message.contains("get_values") {
        "the protocol reads customisation values: give them with --values FILE (a JSON object)"
    } else {
        "this is what Opentrons' analyzer reports: fix the protocol (or its --values) and analyze again"
    };
    protocols::Diagnostic::error("P0520", span, format!("Opentrons analysis: {}", e.message)).with_hint(hint)
}

/// Whether a file is an Opentrons Python protocol: a `.py` file, or Python text that defines
/// `run(…)` and has `metadata` or `requirements`.
pub fn looks_like_python(path: &Path, bytes: &[u8]) -> bool {
    if path.extension().is_some_and(|e| e == "py") {
        return true;
    }
    let text = String::from_utf8_lossy(bytes);
    text.contains("def run(") && (text.contains("metadata") || text.contains("requirements"))
}

/// The Python to analyze with: `--python`, else `LABWRIGHT_OPENTRONS_PYTHON`, else `python3`.
/// A path (not a bare name looked up on PATH) is made absolute: the analyzer runs elsewhere.
pub fn python(given: Option<&Path>) -> PathBuf {
    let py = given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("LABWRIGHT_OPENTRONS_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"));
    if py.components().count() > 1 {
        std::path::absolute(&py).unwrap_or(py)
    } else {
        py
    }
}

/// Runs Opentrons' analyzer on the protocol and reads its analysis.
pub fn analyze(p: &PythonProtocol) -> Result<Analysis, AnalyzeError> {
    let values = match &p.values {
        Some(path) => Some(read_values(path)?),
        None => None,
    };
    let scratch = Scratch::new()?;
    let file_name = p.path.file_name().map_or_else(|| "protocol.py".into(), |n| n.to_string_lossy().into_owned());
    let mut source = std::fs::read_to_string(&p.path)?;
    let reads_values = source.contains("get_values(") && !source.contains("def get_values(");
    if let (Some(v), true) = (&values, reads_values) {
        let values_file = scratch.0.join("labwright-values.json");
        std::fs::write(&values_file, serde_json::Value::Object(v.clone()).to_string())?;
        source.push_str(&get_values_shim(&values_file));
    }
    let protocol = scratch.0.join(&file_name);
    std::fs::write(&protocol, source)?;
    let mut analysis = run_analyzer(p, &scratch.0, &protocol, None)?;
    // Runtime parameters are known once the protocol has been analyzed with its defaults.
    if let Some(v) = &values {
        let parameters: Vec<String> = analysis["runTimeParameters"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|r| r["variableName"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let unknown: Vec<&String> = v.keys().filter(|k| !parameters.contains(k)).collect();
        if !reads_values && !unknown.is_empty() {
            let names = unknown.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            let have = if parameters.is_empty() { "none".to_string() } else { parameters.join(", ") };
            let is = if unknown.len() == 1 { "is" } else { "are" };
            return Err(AnalyzeError::Values {
                path: display(p.values.as_deref()),
                why: format!("{names} {is} neither a runtime parameter of the protocol (it has: {have}) nor read with get_values"),
            });
        }
        let rtp: serde_json::Map<String, serde_json::Value> =
            v.iter().filter(|(k, _)| parameters.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        if !rtp.is_empty() {
            analysis = run_analyzer(p, &scratch.0, &protocol, Some(&serde_json::Value::Object(rtp).to_string()))?;
        }
    }
    let lib = labware::Library::shipped();
    Ok(match opentrons_analysis::to_protocol(&analysis, |name| lib.get(name).is_some()) {
        Ok(doc) => Analysis::Protocol(serde_json::to_string_pretty(&doc).unwrap_or_default()),
        Err(errors) => Analysis::Errors(errors),
    })
}

/// One run of `python -m opentrons.cli analyze`, in the scratch directory (so a protocol named
/// like a module the analyzer imports, `serial.py`, cannot shadow it).
fn run_analyzer(
    p: &PythonProtocol,
    scratch: &Path,
    protocol: &Path,
    rtp: Option<&str>,
) -> Result<serde_json::Value, AnalyzeError> {
    let out = scratch.join("analysis.json");
    if out.exists() {
        std::fs::remove_file(&out)?;
    }
    let python = p.python.display().to_string();
    let mut cmd = Command::new(&p.python);
    cmd.args(["-m", "opentrons.cli", "analyze", "--json-output"]).arg(&out).arg(protocol);
    for l in &p.labware {
        cmd.arg(std::fs::canonicalize(l).map_err(|e| AnalyzeError::Failed(format!("--labware {}: {e}", l.display())))?);
    }
    if let Some(values) = rtp {
        cmd.args(["--rtp-values", values]);
    }
    // Opentrons reads its robot settings from HOME; a scratch HOME keeps the user's out of it.
    cmd.current_dir(scratch).env("HOME", scratch).stdin(Stdio::null()).stdout(Stdio::null());
    let log = std::fs::File::create(scratch.join("analyzer.log"))?;
    cmd.stderr(log);
    let mut child = cmd.spawn().map_err(|error| AnalyzeError::NoPython { python: python.clone(), error })?;
    let began = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if began.elapsed() > ANALYSIS_LIMIT {
            child.kill()?;
            child.wait()?;
            return Err(AnalyzeError::TooLong);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(scratch.join("analyzer.log")).unwrap_or_default();
    let last =
        |n: usize| log.lines().rev().take(n).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    if log.contains("No module named") && log.contains("opentrons") {
        return Err(AnalyzeError::NotInstalled { python, detail: last(1) });
    }
    let text = match std::fs::read_to_string(&out) {
        Ok(t) => t,
        Err(_) if !status.success() => return Err(AnalyzeError::Failed(last(3))),
        Err(e) => return Err(AnalyzeError::Failed(format!("no analysis was written ({e}): {}", last(3)))),
    };
    serde_json::from_str(&text).map_err(|e| AnalyzeError::Failed(format!("the analysis is not JSON: {e}")))
}

/// A definition of the Protocol Library's `get_values`, reading the values file.
fn get_values_shim(values_file: &Path) -> String {
    let path = serde_json::Value::String(values_file.display().to_string()).to_string();
    format!(
        "\n\n# Appended by labctl: the protocol's customisation values, from --values.\n\
         def get_values(*names):\n    import json\n    with open({path}) as f:\n        values = json.load(f)\n    \
         missing = [n for n in names if n not in values]\n    if missing:\n        \
         raise KeyError('--values has no ' + ', '.join(missing))\n    return [values[n] for n in names]\n"
    )
}

fn read_values(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, AnalyzeError> {
    let bad = |why: String| AnalyzeError::Values { path: path.display().to_string(), why };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("must be a JSON object of name: value, e.g. {\"samples\": 24}".into())),
        Err(e) => Err(bad(format!("not JSON: {e}"))),
    }
}

fn display(p: Option<&Path>) -> String {
    p.map(|p| p.display().to_string()).unwrap_or_default()
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("labctl-analysis-{}", crate::store::new_id("a")));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove the analysis's scratch directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_is_recognised_by_name_or_by_shape() {
        assert!(looks_like_python(Path::new("p.py"), b""));
        let text = b"metadata = {'apiLevel': '2.16'}\ndef run(protocol):\n    pass\n";
        assert!(looks_like_python(Path::new("protocol.txt"), text));
        assert!(!looks_like_python(Path::new("p.yaml"), b"labwright: 1\nsteps: []\n"));
    }
}
