//! The compiler driver: parse → resolve → lower → check → plan, collecting every diagnostic.

use crate::ast::{Named, Protocol};
use crate::check;
use crate::diag::{Diagnostic, Diagnostics};
use crate::lower::{self, LTask};
use crate::plan::{MaxLag, PlanLabware, RunPlan, Task, TaskId, PLAN_VERSION};
use crate::quote::{self, Quote};
use crate::resolve::Env;
use crate::source::{SourceFile, Span};
use crate::syntax::{self, Node};
use crate::{import, lang};
use labware::{InstrumentClass, Library, Site};
use std::collections::{BTreeMap, BTreeSet};

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Decide from the file name and content.
    Auto,
    /// Labwright's experiment language, YAML or JSON.
    Labwright,
    /// Autoprotocol JSON.
    Autoprotocol,
    /// Opentrons JSON protocol, schemas 6 to 8.
    Opentrons,
}

impl Format {
    /// Name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Labwright => "labwright",
            Format::Autoprotocol => "autoprotocol",
            Format::Opentrons => "opentrons",
        }
    }
}

/// What the compiler produced: a plan and a quote when there were no errors, and every
/// diagnostic found either way.
#[derive(Debug)]
pub struct Compilation {
    pub format: Format,
    pub plan: Option<RunPlan>,
    pub quote: Option<Quote>,
    pub diagnostics: Vec<Diagnostic>,
    /// Liquid state at the end, for reports and tests.
    pub tracked: Option<check::Tracked>,
}

