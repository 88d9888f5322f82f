//! Pictures as SVG text: a read as a plate heatmap (wells coloured by value, viridis, each
//! well's sample, group and value in its tooltip), and a curve (the points and the fitted line,
//! with its parameters). Self-contained documents: they open in a browser, embed in HTML, and
//! the console draws the same ones.

use crate::{fit, Analysis, DoseResponse, Read, StandardCurve};
use std::fmt::Write;

const VIRIDIS: [(f64, f64, f64); 5] =
    [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (253.0, 231.0, 37.0)];

/// Viridis at `t` in [0, 1].
pub fn colour(t: f64) -> String {
    let t = t.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f64;
    let i = (t as usize).min(VIRIDIS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The most rows and columns a plate is drawn with (a 1536-well plate has 32 × 48): a well name
/// beyond them (a reader's odd reply) is left out rather than drawn as a huge empty plate.
const MAX_SIDE: usize = 64;

/// `A12` → (0, 11); `AA1` → (26, 0).
fn position(well: &str) -> Option<(usize, usize)> {
    let letters: String = well.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    let col: usize = well[letters.len()..].parse().ok()?;
    if letters.is_empty() || letters.len() > 2 || col == 0 || col > MAX_SIDE {
        return None;
    }
    let row = letters.to_ascii_uppercase().bytes().fold(0usize, |r, b| r * 26 + (b - b'A') as usize + 1);
    (row <= MAX_SIDE).then(|| (row - 1, col - 1))
}

fn row_name(r: usize) -> String {
    if r < 26 {
        ((b'A' + r as u8) as char).to_string()
    } else {
        format!("{}{}", row_name(r / 26 - 1), row_name(r % 26))
    }
}

/// The plate's shape from the wells read: 96 (8 × 12), 384 (16 × 24) or what the wells need.
fn shape(read: &Read) -> (usize, usize) {
    let (mut rows, mut cols) = (0, 0);
    for w in &read.wells {
        if let Some((r, c)) = position(&w.well) {
            rows = rows.max(r + 1);
            cols = cols.max(c + 1);
        }
    }
    match (rows, cols) {
        (r, c) if r <= 8 && c <= 12 => (8, 12),
        (r, c) if r <= 16 && c <= 24 => (16, 24),
        rc => rc,
    }
}

/// A read as a heatmap.
pub fn heatmap(read: &Read, title: &str) -> String {
    let (rows, cols) = shape(read);
    let cell = if cols > 12 { 22.0 } else { 36.0 };
    let (left, top) = (30.0, 46.0);
    let (width, height) = (left + cols as f64 * cell + 20.0, top + rows as f64 * cell + 40.0);
    let values: Vec<f64> = read.wells.iter().map(|w| w.value).filter(|v| v.is_finite()).collect();
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="lw-heatmap" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"##
    );
    let _ = write!(s, r##"<text x="{left}" y="16" font-size="13" font-weight="bold">{}</text>"##, esc(title));
    let _ = write!(
        s,
        r##"<text x="{left}" y="32" fill="#555">{} {}{} · {} to {} {}</text>"##,
        esc(&read.kind),
        read.wavelength_nm.map(|w| format!("{w} nm ")).unwrap_or_default(),
        esc(&read.labware),
        fmt(lo),
        fmt(hi),
        esc(&read.unit)
    );
    for c in 0..cols {
        let x = left + c as f64 * cell + cell / 2.0;
        let _ = write!(s, r##"<text x="{x}" y="{}" text-anchor="middle" fill="#555">{}</text>"##, top - 3.0, c + 1);
    }
    for r in 0..rows {
        let y = top + r as f64 * cell + cell / 2.0 + 4.0;
        let _ =
            write!(s, r##"<text x="{}" y="{y}" text-anchor="middle" fill="#555">{}</text>"##, left - 12.0, row_name(r));
    }
    // Every position of the plate, so its shape shows; wells read are drawn over them.
    for r in 0..rows {
        for c in 0..cols {
            let (x, y) = (left + c as f64 * cell, top + r as f64 * cell);
            let _ = write!(
                s,
                r##"<rect x="{x}" y="{y}" width="{}" height="{}" fill="#eeeeee" stroke="#fff"/>"##,
                cell - 1.0,
                cell - 1.0
            );
        }
    }
    for w in &read.wells {
        let Some((r, c)) = position(&w.well) else { continue };
        let (x, y) = (left + c as f64 * cell, top + r as f64 * cell);
        let t = (w.value - lo) / span;
        let mut tip = w.well.clone();
        if !w.sample.is_empty() {
            let _ = write!(tip, " · sample {}", w.sample);
        }
        if !w.group.is_empty() {
            let _ = write!(tip, " · group {}", w.group);
        }
        if let Some(conc) = w.concentration {
            let _ = write!(tip, " · {} {}", fmt(conc), w.concentration_unit);
        }
        let _ = write!(tip, " · {} {}", fmt(w.value), read.unit);
        let _ = write!(
            s,
            r##"<rect class="well" data-well="{}" data-value="{}" x="{x}" y="{y}" width="{}" height="{}" fill="{}" stroke="#fff"><title>{}</title></rect>"##,
            esc(&w.well),
            w.value,
            cell - 1.0,
            cell - 1.0,
            colour(t),
            esc(&tip)
        );
    }
    s.push_str("</svg>");
    s
}

fn fmt(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 10_000.0) {
        format!("{}", (v * 1000.0).round() / 1000.0)
    } else {
        format!("{v:.3e}")
    }
}

/// A standard curve: points, the line, its equation and R², the unknowns on it.
pub fn standard_curve(a: &Analysis, curve: &StandardCurve, title: &str) -> String {
    let line = curve.fit.as_ref().ok();
    let mut extra: Vec<(f64, f64, String)> = Vec::new();
    for u in &curve.unknowns {
        extra.push((u.concentration, u.mean, u.sample.clone()));
    }
    let caption = match line {
        Some(l) => {
            format!("y = {} + {} x · R² = {:.4} · n = {}", fmt(l.intercept.value), fmt(l.slope.value), l.r_squared, l.n)
        }
        None => format!("no fit: {}", curve.fit.as_ref().err().map_or("", String::as_str)),
    };
    let f = line.map(|l| {
        let l = l.clone();
        Box::new(move |x: f64| l.intercept.value + l.slope.value * x) as Box<dyn Fn(f64) -> f64>
    });
    chart(title, &caption, &curve.points, &extra, f, false, &curve.unit, &a.unit)
}

/// A dose-response series: points on a log axis, the logistic, EC50/IC50, Hill slope, R².
pub fn dose_response(a: &Analysis, d: &DoseResponse, title: &str) -> String {
    let fit = d.fit.as_ref().ok();
    let caption = match fit {
        Some(f) => format!(
            "{} = {} {} (95% CI {} to {}) · Hill {} · R² = {:.4}",
            f.midpoint,
            fmt(f.ec50.value),
            d.unit,
            fmt(f.ec50.ci95.0),
            fmt(f.ec50.ci95.1),
            fmt(f.hill.value),
            f.r_squared
        ),
        None => format!("no fit: {}", d.fit.as_ref().err().map_or("", String::as_str)),
    };
    let f = fit.map(|f| {
        let p = [f.bottom.value, f.top.value, f.ec50.value, f.hill.value];
        Box::new(move |x: f64| fit::logistic(p, x)) as Box<dyn Fn(f64) -> f64>
    });
    chart(title, &caption, &d.points, &[], f, true, &d.unit, &a.unit)
}

#[allow(clippy::too_many_arguments)]
fn chart(
    title: &str,
    caption: &str,
    points: &[(f64, f64)],
    marked: &[(f64, f64, String)],
    curve: Option<Box<dyn Fn(f64) -> f64>>,
    log_x: bool,
    x_unit: &str,
    y_unit: &str,
) -> String {
    let (w, h, left, right, top, bottom) = (520.0, 340.0, 64.0, 16.0, 48.0, 44.0);
    let xs: Vec<f64> = points
        .iter()
        .chain(marked.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>().iter())
        .map(|p| p.0)
        .filter(|x| !log_x || *x > 0.0)
        .collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1).chain(marked.iter().map(|m| m.1)).collect();
    let tx = |x: f64| if log_x { x.log10() } else { x };
    let (x0, x1) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(tx(*x)), b.max(tx(*x))));
    let (y0, y1) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(*y), b.max(*y)));
    let pad = |a: f64, b: f64| if b > a { (b - a) * 0.06 } else { 1.0 };
    let (x0, x1) = (x0 - pad(x0, x1), x1 + pad(x0, x1));
    let (y0, y1) = (y0 - pad(y0, y1), y1 + pad(y0, y1));
    let px = |x: f64| left + (tx(x) - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="lw-curve" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"##
    );
    let _ = write!(s, r##"<text x="{left}" y="16" font-size="13" font-weight="bold">{}</text>"##, esc(title));
    let _ = write!(s, r##"<text class="fit" x="{left}" y="33" fill="#333">{}</text>"##, esc(caption));
    let _ = write!(
        s,
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        w - left - right,
        h - top - bottom
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let (xv, yv) = (x0 + f * (x1 - x0), y0 + f * (y1 - y0));
        let xl = if log_x { fmt(10f64.powf(xv)) } else { fmt(xv) };
        let xp = left + f * (w - left - right);
        let yp = h - bottom - f * (h - top - bottom);
        let _ = write!(s, r##"<text x="{xp}" y="{}" text-anchor="middle" fill="#555">{xl}</text>"##, h - bottom + 14.0);
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end" fill="#555">{}</text>"##,
            left - 4.0,
            yp + 4.0,
            fmt(yv)
        );
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#333">concentration ({}){}</text>"##,
        (left + w - right) / 2.0,
        h - 8.0,
        esc(x_unit),
        if log_x { ", log scale" } else { "" }
    );
    let _ = write!(
        s,
        r##"<text x="12" y="{}" fill="#333" transform="rotate(-90 12 {})" text-anchor="middle">{}</text>"##,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0,
        esc(y_unit)
    );
    if let Some(f) = curve {
        let mut d = String::new();
        for i in 0..=200 {
            let t = x0 + (x1 - x0) * i as f64 / 200.0;
            let x = if log_x { 10f64.powf(t) } else { t };
            let y = f(x);
            if y.is_finite() {
                let _ = write!(
                    d,
                    "{}{:.2},{:.2} ",
                    if d.is_empty() { "M" } else { "L" },
                    px(x),
                    py(y).clamp(top, h - bottom)
                );
            }
        }
        let _ = write!(s, r##"<path class="fitted" d="{d}" fill="none" stroke="#21918c" stroke-width="2"/>"##);
    }
    for &(x, y) in points.iter().filter(|p| !log_x || p.0 > 0.0) {
        let _ = write!(
            s,
            r##"<circle class="point" cx="{:.2}" cy="{:.2}" r="3.5" fill="#3b528b"><title>{} {} · {}</title></circle>"##,
            px(x),
            py(y),
            fmt(x),
            esc(x_unit),
            fmt(y)
        );
    }
    for (x, y, name) in marked.iter().filter(|m| !log_x || m.0 > 0.0) {
        let _ = write!(
            s,
            r##"<rect class="unknown" x="{:.2}" y="{:.2}" width="8" height="8" fill="#fde725" stroke="#333"><title>{} · {} {} from {}</title></rect>"##,
            px(*x) - 4.0,
            py(*y) - 4.0,
            esc(name),
            fmt(*x),
            esc(x_unit),
            fmt(*y)
        );
    }
    s.push_str("</svg>");
    s
}

/// Every picture of a read: (file name, SVG).
pub fn pictures(read: &Read, a: &Analysis, index: usize) -> Vec<(String, String)> {
    let what = format!("read {index}: {} of {}", a.kind, a.labware);
    let mut out = vec![(format!("read-{index}-heatmap.svg"), heatmap(read, &what))];
    if let Some(c) = &a.standard_curve {
        out.push((
            format!("read-{index}-standard-curve.svg"),
            standard_curve(a, c, &format!("{what}: standard curve")),
        ));
    }
    for (i, d) in a.dose_response.iter().enumerate() {
        let name = if d.group.is_empty() { d.sample.clone() } else { format!("{} ({})", d.sample, d.group) };
        out.push((format!("read-{index}-dose-response-{i}.svg"), dose_response(a, d, &format!("{what}: {name}"))));
    }
    out
}
