//! YAML to [`Node`] through `yaml-rust2`'s event parser, with spans, duplicate-key detection,
//! bounded nesting and no aliases.
//!
//! Plain scalars are typed the YAML 1.2 core-schema way (null, booleans, numbers); quoted scalars
//! are always strings. `yes`/`no`/`on`/`off` stay strings (YAML 1.1's surprise booleans).

use super::{Key, Node, Parsed, Value, MAX_DEPTH};
use crate::diag::Diagnostic;
use crate::source::{SourceFile, Span};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

enum Frame {
    List { start: usize, items: Vec<Node> },
    Map { start: usize, entries: Vec<(Key, Node)>, key: Option<Key> },
}

/// Parses the first YAML document of the file.
pub fn parse(src: &SourceFile) -> Parsed {
    let mut out = Parsed::default();
    let mut parser = Parser::new_from_str(&src.text);
    let mut stack: Vec<Frame> = Vec::new();
    let offset = |m: &Marker| src.offset_of(m.line(), m.col());
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(e) => e,
            Err(e) => {
                let at = offset(e.marker());
                out.diagnostics.push(Diagnostic::error(
                    "P0001",
                    Span::new(at, at + 1),
                    format!("YAML syntax error: {}", e.info()),
                ));
                return out;
            }
        };
        let at = offset(&mark);
        let node = match event {
            Event::StreamStart | Event::DocumentStart | Event::Nothing => continue,
            Event::StreamEnd | Event::DocumentEnd => break,
            Event::Alias(_) => {
                out.diagnostics.push(
                    Diagnostic::error("P0006", Span::new(at, at + 1), "YAML aliases (*name) are not supported")
                        .with_hint("write the value out in full"),
                );
                return out;
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_DEPTH {
                    out.diagnostics.push(
                        Diagnostic::error(
                            "P0003",
                            Span::new(at, at + 1),
                            format!("nesting deeper than {MAX_DEPTH} levels"),
                        )
                        .with_hint("no protocol needs this much nesting; check for a generated or corrupted file"),
                    );
                    return out;
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::List { start: at, items: Vec::new() }
                } else {
                    Frame::Map { start: at, entries: Vec::new(), key: None }
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::List { start, items }) => {
                    Node { span: Span::new(start, at.max(start)), value: Value::List(items) }
                }
                Some(Frame::Map { start, entries, .. }) => {
                    // A block map's start event sits after its first key; start the span at that key.
                    let start = entries.first().map_or(start, |(k, _)| start.min(k.span.start as usize));
                    Node { span: Span::new(start, at.max(start)), value: Value::Map(entries) }
                }
                None => break,
            },
            Event::Scalar(text, style, _, _) => {
                let len = scalar_len(&src.text[at.min(src.text.len())..], &text, style);
                let span = Span::new(at, at + len);
                let value = if style == TScalarStyle::Plain { plain_value(&text) } else { Value::String(text) };
                if let Value::Number(n) = value {
                    if !n.is_finite() {
                        out.diagnostics.push(Diagnostic::error(
                            "P0111",
                            span,
                            "numbers must be finite (not .nan or .inf)",
                        ));
                    }
                }
                Node { span, value }
            }
        };
        // Attach the finished node to its parent.
        match stack.last_mut() {
            None => {
                out.root = Some(node);
                // Only the first document is read; a second one is an error, not ignored.
                let mut next = parser.next_token();
                while let Ok((Event::DocumentEnd, _)) = next {
                    next = parser.next_token();
                }
                if let Ok((Event::DocumentStart, m)) = next {
                    let at = offset(&m);
                    out.diagnostics.push(
                        Diagnostic::error(
                            "P0001",
                            Span::new(at, at + 3),
                            "a protocol file holds one YAML document, found a second",
                        )
                        .with_hint("remove the `---` and what follows, or put it in its own file"),
                    );
                }
                break;
            }
            Some(Frame::List { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let name = match &node.value {
                        Value::String(s) => s.clone(),
                        Value::Number(_) | Value::Bool(_) | Value::Null => src.slice(node.span).to_string(),
                        _ => {
                            out.diagnostics.push(Diagnostic::error(
                                "P0103",
                                node.span,
                                "map keys must be plain words, not lists or maps",
                            ));
                            return out;
                        }
                    };
                    *key = Some(Key { name, span: node.span });
                }
                Some(k) => {
                    if let Some((first, _)) = entries.iter().find(|(e, _)| e.name == k.name) {
                        let lc = src.line_col(first.span.start);
                        out.diagnostics.push(
                            Diagnostic::error("P0004", k.span, format!("duplicate key \"{}\"", k.name)).with_hint(
                                format!("it is first given at {}:{}; keep one of the two", lc.line, lc.column),
                            ),
                        );
                    } else {
                        entries.push((k, node));
                    }
                }
            },
        }
    }
    if out.root.is_none() && out.diagnostics.is_empty() {
        out.root = Some(Node { span: Span::new(0, 0), value: Value::Null });
    }
    out
}

/// Length in bytes of a scalar in the source: the text for plain scalars, plus quotes for quoted
/// ones, the first line for block scalars (enough to underline it).
fn scalar_len(rest: &str, text: &str, style: TScalarStyle) -> usize {
    let line_len = rest.find('\n').unwrap_or(rest.len());
    match style {
        TScalarStyle::Plain => text.len().min(line_len),
        TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => (text.len() + 2).min(line_len),
        _ => line_len,
    }
}

fn plain_value(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".nan" | ".NaN" | ".NAN" => return Value::Number(f64::NAN),
        ".inf" | "+.inf" | ".Inf" | ".INF" => return Value::Number(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Value::Number(f64::NEG_INFINITY),
        _ => {}
    }
    let b = text.as_bytes();
    let numeric = b.iter().all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
        && b.iter().any(u8::is_ascii_digit)
        && b.first().is_some_and(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.'));
    if numeric {
        if let Ok(n) = text.parse::<f64>() {
            return Value::Number(n);
        }
    }
    Value::String(text.to_string())
}