impl Compilation {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Largest protocol file read (bytes); larger files are refused with a diagnostic.
pub const MAX_SOURCE_BYTES: usize = 32 * 1024 * 1024;

/// Compiles raw file bytes: invalid UTF-8 is reported as diagnostic P0002 (with the byte
/// offset) instead of being compiled. Returns the source (for rendering) and the compilation.
pub fn compile_bytes(
    name: &str,
    bytes: Vec<u8>,
    format: Format,
    site: &Site,
    lib: &Library,
) -> (SourceFile, Compilation) {
    compile_bytes_with(name, bytes, format, site, lib, &crate::held::NoInventory)
}

/// [`compile_bytes`], with the containers the lab holds for the compiling tenant.
pub fn compile_bytes_with(
    name: &str,
    bytes: Vec<u8>,
    format: Format,
    site: &Site,
    lib: &Library,
    inventory: &dyn crate::held::Inventory,
) -> (SourceFile, Compilation) {
    match SourceFile::from_bytes(name, bytes) {
        Ok(src) => {
            let c = compile_with(&src, format, site, lib, inventory);
            (src, c)
        }
        Err((src, at)) => {
            let diag =
                Diagnostic::error("P0002", Span::new(at, at), format!("the file is not valid UTF-8 (byte {at})"))
                    .with_hint("save the file as UTF-8");
            (src, Compilation { format, plan: None, quote: None, diagnostics: vec![diag], tracked: None })
        }
    }
}

/// Compiles one protocol file against a site and a labware library.
pub fn compile(src: &SourceFile, format: Format, site: &Site, lib: &Library) -> Compilation {
    compile_with(src, format, site, lib, &crate::held::NoInventory)
}

/// [`compile`], with the containers the lab holds for the compiling tenant (a labware that
/// names a `container` takes its type and contents from there).
pub fn compile_with(
    src: &SourceFile,
    format: Format,
    site: &Site,
    lib: &Library,
    inventory: &dyn crate::held::Inventory,
) -> Compilation {
    let mut d = Diagnostics::default();
    let mut out = Compilation { format, plan: None, quote: None, diagnostics: Vec::new(), tracked: None };
    if src.text.len() > MAX_SOURCE_BYTES {
        d.error(
            "P0005",
            Span::new(0, 0),
            format!("the file is {} bytes; protocols are limited to {MAX_SOURCE_BYTES}", src.text.len()),
        );
        out.diagnostics = d.items;
        return out;
    }
    let is_json = src.text.trim_start().starts_with(['{', '[']);
    let parsed = if is_json { syntax::json::parse(src) } else { syntax::yaml::parse(src) };
    d.items.extend(parsed.diagnostics);
    let Some(root) = parsed.root else {
        out.diagnostics = d.items;
        return out;
    };
    let format = match format {
        Format::Auto => detect(&src.name, &root, is_json),
        f => f,
    };
    out.format = format;
    if !is_json && format != Format::Labwright {
        d.error("P0001", root.span, format!("{} protocols are JSON, but this file is not", format.as_str()));
        out.diagnostics = d.items;
        return out;
    }
    let mut protocol = match format {
        Format::Autoprotocol => import::autoprotocol::parse(&root, lib, &mut d),
        Format::Opentrons => import::opentrons::parse(&root, lib, &mut d),
        _ => lang::parse(&root, &mut d),
    };
    crate::held::resolve(&mut protocol, inventory, &mut d);
    crate::consumables::check_reagents(&protocol, site, &mut d);
    check_text_limits(&protocol, &mut d);
    let (mut plan, tracked) = build(&protocol, site, lib, &mut d);
    if let (Some(plan), Some(tracked)) = (plan.as_mut(), tracked.as_ref()) {
        crate::held::note_draws(plan, tracked, lib);
        crate::held::note_outputs(plan, tracked, lib);
    }
    if !d.has_errors() {
        out.quote = plan.as_ref().map(|p| quote::quote(p, site));
        out.plan = plan;
    }
    out.tracked = tracked;
    out.diagnostics = d.items;
    // Syntax and shape (P00xx, P01xx) before names (P02xx) before the volume, capability and
    // import checks (P03xx–P05xx) that an earlier mistake can make meaningless; within a class,
    // in the order of the file.
    out.diagnostics.sort_by_key(|x| (x.code.get(..3).unwrap_or("").to_string(), x.span.start, x.code));
    out
}

/// Characters allowed in the free text of a protocol, per kind of text: enough for any real
/// protocol, and small enough that no list of runs, event or console page is swamped by one.
pub const MAX_NAME_CHARS: usize = 200;
/// A labware, liquid or step name (imported Opentrons labware ids run to about 80).
pub const MAX_IDENTIFIER_CHARS: usize = 200;
/// A manual step's instruction to a technician.
pub const MAX_INSTRUCTION_CHARS: usize = 2_000;

/// Every free-text field of the protocol within its limit (P0112), whatever format it came in.
fn check_text_limits(p: &Protocol, d: &mut Diagnostics) {
    let over = |text: &str, max: usize| text.chars().count() > max;
    let mut report = |span: Span, what: &str, text: &str, max: usize| {
        d.push(
            Diagnostic::error(
                "P0112",
                span,
                format!("{what} is {} characters long; the limit is {max}", text.chars().count()),
            )
            .with_hint("shorten it; put long descriptions in the lab's notes, not in the protocol"),
        );
    };
    if over(&p.name, MAX_NAME_CHARS) {
        report(Span::new(0, 0), "the protocol's name", &p.name, MAX_NAME_CHARS);
    }
    for lw in &p.labware {
        if over(&lw.name.name, MAX_IDENTIFIER_CHARS) {
            report(lw.name.span, "a labware name", &lw.name.name, MAX_IDENTIFIER_CHARS);
        }
    }
    for l in &p.liquids {
        if over(&l.name, MAX_IDENTIFIER_CHARS) {
            report(l.span, "a liquid name", &l.name, MAX_IDENTIFIER_CHARS);
        }
    }
    for step in &p.steps {
        if let Some(id) = step.id.as_ref().filter(|id| over(&id.name, MAX_IDENTIFIER_CHARS)) {
            report(id.span, "a step id", &id.name, MAX_IDENTIFIER_CHARS);
        }
        if let crate::ast::Op::Manual { instruction, .. } = &step.op {
            if over(instruction, MAX_INSTRUCTION_CHARS) {
                report(step.span, "a manual step's instruction", instruction, MAX_INSTRUCTION_CHARS);
            }
        }
    }
}

/// Picks the format of a file the user did not label.
pub fn detect(name: &str, root: &Node, is_json: bool) -> Format {
    if !is_json {
        return Format::Labwright;
    }
    if root.get("labwright").is_some() {
        return Format::Labwright;
    }
    if root.get("schemaVersion").is_some() && root.get("commands").is_some() {
        return Format::Opentrons;
    }
    let ops_list = root.as_list().is_some_and(|l| l.iter().any(|i| i.get("op").is_some()));
    if root.get("instructions").is_some() || root.get("refs").is_some() || ops_list {
        return Format::Autoprotocol;
    }
    if name.ends_with(".autoprotocol.json") {
        return Format::Autoprotocol;
    }
    Format::Labwright
}

/// Resolve, lower, check and assemble the plan.
pub fn build(
    p: &Protocol,
    site: &Site,
    lib: &Library,
    d: &mut Diagnostics,
) -> (Option<RunPlan>, Option<check::Tracked>) {
    let env = Env::build(p, lib, d);
    let initial = check::initial(p, &env, d);
    // What the technician loads: per labware, per well, the starting liquids.
    let loading: Vec<BTreeMap<String, BTreeMap<String, f64>>> = initial
        .wells
        .iter()
        .zip(&env.slots)
        .map(|(wells, slot)| {
            wells
                .iter()
                .zip(&slot.def.wells)
                .filter(|(w, _)| w.volume() > 0.0)
                .map(|(w, def)| (def.name.clone(), w.contents.clone()))
                .collect()
        })
        .collect();
    let lowered = lower::lower(p, &env, site, d);
    let tracked = check::liquids(&env, &lowered.tasks, &lowered.channels, initial, d);
    crate::waiting::check(p, &env, &lowered.tasks, &tracked, d);
    let mut plan = link(p, &env, lowered.tasks, site, d);
    if let Some(plan) = plan.as_mut() {
        for (lw, composition) in plan.labware.iter_mut().zip(loading) {
            lw.contents = composition.iter().map(|(well, mix)| (well.clone(), mix.values().sum())).collect();
            lw.composition = composition;
        }
        plan.optics = p.optics.clone();
        plan.reagents = p.reagents.iter().map(|(liquid, r)| (liquid.clone(), r.name.clone())).collect();
    }
    (plan, Some(tracked))
}

/// Computes dependencies, orders tasks, resolves constraints and checks them.
fn link(p: &Protocol, env: &Env, tasks: Vec<LTask>, site: &Site, d: &mut Diagnostics) -> Option<RunPlan> {
    let n = tasks.len();
    let mut ids: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        for id in &t.ids {
            if ids.get(&id.name).is_some_and(|v| !v.is_empty()) {
                d.push(Diagnostic::error("P0207", id.span, format!("step id `{}` is used twice", id.name)));
            }
            ids.entry(id.name.clone()).or_default().push(i);
        }
    }
    let mut after: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut last_by_slot: BTreeMap<usize, usize> = BTreeMap::new();
    let mut last_barrier: Option<usize> = None;
    let mut since_barrier: Vec<usize> = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        if t.barrier {
            after[i].extend(since_barrier.drain(..));
            after[i].extend(last_barrier);
            last_barrier = Some(i);
        } else {
            for s in &t.holds {
                if let Some(&prev) = last_by_slot.get(s) {
                    after[i].insert(prev);
                }
            }
            if let Some(b) = last_barrier {
                after[i].insert(b);
            }
            since_barrier.push(i);
        }
        for s in &t.holds {
            last_by_slot.insert(*s, i);
        }
        for a in &t.after {
            match lookup(&ids, a, d) {
                Some(targets) => after[i].extend(targets),
                None => continue,
            }
        }
        after[i].remove(&i);
    }
    // Explicit `after` may point forward; order tasks topologically and report cycles.
    let order = match topo(&after) {
        Ok(o) => o,
        Err(cycle) => {
            let names: Vec<String> = cycle.iter().map(|&i| task_name(&tasks[i])).collect();
            let span = cycle.first().map_or(Span::default(), |&i| tasks[i].span);
            d.push(
                Diagnostic::error(
                    "P0403",
                    span,
                    format!("these steps wait for each other in a cycle: {}", names.join(" → ")),
                )
                .with_hint("remove one of the `after:` entries that close the loop"),
            );
            return None;
        }
    };
    let mut new_id = vec![0u32; n];
    for (pos, &old) in order.iter().enumerate() {
        new_id[old] = pos as u32;
    }
    let mut plan_tasks: Vec<Task> = Vec::with_capacity(n);
    // A liquid handler's driver puts all of the run's labware on its deck at once.
    let on_deck = env.slots.iter().filter(|s| s.def.kind != labware::LabwareKind::Trash).count();
    let mut deck_reported = false;
    for &old in &order {
        let t = &tasks[old];
        let mut deps: Vec<TaskId> = after[old].iter().map(|&a| new_id[a]).collect();
        deps.sort_unstable();
        plan_tasks.push(Task {
            id: new_id[old],
            class: t.class,
            label: t.label.clone(),
            holds: t.holds.iter().map(|&s| env.slots[s].name.clone()).collect(),
            after: deps,
            duration_s: t.duration_s(),
            commands: t.commands.clone(),
            settings: t.settings,
            pipettes: t.pipettes.iter().cloned().collect(),
            instruments: Vec::new(),
            span: t.span,
        });
        if let Some(task) = plan_tasks.last_mut() {
            let kinds: Vec<_> = t.holds.iter().map(|&s| env.slots[s].def.kind).collect();
            task.instruments = crate::capability::instruments_for(site, task, &kinds);
            if task.class == Some(InstrumentClass::LiquidHandler) {
                // One handler carries the whole step: the tips of a step pick its pipettes, and a
                // step whose pipettes hang on different robots cannot run anywhere.
                let carries = |i: &labware::site::Instrument| {
                    task.pipettes.iter().all(|p| i.pipettes.iter().any(|q| &q.name == p))
                };
                let handlers: Vec<&labware::site::Instrument> =
                    task.instruments.iter().filter_map(|id| site.instruments.iter().find(|i| &i.id == id)).collect();
                if !handlers.is_empty() && !handlers.iter().any(|i| carries(i)) {
                    let each: Vec<String> = handlers
                        .iter()
                        .map(|i| {
                            let names: Vec<&str> = i.pipettes.iter().map(|p| p.name.as_str()).collect();
                            format!("{}: {}", i.id, names.join(", "))
                        })
                        .collect();
                    let needs: Vec<&str> = task.pipettes.iter().map(String::as_str).collect();
                    d.push(
                        Diagnostic::error(
                            "P0401",
                            t.span,
                            format!(
                                "`{}` needs the pipettes {}, and no liquid handler of this site carries them all ({})",
                                task.label,
                                needs.join(" and "),
                                each.join("; ")
                            ),
                        )
                        .with_hint(
                            "use tip racks one pipette can work with for the whole step, or split the step in two",
                        ),
                    );
                    task.instruments.clear();
                    continue;
                }
                task.instruments.retain(|id| site.instruments.iter().find(|i| &i.id == id).is_some_and(carries));
                let capable = std::mem::take(&mut task.instruments);
                task.instruments = capable
                    .iter()
                    .filter(|id| {
                        site.instruments
                            .iter()
                            .find(|i| &i.id == *id)
                            .is_some_and(|i| crate::capability::deck_holds(i, on_deck))
                    })
                    .cloned()
                    .collect();
                if task.instruments.is_empty() && !capable.is_empty() {
                    if !deck_reported {
                        let decks: Vec<String> = capable
                            .iter()
                            .filter_map(|id| site.instruments.iter().find(|i| &i.id == id))
                            .map(|i| {
                                let slots = i
                                    .deck_slots
                                    .unwrap_or(crate::capability::DECK_SLOTS)
                                    .min(crate::capability::DECK_SLOTS);
                                format!("{}: {slots}", i.id)
                            })
                            .collect();
                        d.push(
                            Diagnostic::error(
                                "P0401",
                                p.labware.last().map_or(t.span, |l| l.name.span),
                                format!(
                                    "the protocol puts {on_deck} labware on the liquid handler's deck, but no deck of this site has that many slots ({})",
                                    decks.join(", ")
                                ),
                            )
                            .with_hint("use fewer tip racks, plates or reservoirs in one protocol (the trash does not count), or split it into two"),
                        );
                        deck_reported = true;
                    }
                    continue;
                }
            }
            let runs_on_instrument =
                task.class.is_some_and(|c| !matches!(c, InstrumentClass::Technician | InstrumentClass::RobotArm));
            if runs_on_instrument && task.instruments.is_empty() {
                let class = task.class.map_or("", |c| c.as_str());
                d.push(
                    Diagnostic::error(
                        "P0401",
                        t.span,
                        format!("`{}`: no single {class} of this site can do all of it", task.label),
                    )
                    .with_hint("each of its parts is possible somewhere; split the step, or ask the lab"),
                );
            }
        }
    }
    // Each constraint as (from, to) task pairs, in the tasks' numbering before any wait is added.
    let mut lags: Vec<(usize, usize, &crate::ast::LagConstraint)> = Vec::new();
    for c in &p.constraints {
        let (Some(from), Some(to)) = (lookup(&ids, &c.from, d), lookup(&ids, &c.to, d)) else { continue };
        let pairs: Vec<(usize, usize)> = if from.len() == to.len() {
            from.iter().copied().zip(to.iter().copied()).collect()
        } else if to.len() == 1 {
            from.iter().map(|&f| (f, to[0])).collect()
        } else if from.len() == 1 {
            to.iter().map(|&t| (from[0], t)).collect()
        } else {
            d.push(Diagnostic::error(
                "P0207",
                c.span,
                format!(
                    "`{}` and `{}` repeat a different number of times; a constraint between them is ambiguous",
                    c.from.name, c.to.name
                ),
            ));
            continue;
        };
        for (f, t) in pairs {
            lags.push((new_id[f] as usize, new_id[t] as usize, c));
        }
    }
    // A minimum lag is a wait task between the two: `to` waits for it, it waits for `from`.
    let mut k = 0;
    while k < lags.len() {
        let (f, t, c) = lags[k];
        if let (Some(min_s), true) = (c.min_s, t > f) {
            insert_wait(&mut plan_tasks, f, t, min_s, &c.from.name, c.span);
            for l in lags.iter_mut() {
                for i in [&mut l.0, &mut l.1] {
                    if *i >= t {
                        *i += 1;
                    }
                }
            }
        }
        k += 1;
    }
    let mut max_lags = Vec::new();
    for &(f, t, c) in &lags {
        let lag = MaxLag { from: f as TaskId, to: t as TaskId, max_s: c.max_s.unwrap_or(f64::INFINITY) };
        check_lag(&plan_tasks, &lag, site, c.span, &c.from.name, &c.to.name, d);
        if c.max_s.is_some() {
            max_lags.push(lag);
        }
    }
    Some(RunPlan {
        version: PLAN_VERSION,
        protocol: if p.name.is_empty() { "unnamed".into() } else { p.name.clone() },
        labware: env
            .slots
            .iter()
            .map(|s| PlanLabware {
                name: s.name.clone(),
                load_name: s.def.load_name.clone(),
                kind: s.def.kind,
                contents: BTreeMap::new(),
                composition: BTreeMap::new(),
                map: plate_map(p, s, d),
                container: p
                    .labware
                    .iter()
                    .find(|l| l.name.name == s.name)
                    .and_then(|l| l.container.as_ref().map(|c| c.name.clone())),
                drawn: BTreeMap::new(),
                store: p.labware.iter().find(|l| l.name.name == s.name).and_then(|l| match &l.after {
                    Some(crate::ast::After::Store(condition)) => Some(condition.clone()),
                    _ => None,
                }),
                discard: p.labware.iter().any(|l| l.name.name == s.name && l.after == Some(crate::ast::After::Discard)),
                outputs: BTreeMap::new(),
            })
            .collect(),
        tasks: plan_tasks,
        max_lags,
        optics: BTreeMap::new(),
        // The protocol's own definitions of the types it uses.
        custom_labware: p
            .custom_labware
            .iter()
            .filter(|c| env.slots.iter().any(|s| s.def.load_name == c.load_name))
            .cloned()
            .collect(),
        reagents: BTreeMap::new(),
    })
}

