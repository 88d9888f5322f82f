//! The capacity report as people read it: an SVG Gantt chart, the cost curve, Markdown.
//! Pure: a [`Report`] in, text out.

use super::{AtTarget, Report};

const PALETTE: [&str; 10] =
    ["#457b9d", "#e76f51", "#2a9d8f", "#8e6bbf", "#e9c46a", "#d62f7c", "#6a994e", "#f4a261", "#264653", "#bc6c25"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The schedule as an SVG Gantt chart: one lane per instrument and arm, bars coloured by tenant.
pub fn gantt_svg(r: &Report) -> String {
    let lanes: Vec<&str> = r.utilisation.iter().map(|u| u.id.as_str()).collect();
    let tenants: Vec<&str> = r.per_tenant.iter().map(|t| t.tenant.as_str()).collect();
    let (left, lane_h, width, top) = (110.0, 22.0, 1200.0, 30.0);
    let span = r.makespan_s.max(1.0);
    let x = |t: f64| left + t / span * (width - left - 10.0);
    let height = top + lanes.len() as f64 * lane_h + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"4\" y=\"16\" font-size=\"13\">{} runs from {} tenants: makespan {:.1} h, bottleneck {}</text>\n",
        r.runs,
        r.tenants,
        r.makespan_s / 3600.0,
        escape(&r.bottleneck)
    );
    for (i, lane) in lanes.iter().enumerate() {
        let y = top + i as f64 * lane_h;
        svg.push_str(&format!("<text x=\"4\" y=\"{}\">{}</text>\n", y + 15.0, escape(lane)));
        svg.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{width}\" y1=\"{0}\" y2=\"{0}\" stroke=\"#eee\"/>\n",
            y + lane_h
        ));
    }
    for b in &r.bars {
        let Some(i) = lanes.iter().position(|l| *l == b.lane) else { continue };
        let colour = PALETTE[tenants.iter().position(|t| *t == b.tenant).unwrap_or(0) % PALETTE.len()];
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{}\" fill=\"{colour}\"><title>{} {} {} ({:.0}–{:.0} s)</title></rect>\n",
            x(b.start_s),
            top + i as f64 * lane_h + 3.0,
            (x(b.end_s) - x(b.start_s)).max(0.5),
            lane_h - 6.0,
            escape(&b.tenant),
            escape(&b.run),
            escape(&b.label),
            b.start_s,
            b.end_s
        ));
    }
    // Hour ticks.
    let bottom = top + lanes.len() as f64 * lane_h;
    let step = if span > 48.0 * 3600.0 {
        6.0
    } else if span > 12.0 * 3600.0 {
        2.0
    } else {
        1.0
    };
    let mut h = 0.0;
    while h * 3600.0 <= span {
        svg.push_str(&format!(
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{bottom}\" stroke=\"#ccc\" stroke-dasharray=\"2,3\"/><text x=\"{0:.1}\" y=\"{1}\">{h} h</text>\n",
            x(h * 3600.0),
            bottom + 14.0
        ));
        h += step;
    }
    svg.push_str("</svg>\n");
    svg
}

