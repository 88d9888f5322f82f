// Labwright technician console: polls the JSON API once a second and redraws. Everything a
// user typed (tenant, run and instrument names, intervention texts) goes in with textContent.
"use strict";

const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#457b9d", "#e76f51", "#2a9d8f", "#8e6bbf", "#e9c46a", "#d62f7c", "#6a994e", "#f4a261", "#264653", "#bc6c25"];
let token = sessionStorage.getItem("labwright-token") || "";
let me = null;
let timer = null;
// Bumped at every sign-in and sign-out: an answer fetched for an earlier session is dropped,
// never drawn for the next user of the screen.
let session = 0;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

async function call(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({ error: "the server sent no JSON (" + r.status + ")" }));
  if (!r.ok) { const e = new Error(data.error || ("HTTP " + r.status)); e.status = r.status; throw e; }
  return data;
}

// Every page of a list (each a bounded answer), in order: the last page's other fields, with
// `field` holding the items of all pages.
async function allPages(path, field) {
  let items = [], token = "", page;
  do {
    page = await call("GET", path + (token ? "?page_token=" + encodeURIComponent(token) : ""));
    items = items.concat(page[field] || []);
    token = page.next_page_token || "";
  } while (token);
  page[field] = items;
  return page;
}

function colourOf(key) {
  let h = 0;
  for (const ch of key) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

function short(id) { return id.replace(/^run_/, "").slice(0, 8); }

async function login(ev) {
  if (ev) ev.preventDefault();
  const typed = $("token").value.trim();
  if (typed) token = typed;
  try {
    me = await call("GET", "/api/whoami");
  } catch (e) {
    $("login-error").textContent = "Sign-in failed: " + e.message;
    return;
  }
  sessionStorage.setItem("labwright-token", token);
  session += 1;
  clearViews();
  $("login-error").textContent = "";
  $("login-panel").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = me.tenant ? me.role + " of " + me.tenant : me.role;
  const staff = me.role !== "scientist";
  $("instruments-panel").hidden = !staff;
  $("kitting-panel").hidden = !staff;
  $("queue-panel").hidden = !staff;
  $("intake-panel").hidden = !staff;
  $("audit-panel").hidden = !staff;
  for (const c of document.querySelectorAll(".tenant-col")) c.hidden = !staff;
  await refresh();
}

function logout() {
  sessionStorage.removeItem("labwright-token");
  token = ""; me = null;
  session += 1;
  clearTimeout(timer);
  clearViews();
  $("console").hidden = true; $("logout").hidden = true; $("login-panel").hidden = false; $("who").textContent = "";
}

// Nothing of one user's view stays in the page for the next one.
function clearViews() {
  $("instruments").tBodies[0].replaceChildren();
  $("gantt").replaceChildren();
  $("legend").replaceChildren();
  $("runs").tBodies[0].replaceChildren();
  $("interventions").replaceChildren();
  $("picks").replaceChildren();
  drawnPicks = "";
  $("shipments").replaceChildren();
  drawnShipments = "";
  shipmentScans.clear();
  $("queue").replaceChildren();
  queueSeen = null;
  $("audit").tBodies[0].replaceChildren();
  $("containers").tBodies[0].replaceChildren();
  $("lots").tBodies[0].replaceChildren();
  $("consumables").tBodies[0].replaceChildren();
  $("results").replaceChildren();
  $("results-title").textContent = "";
  $("results-panel").hidden = true;
  $("status").textContent = "";
}

async function refresh() {
  clearTimeout(timer);
  if (!me) return;
  const mine = session;
  try {
    const staff = me.role !== "scientist";
    const [schedule, runs, interventions, instruments, picks, audit, containers, stock, shipments] = await Promise.all([
      allPages("/api/schedule", "slots"), allPages("/api/runs", "runs"), allPages("/api/interventions", "interventions"),
      staff ? call("GET", "/api/instruments") : Promise.resolve({ instruments: [] }),
      staff ? call("GET", "/api/picks") : Promise.resolve({ items: [] }),
      staff ? call("GET", "/api/audit") : Promise.resolve({ entries: [] }),
      call("GET", "/api/containers"),
      staff ? call("GET", "/api/stock") : Promise.resolve(null),
      staff ? call("GET", "/api/shipments") : Promise.resolve({ shipments: [] }),
    ]);
    if (mine !== session) return; // signed out (or in as someone else) meanwhile
    drawInstruments(instruments.instruments || []);
    drawHalt(staff ? instruments.halt : null);
    drawGantt(schedule, instruments.instruments || []);
    drawRuns(runs.runs || [], schedule.slots || []);
    drawInterventions(interventions.interventions || []);
    if (staff) drawQueue(interventions.interventions || [], picks.items || [], runs.runs || [], schedule.slots || [], shipments.shipments || []);
    if (staff) drawPicks(picks.items || []);
    if (staff) drawShipments(shipments.shipments || []);
    if (staff) drawAudit(audit.entries || []);
    drawInventory(containers.containers || [], stock);
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (mine !== session) return;
    $("status").textContent = "cannot reach labd: " + e.message;
    if (e.status === 401) { logout(); $("login-error").textContent = e.message; return; }
  }
  timer = setTimeout(refresh, POLL_MS);
}

// The lab's pause / emergency stop: its state, and the buttons that change it (staff only).
function drawHalt(halt) {
  $("halt-bar").hidden = !halt;
  if (!halt) return;
  const clear = halt.state === "clear";
  $("halt-state").textContent = clear ? "Lab running" : "Lab " + halt.state + " by " + halt.by + ": " + halt.reason;
  $("halt-state").className = clear ? "" : "state state-" + (halt.state === "stopped" ? "fault" : "maintenance");
  $("pause-lab").hidden = !clear;
  $("resume-lab").hidden = clear;
}

async function haltLab(emergency) {
  const reason = prompt(emergency ? "Emergency stop: why?" : "Pause the lab: why?", emergency ? "emergency" : "pause");
  if (reason === null) return;
  try {
    const r = await call("POST", "/api/halt", { emergency, reason });
    const slow = (r.stopped || []).filter((d) => d.error);
    if (slow.length) alert("Did not confirm the stop: " + slow.map((d) => d.id + " (" + d.error + ")").join(", "));
  } catch (e) { alert(e.message); }
  refresh();
}

$("pause-lab").onclick = () => haltLab(false);
$("stop-lab").onclick = () => haltLab(true);
$("resume-lab").onclick = async () => {
  try { await call("POST", "/api/resume"); } catch (e) { alert(e.message); }
  refresh();
};

function drawInstruments(list) {
  const body = $("instruments").tBodies[0];
  body.replaceChildren(...list.map((i) => {
    const inMaintenance = i.state === "maintenance";
    const toggle = el("button", {
      "data-instrument": i.id,
      onclick: async () => {
        let reason = "";
        if (!inMaintenance) {
          reason = prompt("Why does " + i.id + " go into maintenance?", "maintenance");
          if (reason === null) return;
        }
        try { await call("POST", "/api/instruments/" + encodeURIComponent(i.id) + "/maintenance", { on: !inMaintenance, reason }); }
        catch (e) { alert(e.message); }
        refresh();
      },
    }, inMaintenance ? "Back in service" : "Maintenance");
    const temp = typeof i.temperature_c === "number" ? i.temperature_c.toFixed(1) + " °C" : "";
    return el("tr", { "data-instrument": i.id },
      el("td", {}, i.id), el("td", {}, i.class),
      el("td", { class: "state state-" + i.state.split(":")[0] }, i.state),
      el("td", {}, i.run_id ? short(i.run_id) : ""), el("td", {}, temp), el("td", {}, i.detail),
      el("td", {}, i.class === "robot_arm" ? "" : toggle));
  }));
}

function drawGantt(schedule, instruments) {
  const svg = $("gantt");
  const slots = schedule.slots || [];
  const lanes = [...new Set([...instruments.map((i) => i.id), ...slots.map((s) => s.lane)])].sort();
  const start = (s) => s.started_ms || s.planned_start_ms;
  const end = (s) => s.finished_ms || (s.started_ms ? Math.max(s.planned_end_ms, schedule.now_ms) : s.planned_end_ms);
  // The whole plan, or (zoomed) from a little before now to the next hours chosen.
  const hours = Number($("gantt-window").value) || 0;
  const t0 = hours ? schedule.now_ms - hours * 360000 : Math.min(schedule.now_ms, ...slots.map(start));
  const t1 = hours ? schedule.now_ms + hours * 3600000 : Math.max(schedule.now_ms + 1000, ...slots.map(end));
  const left = 110, laneH = 22, width = Math.max(600, svg.parentElement.clientWidth - 20), top = 18;
  const bottom = top + lanes.length * laneH;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - 10);
  svg.setAttribute("width", width);
  svg.setAttribute("height", bottom + 20);
  const parts = [];
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    parts.push(e);
    return e;
  };
  lanes.forEach((lane, i) => {
    add("text", { x: 4, y: top + i * laneH + 15, "data-lane": lane }, lane);
    add("line", { x1: left, x2: width, y1: top + (i + 1) * laneH, y2: top + (i + 1) * laneH, stroke: "#eee" });
  });
  // Instruments out of service (maintenance, down): hatched from now until someone brings them
  // back, with why; work still planned on them waits for that and is marked blocked.
  const out = new Map(instruments.filter((i) => i.state === "maintenance" || i.state === "down")
    .map((i) => [i.id, i.state + (i.detail ? ": " + i.detail : "")]));
  const hatch = document.createElementNS(SVG, "defs");
  hatch.innerHTML = '<pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="3" height="6" fill="#d9822b" opacity="0.45"></rect></pattern>';
  parts.push(hatch);
  for (const [id, why] of out) {
    const lane = lanes.indexOf(id);
    if (lane < 0) continue;
    const from = x(Math.max(schedule.now_ms, t0));
    const band = add("rect", { class: "unavailable", x: from, y: top + lane * laneH + 1, width: Math.max(2, width - 10 - from), height: laneH - 2, fill: "url(#hatch)", "data-unavailable": id });
    const title = document.createElementNS(SVG, "title");
    title.textContent = id + " out of service: " + why;
    band.append(title);
    add("text", { class: "unavailable", x: from + 4, y: top + lane * laneH + 15, "data-unavailable-label": id }, why);
  }
  // A time axis in the browser's local clock: a tick every second to a day, about eight across
  // (a lab run faster than real time, as in a demo, spans seconds).
  const step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]
    .map((sec) => sec * 1000).find((ms) => (t1 - t0) / ms <= 8) || 86400000;
  const longSpan = t1 - t0 > 86400000;
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
    const d = new Date(t);
    const clock = d.toLocaleTimeString([], step < 60000
      ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" });
    const label = longSpan ? d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + clock : clock;
    add("line", { class: "tick", x1: x(t), x2: x(t), y1: top, y2: bottom, stroke: "#ddd", "stroke-dasharray": "2,3" });
    add("text", { class: "tick", x: x(t) - 14, y: bottom + 14, "data-at": t }, label);
  }
  const legend = new Map();
  for (const s of slots) {
    if (end(s) < t0 || start(s) > t1) continue; // outside the window shown
    const lane = lanes.indexOf(s.lane);
    const key = s.tenant || s.run_id;
    const colour = colourOf(key);
    legend.set(s.tenant ? s.tenant : "run " + short(s.run_id), colour);
    const [a, b] = [Math.max(start(s), t0), Math.min(end(s), t1)];
    const w = Math.max(2, x(b) - x(a));
    const blocked = s.state === "planned" && out.has(s.lane);
    const r = add("rect", {
      x: x(a), y: top + lane * laneH + 3, width: w, height: laneH - 6, fill: colour, rx: 2,
      class: "task " + s.state + (blocked ? " blocked" : ""), "data-run": s.run_id, "data-tenant": s.tenant, "data-kind": s.kind,
    });
    const title = document.createElementNS(SVG, "title");
    title.textContent = (s.tenant ? s.tenant + " · " : "") + "run " + short(s.run_id) + " · " + s.label + " · " + s.state +
      (blocked ? " · waits for " + s.lane + " (" + out.get(s.lane) + ")" : "");
    r.append(title);
  }
  add("line", { class: "now", x1: x(schedule.now_ms), x2: x(schedule.now_ms), y1: 0, y2: top + lanes.length * laneH });
  add("text", { x: x(schedule.now_ms) + 3, y: 12 }, "now");
  svg.replaceChildren(...parts);
  $("legend").replaceChildren(...[...legend].map(([name, colour]) => el("span", {}, (() => {
    const i = el("i"); i.style.background = colour; return i;
  })(), name)));
}

