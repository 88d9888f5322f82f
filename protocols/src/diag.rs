//! Diagnostics: every problem the compiler finds, with a stable code, a span and a hint.
//!
//! Codes are stable (tests and users grep for them); the table with one line per code is in
//! `docs/protocol-language.md`. Messages say what and where; hints say what to do.

use crate::source::{SourceFile, Span};
use serde::Serialize;
use std::fmt::Write;

/// How bad a diagnostic is. Errors stop a protocol from running; warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Characters of a source line shown under a diagnostic.
const SHOWN_LINE_CHARS: usize = 200;
/// How much of a long line is shown before the diagnostic's column.
const SHOWN_BEFORE_COLUMN: usize = 60;

/// One problem found in a protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    pub span: Span,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error with a stable code.
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic { code, severity: Severity::Error, message: message.into(), span, hint: None }
    }

    /// A warning with a stable code.
    pub fn warning(code: &'static str, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic { code, severity: Severity::Warning, message: message.into(), span, hint: None }
    }

    /// Adds what the user should do.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    /// Whether this stops the protocol from running.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders like rustc: header, `--> file:line:col`, the source line and a caret underline.
    pub fn render(&self, src: &SourceFile) -> String {
        let lc = src.line_col(self.span.start);
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = format!("{sev}[{}]: {}\n", self.code, self.message);
        let line_no = lc.line.to_string();
        let pad = " ".repeat(line_no.len());
        let _ = writeln!(out, "{pad}--> {}:{}:{}", src.name, lc.line, lc.column);
        let text = src.line_text(lc.line);
        if !text.is_empty() || self.span.end > self.span.start {
            let end = src.line_col(self.span.end.max(self.span.start));
            let width = if end.line == lc.line {
                end.column.saturating_sub(lc.column).max(1)
            } else {
                text.chars().count().saturating_sub(lc.column - 1).max(1)
            };
            // A long line (a one-line JSON file) is shown from a little before the column, so
            // the caret stays on screen.
            let skip = lc.column.saturating_sub(1).saturating_sub(SHOWN_BEFORE_COLUMN);
            let cut = if skip > 0 { "…" } else { "" };
            let shown: String = text.chars().skip(skip).take(SHOWN_LINE_CHARS).collect();
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{line_no} | {cut}{shown}");
            let caret_at = lc.column - 1 - skip + cut.chars().count();
            let _ = writeln!(out, "{pad} | {}{}", " ".repeat(caret_at), "^".repeat(width.min(120)));
        }
        if let Some(h) = &self.hint {
            let _ = writeln!(out, "{pad} = help: {h}");
        }
        out
    }

    /// A JSON object for `--format json`: code, severity, message, file, line, column, end, hint.
    pub fn to_json(&self, src: &SourceFile) -> serde_json::Value {
        let lc = src.line_col(self.span.start);
        let end = src.line_col(self.span.end);
        serde_json::json!({
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "file": src.name,
            "line": lc.line,
            "column": lc.column,
            "end_line": end.line,
            "end_column": end.column,
            "hint": self.hint,
        })
    }
}

/// Collects diagnostics across passes.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Records a diagnostic.
    pub fn push(&mut self, d: Diagnostic) {
        // The same mistake met again (a step unrolled by `repeat`) is said once.
        if self.items.iter().any(|x| x.code == d.code && x.span == d.span && x.message == d.message) {
            return;
        }
        // Cap the list so a pathological file cannot make us print millions of lines.
        if self.items.len() < 500 {
            self.items.push(d);
        }
    }

    /// Records an error.
    pub fn error(&mut self, code: &'static str, span: Span, message: impl Into<String>) {
        self.push(Diagnostic::error(code, span, message));
    }

    /// Whether any error was recorded.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    /// Number of errors.
    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }
}

/// "did you mean `x`?" for the closest of `options`, if any is close.
pub fn did_you_mean<'a>(word: &str, options: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let best = options
        .into_iter()
        .map(|o| (labware::library::edit_distance(word, o), o))
        .filter(|(d, o)| *d <= (o.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)?;
    Some(format!("did you mean `{}`?", best.1))
}
