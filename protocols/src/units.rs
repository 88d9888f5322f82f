//! Physical quantities with units: `100 uL`, `0.1 mL`, `5 min`, `37 °C`, `600 nm`, `300 rpm`,
//! `1000 xg`, and Autoprotocol's `5:microliter`. Values are converted to one base unit per
//! dimension: µL, s, °C, rpm, nm, ×g.

/// What a quantity measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Volume,
    Duration,
    Temperature,
    Speed,
    Wavelength,
    Force,
    /// Optical density (a liquid's absorbance as it reads in a well).
    Absorbance,
    /// Relative fluorescence units.
    Fluorescence,
    /// Relative light units per second of integration.
    Luminescence,
}

impl Dim {
    /// Name and base unit, for messages.
    pub fn describe(self) -> (&'static str, &'static str) {
        match self {
            Dim::Volume => ("a volume", "uL"),
            Dim::Duration => ("a duration", "s"),
            Dim::Temperature => ("a temperature", "°C"),
            Dim::Speed => ("a speed", "rpm"),
            Dim::Wavelength => ("a wavelength", "nm"),
            Dim::Force => ("a centrifugal force", "xg"),
            Dim::Absorbance => ("an absorbance", "OD"),
            Dim::Fluorescence => ("a fluorescence signal", "RFU"),
            Dim::Luminescence => ("a luminescence signal", "RLU/s"),
        }
    }

    /// Units accepted, for hints.
    pub fn examples(self) -> &'static str {
        match self {
            Dim::Volume => "`50 uL`, `50 µL`, `0.5 mL`, `200 nL`",
            Dim::Duration => "`30 s`, `5 min`, `1.5 h`",
            Dim::Temperature => "`37 °C`, `37 C`",
            Dim::Speed => "`300 rpm`",
            Dim::Wavelength => "`450 nm`",
            Dim::Force => "`1000 xg`",
            Dim::Absorbance => "`1.2 OD`",
            Dim::Fluorescence => "`40000 RFU`",
            Dim::Luminescence => "`250000 RLU/s`",
        }
    }
}

/// Table of unit spellings: (spelling, dimension, factor to the base unit).
const UNITS: &[(&str, Dim, f64)] = &[
    ("nl", Dim::Volume, 1e-3),
    ("nanoliter", Dim::Volume, 1e-3),
    ("ul", Dim::Volume, 1.0),
    ("µl", Dim::Volume, 1.0),
    ("μl", Dim::Volume, 1.0),
    ("microliter", Dim::Volume, 1.0),
    ("ml", Dim::Volume, 1e3),
    ("milliliter", Dim::Volume, 1e3),
    ("l", Dim::Volume, 1e6),
    ("liter", Dim::Volume, 1e6),
    ("ms", Dim::Duration, 1e-3),
    ("millisecond", Dim::Duration, 1e-3),
    ("s", Dim::Duration, 1.0),
    ("sec", Dim::Duration, 1.0),
    ("second", Dim::Duration, 1.0),
    ("seconds", Dim::Duration, 1.0),
    ("min", Dim::Duration, 60.0),
    ("minute", Dim::Duration, 60.0),
    ("minutes", Dim::Duration, 60.0),
    ("h", Dim::Duration, 3600.0),
    ("hr", Dim::Duration, 3600.0),
    ("hour", Dim::Duration, 3600.0),
    ("hours", Dim::Duration, 3600.0),
    ("°c", Dim::Temperature, 1.0),
    ("c", Dim::Temperature, 1.0),
    ("degc", Dim::Temperature, 1.0),
    ("celsius", Dim::Temperature, 1.0),
    ("rpm", Dim::Speed, 1.0),
    ("nm", Dim::Wavelength, 1.0),
    ("nanometer", Dim::Wavelength, 1.0),
    ("xg", Dim::Force, 1.0),
    ("×g", Dim::Force, 1.0),
    ("x g", Dim::Force, 1.0),
    ("g", Dim::Force, 1.0),
    ("od", Dim::Absorbance, 1.0),
    ("rfu", Dim::Fluorescence, 1.0),
    ("rlu/s", Dim::Luminescence, 1.0),
];

/// Why a quantity could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantityError {
    /// Not `<number> <unit>`.
    Syntax,
    /// A unit nobody knows.
    UnknownUnit(String),
    /// A known unit of another dimension (`5 min` where a volume is needed).
    WrongDim(Dim),
    /// Not finite.
    NotFinite,
}