function drawRuns(runs, slots) {
  const staff = me.role !== "scientist";
  const progress = new Map();
  for (const s of slots) {
    const p = progress.get(s.run_id) || { done: 0, all: 0 };
    p.all += 1; if (s.state === "done") p.done += 1;
    progress.set(s.run_id, p);
  }
  // The queue per tenant: grouped by tenant, oldest first within each.
  runs = [...runs].sort((a, b) => a.tenant.localeCompare(b.tenant) || a.submitted_at_ms - b.submitted_at_ms);
  const body = $("runs").tBodies[0];
  body.replaceChildren(...runs.map((r) => {
    const p = progress.get(r.id);
    const finished = ["succeeded", "failed", "cancelled"].includes(r.state);
    const bar = el("progress", { max: p ? p.all : 1, value: finished ? (p ? p.all : 1) : (p ? p.done : 0) });
    const cancel = finished || r.state === "cancelling" ? "" : el("button", {
      "data-cancel": r.id,
      onclick: async () => {
        if (!confirm("Cancel run " + short(r.id) + "?")) return;
        try { await call("POST", "/api/runs/" + encodeURIComponent(r.id) + "/cancel"); } catch (e) { alert(e.message); }
        refresh();
      },
    }, "Cancel");
    const row = el("tr", { "data-run": r.id },
      el("td", { title: r.id }, short(r.id)), el("td", { class: "tenant-col" }, r.tenant), el("td", {}, r.name),
      // Why a run failed or was cancelled, in the row where a technician looks, not on hover.
      el("td", { class: "state state-" + r.state, title: r.reason }, r.state,
        r.reason && ["failed", "cancelled"].includes(r.state) ? el("div", { class: "reason" }, r.reason) : ""),
      el("td", { class: "when" }, clock(r.submitted_at_ms)), el("td", { class: "when" }, clock(r.finished_at_ms)),
      el("td", {}, bar), el("td", {}, cancel, r.state === "succeeded" || r.state === "failed" ? el("button", {
        "data-results": r.id, onclick: () => showResults(r.id),
      }, "Results") : ""));
    row.children[1].hidden = !staff;
    return row;
  }));
}