/// A labware's plate map with its wells resolved on its definition.
fn plate_map(
    p: &Protocol,
    slot: &crate::resolve::Slot,
    d: &mut Diagnostics,
) -> BTreeMap<String, crate::design::WellDesign> {
    let Some(decl) = p.labware.iter().find(|l| l.name.name == slot.name) else { return BTreeMap::new() };
    let (mut entries, mut origin) = (Vec::new(), Vec::new());
    for (k, e) in decl.map.iter().enumerate() {
        let wells = match labware::address::WellSelection::parse(&e.selection).and_then(|s| s.resolve(&slot.def)) {
            Ok(w) => w,
            Err(err) => {
                d.push(
                    Diagnostic::error("P0208", e.span, format!("the map of {}: {}: {err}", slot.name, e.selection))
                        .with_hint(format!("`{}` has {}", slot.name, slot.def.grid_description())),
                );
                continue;
            }
        };
        origin.push(k);
        entries.push(crate::design::Entry {
            wells: wells.into_iter().filter_map(|i| slot.def.wells.get(i).map(|w| w.name.clone())).collect(),
            sample: e.sample.clone(),
            group: e.group.clone(),
            role: e.role,
            concentration: e.concentration.clone(),
        });
    }
    match crate::design::layout(&entries) {
        Ok(map) => map,
        Err((k, why)) => {
            let span = origin.get(k).and_then(|&o| decl.map.get(o)).map_or(decl.name.span, |e| e.span);
            d.push(Diagnostic::error("P0208", span, format!("the map of {}: {why}", slot.name)));
            BTreeMap::new()
        }
    }
}