impl std::fmt::Display for QuantityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuantityError::Syntax => f.write_str("not a number with a unit"),
            QuantityError::UnknownUnit(u) => write!(f, "unknown unit `{u}`"),
            QuantityError::WrongDim(_) => f.write_str("its unit measures another kind of quantity"),
            QuantityError::NotFinite => f.write_str("not a finite number"),
        }
    }
}

/// Splits `12.5 uL` into its number and its unit (both trimmed; either may be empty).
pub fn split_number(text: &str) -> (&str, &str) {
    let t = text.trim();
    let end = t
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_digit()
                || c == '.'
                || ((c == '-' || c == '+') && i == 0)
                || ((c == 'e' || c == 'E') && i > 0 && !t[i + 1..].starts_with(|x: char| x.is_alphabetic())))
        })
        .map_or(t.len(), |(i, _)| i);
    (t[..end].trim(), t[end..].trim())
}

/// Reads `text` as a quantity of dimension `dim`, returning the value in the base unit.
/// The unit names of a dimension, as [`parse`] knows them (lower case).
pub fn units_of(dim: Dim) -> Vec<&'static str> {
    UNITS.iter().filter(|(_, d, _)| *d == dim).map(|(u, _, _)| *u).collect()
}

pub fn parse(text: &str, dim: Dim) -> Result<f64, QuantityError> {
    let t = text.trim();
    // Autoprotocol writes `5:microliter`.
    let (num, unit) = match t.split_once(':') {
        Some((n, u)) => (n.trim(), u.trim()),
        None => split_number(t),
    };
    if num.is_empty() {
        return Err(QuantityError::Syntax);
    }
    let value: f64 = num.parse().map_err(|_| QuantityError::Syntax)?;
    if !value.is_finite() {
        return Err(QuantityError::NotFinite);
    }
    if unit.is_empty() {
        return Err(QuantityError::Syntax);
    }
    let lower = unit.to_lowercase();
    let lower = lower.strip_suffix('s').filter(|u| UNITS.iter().any(|(s, _, _)| s == u)).unwrap_or(&lower);
    let (_, d, factor) =
        UNITS.iter().find(|(s, _, _)| *s == lower).ok_or_else(|| QuantityError::UnknownUnit(unit.to_string()))?;
    if *d != dim {
        return Err(QuantityError::WrongDim(*d));
    }
    let v = value * factor;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(QuantityError::NotFinite)
    }
}

/// Formats a volume in µL without noise (`100 µL`, `12.5 µL`).
pub fn fmt_ul(v: f64) -> String {
    format!("{} µL", trim(v))
}

/// A number with at most 3 decimals and no trailing zeros.
pub fn trim(v: f64) -> String {
    let s = format!("{:.3}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let check = |t: &str, d: Dim, want: f64| assert_eq!(parse(t, d), Ok(want), "{t}");
        check("100 uL", Dim::Volume, 100.0);
        check("100µL", Dim::Volume, 100.0);
        check("0.1 mL", Dim::Volume, 100.0);
        check("250 nL", Dim::Volume, 0.25);
        check("5:microliter", Dim::Volume, 5.0);
        check("5 min", Dim::Duration, 300.0);
        check("1.5 h", Dim::Duration, 5400.0);
        check("30:second", Dim::Duration, 30.0);
        check("37 °C", Dim::Temperature, 37.0);
        check("37:celsius", Dim::Temperature, 37.0);
        check("600 nm", Dim::Wavelength, 600.0);
        check("1000 xg", Dim::Force, 1000.0);
        check("1000 ×g", Dim::Force, 1000.0);
        check("1000:g", Dim::Force, 1000.0);
        check("1e2 uL", Dim::Volume, 100.0);
        check("-4 °C", Dim::Temperature, -4.0);
    }

    #[test]
    fn errors() {
        assert_eq!(parse("100", Dim::Volume), Err(QuantityError::Syntax));
        assert_eq!(parse("uL", Dim::Volume), Err(QuantityError::Syntax));
        assert_eq!(parse("5 min", Dim::Volume), Err(QuantityError::WrongDim(Dim::Duration)));
        assert_eq!(parse("5 furlongs", Dim::Volume), Err(QuantityError::UnknownUnit("furlongs".into())));
        assert_eq!(parse("1e400 uL", Dim::Volume), Err(QuantityError::NotFinite));
    }
}