// A clock time in the browser's own time zone; "" for a time that has not come yet.
function clock(ms) {
  return ms > 0 ? new Date(ms).toLocaleString() : "";
}

function drawInterventions(list) {
  const staff = me.role !== "scientist";
  $("no-interventions").hidden = list.some((i) => i.state === "open");
  $("interventions").replaceChildren(...list.map((i) => {
    const open = i.state === "open";
    const buttons = open && staff ? ["done", "redo", "abort"].map((how) => el("button", {
      "data-resolve": how,
      onclick: async () => {
        try { await call("POST", "/api/interventions/" + encodeURIComponent(i.id) + "/resolve", { resolution: how }); }
        catch (e) { alert(e.message); }
        refresh();
      },
    }, { done: "Done", redo: "Redo the step", abort: "Abort the run" }[how])) : [];
    // How long it has waited (or when and by whom it was resolved), and whose run it holds up.
    const when = open ? "waiting " + age(Date.now() - i.created_at_ms)
      : i.state + (i.resolved_by ? " by " + i.resolved_by : "") + (i.resolved_at_ms ? " at " + new Date(i.resolved_at_ms).toLocaleTimeString() : "");
    const whose = staff && i.tenant ? i.tenant + " · " : "";
    return el("li", { class: open ? "open" : "resolved", "data-intervention": i.id },
      el("strong", {}, whose + (i.instrument ? i.instrument + " · " : "") + "run " + short(i.run_id) + ": "), i.what,
      " ", el("span", { class: "age" }, "(" + when + ")"), el("br"),
      "To do: ", i.todo, el("br"), open && (i.plates || []).length ? "Plates: " + i.plates.join(", ") : "",
      open && (i.plates || []).length ? el("br") : "", ...buttons);
  }));
}

