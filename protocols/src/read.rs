//! Typed reading of [`Node`] trees with diagnostics: shared by every front end.

use crate::diag::{did_you_mean, Diagnostic, Diagnostics};
use crate::syntax::{Node, Value};
use crate::units::{self, Dim, QuantityError};

/// Checks that `node` is a map whose keys are all in `allowed`; reports the others with a
/// "did you mean". Returns false (after reporting) when `node` is not a map.
pub fn check_keys(node: &Node, what: &str, allowed: &[&str], d: &mut Diagnostics) -> bool {
    let Some(entries) = node.as_map() else {
        d.push(Diagnostic::error("P0103", node.span, format!("{what} must be a map, found {}", node.type_name())));
        return false;
    };
    for (k, _) in entries {
        if !allowed.contains(&k.name.as_str()) {
            let hint = did_you_mean(&k.name, allowed.iter().copied())
                .unwrap_or_else(|| format!("{what} takes: {}", allowed.join(", ")));
            d.push(Diagnostic::error("P0101", k.span, format!("unknown field `{}` in {what}", k.name)).with_hint(hint));
        }
    }
    true
}

/// The value of a required key, or an error naming it.
pub fn required<'a>(node: &'a Node, key: &str, what: &str, d: &mut Diagnostics) -> Option<&'a Node> {
    let v = node.get(key);
    if v.is_none() && node.as_map().is_some() {
        d.push(
            Diagnostic::error("P0102", node.span, format!("{what} is missing `{key}`"))
                .with_hint(format!("add `{key}:` to {what}")),
        );
    }
    v
}

/// A string value.
pub fn string(node: &Node, what: &str, d: &mut Diagnostics) -> Option<String> {
    match &node.value {
        Value::String(s) => Some(s.clone()),
        _ => {
            d.push(Diagnostic::error(
                "P0103",
                node.span,
                format!("{what} must be a string, found {}", node.type_name()),
            ));
            None
        }
    }
}

/// A positive whole number no larger than `max`.
pub fn count(node: &Node, what: &str, max: u32, d: &mut Diagnostics) -> Option<u32> {
    match node.value {
        Value::Number(n) if n.fract() == 0.0 && n >= 1.0 && n <= f64::from(max) => Some(n as u32),
        Value::Number(n) => {
            d.push(Diagnostic::error(
                "P0111",
                node.span,
                format!("{what} must be a whole number from 1 to {max}, found {n}"),
            ));
            None
        }
        _ => {
            d.push(Diagnostic::error(
                "P0103",
                node.span,
                format!("{what} must be a number, found {}", node.type_name()),
            ));
            None
        }
    }
}

/// A quantity such as `100 uL`, converted to the base unit of `dim`; must be within `[min, max]`.
pub fn quantity(node: &Node, dim: Dim, what: &str, range: (f64, f64), d: &mut Diagnostics) -> Option<f64> {
    let (dim_name, base) = dim.describe();
    let text = match &node.value {
        Value::String(s) => s.as_str(),
        Value::Number(n) => {
            d.push(
                Diagnostic::error(
                    "P0110",
                    node.span,
                    format!("{what} needs a unit: `{}` alone is not {dim_name}", units::trim(*n)),
                )
                .with_hint(format!("write it with a unit, e.g. `{} {base}`", units::trim(*n))),
            );
            return None;
        }
        _ => {
            d.push(Diagnostic::error(
                "P0103",
                node.span,
                format!("{what} must be {dim_name} such as {}, found {}", dim.examples(), node.type_name()),
            ));
            return None;
        }
    };
    let v = match units::parse(text, dim) {
        Ok(v) => v,
        Err(e) => {
            let msg = match e {
                QuantityError::Syntax => format!("{what}: `{text}` is not {dim_name}"),
                QuantityError::UnknownUnit(u) => format!("{what}: unknown unit `{u}`"),
                QuantityError::WrongDim(other) => {
                    format!("{what}: `{text}` is {}, expected {dim_name}", other.describe().0)
                }
                QuantityError::NotFinite => format!("{what}: `{text}` is not a finite number"),
            };
            d.push(
                Diagnostic::error("P0110", node.span, msg)
                    .with_hint(format!("write {dim_name} such as {}", dim.examples())),
            );
            return None;
        }
    };
    if v < range.0 || v > range.1 {
        d.push(Diagnostic::error("P0111", node.span, format!("{what} `{text}` is out of range")).with_hint(format!(
            "{dim_name} here must be between {} and {} {base}",
            units::trim(range.0),
            units::trim(range.1)
        )));
        return None;
    }
    Some(v)
}

/// Splits `plate/A1:H12` into labware and selection.
pub fn well_ref(node: &Node, what: &str, d: &mut Diagnostics) -> Option<crate::ast::WellRef> {
    let s = string(node, what, d)?;
    match s.split_once('/') {
        Some((lw, sel)) if !lw.trim().is_empty() && !sel.trim().is_empty() => Some(crate::ast::WellRef {
            labware: lw.trim().to_string(),
            selection: sel.trim().to_string(),
            span: node.span,
        }),
        _ => {
            d.push(
                Diagnostic::error("P0205", node.span, format!("{what} `{s}` is not a well reference"))
                    .with_hint("write `<labware>/<wells>`, e.g. `plate/A1`, `plate/A1:H12` or `plate/1`"),
            );
            None
        }
    }
}

/// A name and its span from a string node.
pub fn named(node: &Node, what: &str, d: &mut Diagnostics) -> Option<crate::ast::Named> {
    string(node, what, d).map(|name| crate::ast::Named { name, span: node.span })
}

/// The items of a required list field; a missing field or one that is not a list is reported
/// (and reads as empty), never silently skipped.
pub fn list_field<'a>(node: &'a Node, key: &str, what: &str, d: &mut Diagnostics) -> &'a [Node] {
    match node.get(key) {
        Some(v) => match v.as_list() {
            Some(items) => items,
            None => {
                d.push(Diagnostic::error(
                    "P0103",
                    v.span,
                    format!("`{key}` of {what} must be a list, found {}", v.type_name()),
                ));
                &[]
            }
        },
        None => {
            d.push(
                Diagnostic::error("P0102", node.span, format!("{what} is missing `{key}`"))
                    .with_hint(format!("add `{key}`")),
            );
            &[]
        }
    }
}

/// A required string field of an imported instruction or command.
pub fn str_field(node: &Node, key: &str, what: &str, d: &mut Diagnostics) -> Option<String> {
    match node.get(key) {
        Some(v) => string(v, &format!("`{key}` of {what}"), d),
        None => {
            d.push(
                Diagnostic::error("P0102", node.span, format!("{what} is missing `{key}`"))
                    .with_hint(format!("add `{key}`")),
            );
            None
        }
    }
}