fn task_name(t: &LTask) -> String {
    t.ids.first().map_or_else(|| t.label.clone(), |i| format!("`{}`", i.name))
}

/// Tasks of a step id; ids inside `repeat` match every iteration (`id[1]`, `id[2]`, …).
fn lookup(ids: &BTreeMap<String, Vec<usize>>, name: &Named, d: &mut Diagnostics) -> Option<Vec<usize>> {
    if let Some(v) = ids.get(&name.name) {
        return Some(v.clone());
    }
    let prefix = format!("{}[", name.name);
    let expanded: Vec<usize> =
        ids.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).flat_map(|(_, v)| v.clone()).collect();
    if !expanded.is_empty() {
        return Some(expanded);
    }
    let hint = crate::diag::did_you_mean(&name.name, ids.keys().map(String::as_str))
        .unwrap_or_else(|| "give the step an `id:` to refer to it".to_string());
    d.push(Diagnostic::error("P0207", name.span, format!("no step has id `{}`", name.name)).with_hint(hint));
    None
}

/// Kahn's algorithm, lowest index first so program order is kept where it is free.
fn topo(after: &[BTreeSet<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = after.len();
    let mut indeg: Vec<usize> = after.iter().map(BTreeSet::len).collect();
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, a) in after.iter().enumerate() {
        for &p in a {
            succ[p].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &s in &succ[i] {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                ready.insert(s);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk back along unfinished predecessors until a task repeats: that is a cycle.
    let stuck: BTreeSet<usize> = (0..n).filter(|&i| indeg[i] > 0).collect();
    let mut path = Vec::new();
    let mut cur = stuck.first().copied().unwrap_or(0);
    while !path.contains(&cur) {
        path.push(cur);
        cur = after[cur].iter().copied().find(|p| stuck.contains(p)).unwrap_or(cur);
    }
    let start = path.iter().position(|&x| x == cur).unwrap_or(0);
    let mut cycle = path[start..].to_vec();
    cycle.reverse();
    Err(cycle)
}

/// Reports a max lag that the estimated durations already break.
/// Puts a wait of `min_s` seconds before task `to` (shifting it and every later task by one),
/// after task `from`; `to` then waits for it.
fn insert_wait(tasks: &mut Vec<Task>, from: usize, to: usize, min_s: f64, from_name: &str, span: Span) {
    for task in tasks.iter_mut() {
        if task.id as usize >= to {
            task.id += 1;
        }
        task.after.iter_mut().filter(|a| **a as usize >= to).for_each(|a| *a += 1);
    }
    let wait = Task {
        id: to as TaskId,
        class: None,
        label: format!("at least {} after `{from_name}`", quote::fmt_duration(min_s)),
        holds: Vec::new(),
        after: vec![from as TaskId],
        commands: vec![crate::plan::Command {
            op: crate::plan::CommandOp::Wait { duration_s: min_s },
            repeatable: true,
            estimate_s: min_s,
        }],
        duration_s: min_s,
        settings: Default::default(),
        pipettes: Vec::new(),
        instruments: Vec::new(),
        span,
    };
    tasks.insert(to, wait);
    tasks[to + 1].after.push(to as TaskId);
}

fn check_lag(tasks: &[Task], lag: &MaxLag, site: &Site, span: Span, from: &str, to: &str, d: &mut Diagnostics) {
    let (f, t) = (lag.from as usize, lag.to as usize);
    if t <= f {
        if quote::reaches(tasks, t, f) || t == f {
            d.push(
                Diagnostic::error(
                    "P0404",
                    span,
                    format!("`{to}` runs before `{from}` ends, so a lag from `{from}` to `{to}` cannot hold"),
                )
                .with_hint(
                    "swap `from` and `to`: the lag runs from the end of the earlier step to the start of the later one",
                ),
            );
        }
        return;
    }
    let Some(gap) = quote::min_gap(tasks, f, t, site.typical_move_s()) else { return };
    if gap > lag.max_s + 1e-6 {
        d.push(
            Diagnostic::error(
                "P0402",
                span,
                format!(
                    "`{to}` cannot start within {} of the end of `{from}`: what must happen in between takes at least {} (estimated)",
                    quote::fmt_duration(lag.max_s),
                    quote::fmt_duration(gap)
                ),
            )
            .with_hint("allow a longer lag, or move the steps in between before `from` or after `to`"),
        );
    }
}