// The technicians' work queue: everything waiting on a person in one list, soonest due first.
// An intervention is due since it opened (a manual step holds up its run; an instrument that
// needs attention holds up the work planned on it); a run's pick list is due when its first
// task is planned (its material must be on the deck by then). Each says how long it has waited
// or when it is due, whose run, where the material is and what waits on it.
let queueSeen = null; // what the last draw showed (null before the first)
function drawQueue(interventions, picks, runs, slots, shipments) {
  const now = Date.now();
  const tenantOf = new Map(runs.map((r) => [r.id, r.tenant]));
  const first = new Map(); // run → its first task not done: when and where
  for (const s of slots) {
    if (s.state === "done") continue;
    const at = s.started_ms || s.planned_start_ms;
    if (!first.has(s.run_id) || at < first.get(s.run_id).at) first.set(s.run_id, { at, lane: s.lane });
  }
  const work = [];
  for (const i of interventions.filter((i) => i.state === "open")) {
    const check = i.instrument && i.what.endsWith("needs attention");
    work.push({
      key: "i:" + i.id, kind: check ? "instrument check" : "manual step", due: i.created_at_ms, run: i.run_id,
      tenant: i.tenant, what: i.todo || i.what, where: [i.instrument, ...(i.plates || [])].filter((x) => x).join(", "),
      waits: check ? "work planned on " + i.instrument : "run " + short(i.run_id),
    });
  }
  const lists = new Map();
  for (const p of picks) lists.set(p.run_id, [...(lists.get(p.run_id) || []), p]);
  for (const [run, items] of lists) {
    const f = first.get(run);
    work.push({
      key: "k:" + run, kind: "kitting", due: f ? f.at : now, run, tenant: tenantOf.get(run) || "",
      what: items.length + (items.length === 1 ? " item" : " items") + " to fetch" +
        (items.some((i) => i.thaw_min > 0) ? " (thaw " + Math.max(...items.map((i) => i.thaw_min)) + " min first)" : ""),
      where: [...new Set(items.map((i) => i.from))].join(", "),
      waits: "run " + short(run) + (f ? ", first task on " + f.lane + " at " + new Date(f.at).toLocaleTimeString() : ""),
    });
  }
  for (const sh of shipments) {
    const n = sh.containers.length;
    work.push({
      key: "s:" + sh.id, kind: "intake", due: sh.declared_at_ms, run: "", shipment: sh.id, tenant: sh.tenant,
      what: "receive shipment " + sh.id + ": " + n + (n === 1 ? " container" : " containers") + " (" + sh.containers.map((k) => k.barcode).join(", ") + ")",
      where: "on its way to receiving", waits: "the tenant's runs that will use it",
    });
  }
  work.sort((a, b) => a.due - b.due);
  $("no-queue").hidden = work.length > 0;
  $("queue").replaceChildren(...work.map((w) => el("li", { class: w.due <= now ? "due" : "later", "data-queue": w.kind, "data-run": w.run || w.shipment },
    el("strong", {}, w.kind), " · ", w.tenant ? w.tenant + " · " : "", w.run ? "run " + short(w.run) + ": " : "", w.what, " ",
    el("span", { class: "age" }, "(" + (w.due <= now ? "due " + age(now - w.due) + " ago" : "due in " + age(w.due - now)) + ")"),
    el("br"), w.where ? "where: " + w.where + " · " : "", "waiting on it: " + w.waits)));
  // New since the last draw; on the first, all of it (opening the page with alerts on tells
  // the technician what is already due).
  const fresh = work.filter((w) => !queueSeen || !queueSeen.has(w.key));
  queueSeen = new Set(work.map((w) => w.key));
  if (fresh.length && $("queue-alerts").checked) alertNew(fresh);
}