/// Cost per run against the number of tenants: the curve a shared lab lives on.
pub fn cost_curve_svg(reports: &[Report]) -> String {
    let (w, h, left, bottom) = (640.0, 360.0, 70.0, 50.0);
    let max_t = reports.iter().map(|r| r.tenants).max().unwrap_or(1).max(1) as f64;
    let max_c = reports.iter().map(|r| r.site_cost_per_run.max(r.billed_per_run)).fold(0.0, f64::max).max(1e-9) * 1.1;
    let x = |t: f64| left + t / max_t * (w - left - 20.0);
    let y = |c: f64| (h - bottom) - c / max_c * (h - bottom - 30.0);
    let currency = reports.first().map(|r| r.currency.clone()).unwrap_or_default();
    let (axis_y, right, mid, label_y) = (h - bottom, w - 20.0, w / 2.0, h - 12.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"{left}\" y=\"18\" font-size=\"13\">Cost per run ({currency}) against the number of tenants</text>\n\
         <line x1=\"{left}\" x2=\"{right}\" y1=\"{axis_y}\" y2=\"{axis_y}\" stroke=\"#333\"/><line x1=\"{left}\" x2=\"{left}\" y1=\"30\" y2=\"{axis_y}\" stroke=\"#333\"/>\n\
         <text x=\"{mid}\" y=\"{label_y}\">tenants</text>\n",
        currency = escape(&currency),
    );
    for (name, colour, value) in [
        (
            "site cost per run (all instruments for the makespan)",
            "#d62828",
            (|r: &Report| r.site_cost_per_run) as fn(&Report) -> f64,
        ),
        ("billed per run (device time used)", "#457b9d", |r: &Report| r.billed_per_run),
    ] {
        let points: Vec<String> =
            reports.iter().map(|r| format!("{:.1},{:.1}", x(r.tenants as f64), y(value(r)))).collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
            points.join(" ")
        ));
        for r in reports {
            svg.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{} tenants: {:.2}</title></circle>\n",
                x(r.tenants as f64),
                y(value(r)),
                r.tenants,
                value(r)
            ));
        }
        let ly = if colour == "#d62828" { 40.0 } else { 56.0 };
        svg.push_str(&format!(
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
            w - 330.0,
            ly - 9.0,
            w - 315.0,
            ly
        ));
    }
    for r in reports {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x(r.tenants as f64),
            h - bottom + 15.0,
            r.tenants
        ));
    }
    for k in 0..=4 {
        let c = max_c * k as f64 / 4.0;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{c:.0}</text>\n",
            left - 5.0,
            y(c) + 4.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

fn hours(s: f64) -> String {
    format!("{:.2} h", s / 3600.0)
}

/// The report as Markdown: the scenario with the most tenants in full, then the curve.
pub fn markdown(site: &str, workload: &str, reports: &[Report]) -> String {
    let Some(r) = reports.iter().max_by_key(|r| r.tenants) else { return String::new() };
    let mut md = format!(
        "# Capacity report\n\nSite `{site}`, workload `{workload}`, simulated in virtual time with the runtime's scheduler.\n\n\
         ## {} tenants, {} runs\n\n\
         - makespan: **{}** (lower bound {}; {:.2}× the bound)\n- busiest set by eligible work: {}\n- bottleneck (busiest in the plan): **{}**\n- Jain's fairness index: {:.3}\n\
         - promises kept: {} of {} promised runs ({:.1}%) finished by the completion promised when they arrived{}\n\
         - site cost per run: {:.2} {cur} in instrument time, {:.2} {cur} in consumables and reagents, {:.2} {cur} in storage; billed per run: {:.2} {cur}\n- planned {} ({} re-plans)\n\n\
         - device time: {:.1} device-hours, charged {:.2} {cur} per device-hour on average; break-even at this load: {:.2} {cur} per device-hour\n\
         - 90th percentile of turnaround (promised runs): {}\n\n\
         ![Gantt chart](gantt.svg)\n\n### Utilisation\n\n(busy: holding a plate or running a task; utilisation: slots in use ÷ slots × makespan)\n\n| instrument | class | slots | busy | utilisation |\n|---|---|---:|---:|---:|\n",
        r.tenants,
        r.runs,
        hours(r.makespan_s),
        hours(r.lower_bound_s),
        r.makespan_s / r.lower_bound_s.max(1e-9),
        if r.bound_set.is_empty() { "none".to_string() } else { r.bound_set.join(" + ") },
        r.bottleneck,
        r.jain,
        r.promises_kept,
        r.promised,
        100.0 * r.promises_kept as f64 / r.promised.max(1) as f64,
        match r.disturbed {
            Some(seed) => format!(
                " (disturbed with seed {seed}: tasks last 0.8–1.2× their estimates, one liquid-handler failure of 10–40 min per {} runs)",
                super::RUNS_PER_FAILURE
            ),
            None => " (every task took its estimate)".into(),
        },
        r.site_cost_per_run,
        r.consumables_per_run,
        r.storage_per_run,
        r.billed_per_run,
        match r.seed {
            Some(seed) => format!("with seed {seed}, budgets counted in candidate plans (repeatable)"),
            None => "as the executor plans, within time budgets (figures vary a little run to run)".into(),
        },
        r.replans,
        r.device_hours,
        r.charged_per_device_hour,
        r.break_even_per_device_hour,
        hours(r.turnaround_p90_s),
        cur = r.currency,
    );
    for u in &r.utilisation {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1}% |\n",
            u.id,
            u.class,
            u.slots,
            hours(u.busy_s),
            u.fraction * 100.0
        ));
    }
    if r.per_class.len() > 1 || r.per_class.iter().any(|c| c.class != labware::ServiceClass::Standard) {
        md.push_str(&format!(
            "\n### Per service class\n\n| class | runs | device time | share of {} | revenue ({}) | mean turnaround | mean slowdown | promises kept | within its turnaround |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            r.bottleneck, r.currency
        ));
        for c in &r.per_class {
            let kept = if c.promised == 0 {
                "none promised".to_string()
            } else {
                format!("{} of {}", c.promises_kept, c.promised)
            };
            let within = c.within_turnaround.map_or_else(|| "—".to_string(), |n| format!("{n} of {}", c.runs));
            md.push_str(&format!(
                "| {} | {} | {} | {:.1}% | {:.2} | {} | {:.2} | {} | {} |\n",
                c.class,
                c.runs,
                hours(c.device_s),
                100.0 * c.bottleneck_share,
                c.revenue,
                hours(c.mean_turnaround_s),
                c.mean_slowdown,
                kept,
                within
            ));
        }
    }
    if !r.durations.is_empty() {
        md.push_str(&format!(
            "\n### Durations: estimates against what tasks took\n\nRuns were planned with {}; the last was promised with a margin of {:.0}% of its planned turnaround. Error: median of |actual − estimate| ÷ actual.\n\n\
             | instrument class | kind | tasks | actual ÷ compiler's estimate | error, compiler's estimate | error, as planned | as planned, later half |\n|---|---|---:|---:|---:|---:|---:|\n",
            if r.learned {
                "estimates corrected by the tasks finished before each arrived (as the executor learns)"
            } else {
                "the compiler's estimates (`--no-learning`)"
            },
            100.0 * r.promise_margin
        ));
        for d in &r.durations {
            md.push_str(&format!(
                "| {} | {} | {} | {:.2} | {:.1}% | {:.1}% | {:.1}% |\n",
                d.class,
                d.kind,
                d.samples,
                d.actual_over_estimate,
                100.0 * d.error_estimate,
                100.0 * d.error_planned,
                100.0 * d.error_planned_later_half
            ));
        }
    }
    md.push_str("\n### Per tenant\n\n| tenant | profile | runs | promises kept | mean turnaround | max turnaround | mean slowdown | max slowdown |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    for t in &r.per_tenant {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} |\n",
            t.tenant,
            t.profile,
            t.runs,
            t.promises_kept,
            hours(t.mean_turnaround_s),
            hours(t.max_turnaround_s),
            t.mean_slowdown,
            t.max_slowdown
        ));
    }
    md.push_str(&format!(
        "\n## Cost per run against tenants\n\n![cost curve](cost-curve.svg)\n\n| tenants | runs | makespan | bottleneck | its utilisation | max slowdown | Jain | promises kept | site cost per run ({0}) | consumables per run ({0}) | storage per run ({0}) | billed per run ({0}) |\n|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        r.currency
    ));
    for r in reports {
        let b = r.utilisation.iter().find(|u| u.id == r.bottleneck).map_or(0.0, |u| u.fraction);
        let worst = r.per_tenant.iter().map(|t| t.max_slowdown).fold(0.0, f64::max);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1}% | {:.2} | {:.3} | {:.1}% | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            r.tenants,
            r.runs,
            hours(r.makespan_s),
            r.bottleneck,
            b * 100.0,
            worst,
            r.jain,
            100.0 * r.promises_kept as f64 / r.promised.max(1) as f64,
            r.site_cost_per_run,
            r.consumables_per_run,
            r.storage_per_run,
            r.billed_per_run
        ));
    }
    md
}

/// The answer to "how many tenants at this turnaround target", as Markdown.
pub fn target_markdown(a: &AtTarget) -> String {
    let mut md = format!(
        "\n## Tenants at a turnaround target\n\nTarget: the 90th percentile of turnaround of promised runs within {}.\n\n",
        hours(a.target_s)
    );
    match &a.within {
        Some(r) => md.push_str(&format!(
            "- **{} tenants** ({} runs): 90th percentile {}, makespan {}, Jain {:.3}, promises kept {} of {}; break-even {:.2} {cur} per device-hour against {:.2} charged\n",
            r.tenants,
            r.runs,
            hours(r.turnaround_p90_s),
            hours(r.makespan_s),
            r.jain,
            r.promises_kept,
            r.promised,
            r.break_even_per_device_hour,
            r.charged_per_device_hour,
            cur = r.currency
        )),
        None => md.push_str("- not even one tenant: a tenant's own runs take longer than the target on the empty lab\n"),
    }
    if let Some(r) = &a.beyond {
        md.push_str(&format!(
            "- {} tenants: 90th percentile {} (over the target)\n",
            r.tenants,
            hours(r.turnaround_p90_s)
        ));
    }
    md
}