// Opt-in: a short tone and a browser notification for work that has just come due.
let audio = null;
$("queue-alerts").addEventListener("change", async (ev) => {
  localStorage.setItem("labwright-alerts", ev.target.checked ? "on" : "off");
  if (!ev.target.checked) return;
  audio = audio || new AudioContext(); // made on the click: browsers play sound only after a gesture
  if ("Notification" in window && Notification.permission === "default") await Notification.requestPermission();
});
$("queue-alerts").checked = localStorage.getItem("labwright-alerts") === "on";
function alertNew(fresh) {
  if (audio) {
    const tone = audio.createOscillator();
    tone.frequency.value = 880;
    tone.connect(audio.destination);
    tone.start();
    tone.stop(audio.currentTime + 0.2);
  }
  if ("Notification" in window && Notification.permission === "granted") {
    const w = fresh[0];
    const more = fresh.length > 1 ? " (and " + (fresh.length - 1) + " more)" : "";
    new Notification("Labwright: " + w.kind + " due", { body: (w.tenant ? w.tenant + " · " : "") + (w.run ? "run " + short(w.run) + ": " : "") + w.what + more, tag: w.key });
  }
}

// A duration in words: "40 s", "12 min", "3 h 5 min".
function age(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + " s";
  const m = Math.floor(s / 60);
  return m < 60 ? m + " min" : Math.floor(m / 60) + " h " + (m % 60) + " min";
}

// The audit trail, newest first: who did what by hand, to what, when and why (staff only).
function drawAudit(entries) {
  $("no-audit").hidden = entries.length > 0;
  $("audit").tBodies[0].replaceChildren(...entries.map((e) => el("tr", { "data-action": e.action },
    el("td", {}, new Date(e.at_ms).toLocaleString()), el("td", {}, e.actor), el("td", {}, e.action.replaceAll("_", " ")),
    el("td", {}, e.subject), el("td", {}, [e.reason, e.detail].filter((x) => x).join(" — ")))));
}

// The containers the lab holds (a scientist's own; every tenant's for staff, with whose) and,
// for staff, the lab's stock: lots (expired ones marked) and counted consumables (to reorder
// marked).
function drawInventory(containers, stock) {
  const staff = me.role !== "scientist";
  $("no-containers").hidden = containers.length > 0;
  $("containers").tBodies[0].replaceChildren(...containers.map((k) => {
    const wells = new Set((k.wells || []).map((w) => w.well)).size;
    const row = el("tr", { "data-container": k.barcode },
      el("td", { title: k.id }, k.barcode), el("td", { class: "tenant-col" }, k.tenant), el("td", {}, k.type),
      el("td", { class: k.location === "discarded" ? "discarded" : "" }, k.location + (k.slot > 0 ? " #" + k.slot : "")), el("td", {}, String(wells)),
      el("td", { class: "when" }, clock(k.created_at_ms)));
    row.children[1].hidden = !staff;
    return row;
  }));
  $("stock-box").hidden = !stock;
  if (!stock) return;
  $("lots").tBodies[0].replaceChildren(...(stock.lots || []).map((l) => el("tr", { "data-lot": l.lot, class: l.expired ? "expired" : "" },
    el("td", {}, l.reagent), el("td", {}, l.lot), el("td", {}, l.expires_on),
    el("td", {}, (l.volume_ul >= 1000 ? (l.volume_ul / 1000).toFixed(1) + " mL" : l.volume_ul.toFixed(0) + " µL")),
    el("td", {}, l.expired ? "EXPIRED" : ""))));
  $("consumables").tBodies[0].replaceChildren(...(stock.consumables || []).map((c) => el("tr", { "data-consumable": c.type, class: c.reorder ? "reorder" : "" },
    el("td", {}, c.type), el("td", {}, String(c.on_hand)), el("td", {}, String(c.reorder_at)), el("td", {}, c.reorder ? "REORDER" : ""))));
}

// The technicians' pick lists, a run at a time: each item to fetch, and one scan field per
// run that a USB or camera barcode scanner types into (Enter confirms the open item expecting
// that barcode, else the first open one, whose refusal says what to scan). Redrawn only when
// the list changes, so a scan being typed is never wiped by the once-a-second refresh.
let drawnPicks = "";
function drawPicks(items) {
  const seen = JSON.stringify(items);
  if (seen === drawnPicks) return;
  drawnPicks = seen;
  $("no-picks").hidden = items.length > 0;
  const runs = [...new Set(items.map((i) => i.run_id))];
  $("picks").replaceChildren(...runs.map((run) => {
    const open = items.filter((i) => i.run_id === run);
    const error = el("p", { class: "error", "data-scan-error": run });
    const input = el("input", { type: "text", autocomplete: "off", placeholder: "scan a barcode", "aria-label": "barcode for run " + short(run), "data-scan": run });
    const form = el("form", {
      onsubmit: async (ev) => {
        ev.preventDefault();
        const code = input.value.trim();
        if (!code) return;
        const item = open.find((i) => i.expected === code) || open[0];
        try {
          await call("POST", "/api/picks/" + encodeURIComponent(run) + "/" + item.n + "/confirm", { barcode: code });
          error.textContent = "";
          input.value = "";
          refresh();
        } catch (e) { error.textContent = e.message; input.select(); }
      },
    }, input, el("button", { type: "submit" }, "Confirm"));
    return el("div", { class: "pick-run", "data-picks": run },
      el("h3", {}, "Run " + short(run)),
      el("ol", {}, ...open.map((i) => el("li", { "data-pick": i.n },
        el("strong", {}, i.kind + ": "), i.what, el("br"),
        "from ", i.from, " to ", i.to, i.thaw_min > 0 ? " — thaw " + i.thaw_min + " min first" : "",
        el("br"), "scan ", el("code", {}, i.expected)))),
      form, error);
  }));
}

// Shipments tenants declared, for the technician at the receiving bench: each container to
// scan (a scanner types into the field; Enter ticks it off, a barcode the shipment does not
// list is refused with what to do), where to put them, and Receive once all are scanned.
// Scans are kept across refreshes; the list is redrawn only when the shipments change.
let drawnShipments = "";
const shipmentScans = new Map(); // shipment id → barcodes scanned
function drawShipments(list) {
  const seen = JSON.stringify(list);
  if (seen === drawnShipments) return;
  drawnShipments = seen;
  $("no-shipments").hidden = list.length > 0;
  $("shipments").replaceChildren(...list.map((sh) => {
    const scans = shipmentScans.get(sh.id) || new Set();
    shipmentScans.set(sh.id, scans);
    const barcodes = sh.containers.map((k) => k.barcode);
    const error = el("p", { class: "error", "data-intake-error": sh.id });
    const items = sh.containers.map((k) => el("li", { "data-shipped": k.barcode, class: scans.has(k.barcode) ? "scanned" : "" },
      el("code", {}, k.barcode), " " + k.type + ", " + k.wells + (k.wells === 1 ? " well" : " wells")));
    const count = el("span", { class: "count" });
    const receive = el("button", { type: "button", "data-receive": sh.id }, "Receive");
    const where = el("input", { type: "text", autocomplete: "off", placeholder: "receiving", size: "12", "aria-label": "where the containers go (a storage unit or 4C, -20C …)", "data-intake-where": sh.id });
    const update = () => {
      items.forEach((li) => li.classList.toggle("scanned", scans.has(li.dataset.shipped)));
      count.textContent = scans.size + " of " + barcodes.length + " scanned";
      receive.disabled = scans.size < barcodes.length;
    };
    const input = el("input", { type: "text", autocomplete: "off", placeholder: "scan a barcode", "aria-label": "barcode for shipment " + sh.id, "data-intake-scan": sh.id });
    const form = el("form", {
      onsubmit: (ev) => {
        ev.preventDefault();
        const code = input.value.trim();
        if (!code) return;
        if (!barcodes.includes(code)) {
          error.textContent = code + " is not in shipment " + sh.id + "; set it aside and check the shipment";
          input.select();
          return;
        }
        scans.add(code);
        error.textContent = "";
        input.value = "";
        update();
      },
    }, input, el("button", { type: "submit" }, "Scan"));
    receive.addEventListener("click", async () => {
      try {
        await call("POST", "/api/shipments/" + encodeURIComponent(sh.id) + "/receive", { scanned: [...scans], location: where.value.trim() || null });
        shipmentScans.delete(sh.id);
        error.textContent = "";
        refresh();
      } catch (e) { error.textContent = e.message; }
    });
    update();
    return el("div", { class: "shipment", "data-shipment": sh.id },
      el("h3", {}, "Shipment " + sh.id + (sh.tenant ? " from " + sh.tenant : "") + " ", el("span", { class: "age" }, "(declared " + clock(sh.declared_at_ms) + " by " + sh.declared_by + ")")),
      el("ol", {}, ...items), form, el("p", {}, count, " · put them at ", where, " ", receive), error);
  }));
}

$("login-form").addEventListener("submit", login);
$("logout").addEventListener("click", logout);
$("gantt-window").addEventListener("change", () => refresh());
if (token) login();

// A run's results page: each read as a plate heatmap (hover a well for its sample, group and
// value), its replicates' statistics, and the fitted curves with their parameters. The SVG
// comes from labd with every text escaped; tables are built with textContent.
async function showResults(runId) {
  const mine = session;
  let data;
  try { data = await call("GET", "/api/runs/" + encodeURIComponent(runId) + "/analysis"); } catch (e) { alert(e.message); return; }
  if (mine !== session) return;
  $("results-title").textContent = data.run.name + " (" + short(data.run.id) + ")";
  const box = $("results");
  box.replaceChildren();
  if (!data.reads.length) box.append(el("p", {}, "This run measured nothing."));
  const num = (v) => v == null ? "" : (Math.abs(v) >= 0.01 && Math.abs(v) < 10000 || v === 0 ? (+v.toFixed(4)).toString() : v.toExponential(3));
  for (const read of data.reads) {
    const a = read.analysis;
    const part = el("div", { class: "read", "data-read": read.index });
    part.append(el("h3", {}, "Read " + read.index + ": " + a.kind + (a.wavelength_nm ? " " + a.wavelength_nm + " nm" : "") + " of " + a.labware));
    const pictures = el("div", { class: "pictures" });
    for (const p of read.pictures) {
      const holder = el("div", { class: "picture", "data-picture": p.name });
      holder.innerHTML = p.svg; // labd's own SVG, texts escaped there
      pictures.append(holder);
    }
    part.append(pictures);
    if (a.blank != null) part.append(el("p", {}, "Blank (mean of the blank wells, subtracted before fitting): " + num(a.blank) + " " + a.unit));
    const fits = el("table", { class: "fits" }, el("tr", {}, ...["Curve", "Parameter", "Value", "SE", "95% CI"].map((h) => el("th", {}, h))));
    const param = (curve, name, e) => fits.append(el("tr", {}, el("td", {}, curve), el("td", {}, name), el("td", { class: "value" }, num(e.value)), el("td", {}, num(e.se)), el("td", {}, num(e.ci95[0]) + " to " + num(e.ci95[1]))));
    const sc = a.standard_curve;
    if (sc && sc.fit.Ok) {
      param("standard curve", "intercept", sc.fit.Ok.intercept);
      param("standard curve", "slope", sc.fit.Ok.slope);
      fits.append(el("tr", {}, el("td", {}, "standard curve"), el("td", {}, "R²"), el("td", { class: "value" }, num(sc.fit.Ok.r_squared)), el("td", {}), el("td", {})));
    }
    for (const d of a.dose_response) {
      const name = d.sample + (d.group ? " (" + d.group + ")" : "");
      if (!d.fit.Ok) { fits.append(el("tr", {}, el("td", {}, name), el("td", { colspan: 4 }, "no fit: " + d.fit.Err))); continue; }
      const f = d.fit.Ok;
      param(name, f.midpoint + " (" + d.unit + ")", f.ec50);
      param(name, "Hill slope", f.hill);
      param(name, "bottom", f.bottom);
      param(name, "top", f.top);
      fits.append(el("tr", {}, el("td", {}, name), el("td", {}, "R²"), el("td", { class: "value" }, num(f.r_squared)), el("td", {}), el("td", {})));
    }
    if (fits.rows.length > 1) part.append(fits);
    if (sc && sc.unknowns.length) {
      part.append(el("table", { class: "unknowns" },
        el("tr", {}, ...["Unknown", "Wells", "Reading", "Concentration (" + sc.unit + ")", ""].map((h) => el("th", {}, h))),
        ...sc.unknowns.map((u) => el("tr", {}, el("td", {}, u.sample), el("td", {}, u.wells.join(" ")), el("td", {}, num(u.mean)),
          el("td", { class: "value" }, num(u.concentration)), el("td", {}, u.extrapolated ? "extrapolated" : "")))));
    }
    part.append(el("table", { class: "replicates" },
      el("tr", {}, ...["Role", "Sample", "Group", "Concentration", "n", "Mean", "SD", "CV %", "Outliers"].map((h) => el("th", {}, h))),
      ...a.replicates.map((r) => el("tr", { class: r.outliers.length ? "outlier" : "" }, el("td", {}, r.role), el("td", {}, r.sample), el("td", {}, r.group),
        el("td", {}, num(r.concentration)), el("td", {}, r.n), el("td", {}, num(r.mean)), el("td", {}, num(r.sd)),
        el("td", {}, r.cv_percent == null ? "" : r.cv_percent.toFixed(1)), el("td", {}, r.outliers.join(" "))))));
    box.append(part);
  }
  $("results-panel").hidden = false;
  $("results-panel").scrollIntoView();
}

$("results-close").addEventListener("click", () => { $("results-panel").hidden = true; $("results").replaceChildren(); });
