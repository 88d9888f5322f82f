//! A simulated Opentrons robot behind the robot's HTTP API (the subset Labwright's driver and
//! Opentrons' own HTTP clients use): `/health`, `/pipettes`, `/instruments`, `/modules`, `/runs`
//! with actions, labware definitions and offsets, and live commands with `waitUntilComplete`.
//!
//! It keeps two states as the robot does. The run's engine state (loaded pipettes and labware,
//! commands, status) lives and dies with a run. The physical state (which tips are on which
//! channel and what they hold, which tips are gone from their racks, what every well holds on
//! the site's bench) outlives runs. It refuses what the physical robot cannot do with the error
//! types of Opentrons' protocol engine: a tip on a tip, liquid drawn without a tip, more than a
//! tip holds, more than a well holds (`liquidNotFound`, as a Flex's liquid sensing would),
//! dispensing more than the tip holds, a tip dropped anywhere but the trash. A failed protocol
//! command leaves a playing run in `awaiting-recovery` where Opentrons' default error-recovery
//! policy would, and `failed` otherwise.

use super::bench::{self, Mixture, SharedBench};
use super::opentrons_modules::{self as modules, InRun, Physical, SimModule};
use super::Faults;
use crate::codec::opentrons::{Robot, RunStatus, API_VERSION};
use crate::codec::opentrons_module::ModuleKind;
use crate::instrument::TimeScale;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use labware::site::{Mount, Pipette};
use labware::{LabwareDef, Library};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The oldest `Opentrons-Version` the simulated server accepts.
const MIN_API_VERSION: u32 = 2;
/// The protocol engine's defined errors: its default error-recovery policy holds a playing run
/// in `awaiting-recovery` after one of these, and fails the run after any other error.
pub const RECOVERABLE: [&str; 5] =
    ["liquidNotFound", "overpressure", "tipPhysicallyMissing", "tipPhysicallyAttached", "stallOrCollision"];
/// Every other `errorType` this simulator reports: the protocol engine's exception names.
pub const ENGINE_ERRORS: [&str; 30] = [
    "NotSupportedOnRobotType",
    "HeaterShakerLabwareLatchNotOpenError",
    "LabwareMovementNotAllowedError",
    "ModuleNotAttachedError",
    "ModuleNotLoadedError",
    "WrongModuleTypeError",
    "InvalidTargetTemperatureError",
    "InvalidTargetSpeedError",
    "CannotPerformModuleAction",
    "NoTargetTemperatureSetError",
    "ModuleNotOnDeckError",
    "RunStoppedError",
    "PipetteNotAttachedError",
    "InvalidSpecificationForRobotTypeError",
    "LabwareNotOnDeckError",
    "AddressableAreaDoesNotExistError",
    "LabwareDefinitionDoesNotExistError",
    "LocationIsOccupiedError",
    "LabwareIsNotTipRackError",
    "TipAttachedError",
    "TipNotAttachedError",
    "PipetteNotReadyToAspirateError",
    "LabwareNotLoadedError",
    "LocationNotAccessibleByPipetteError",
    "PipetteNotLoadedError",
    "WellDoesNotExistError",
    "InvalidAspirateVolumeError",
    "InvalidDispenseVolumeError",
    "CommandDoesNotExistError",
    "UnexpectedProtocolError",
];
/// Device seconds of motion per command that moves the head, besides the plunger.
const MOVE_S: f64 = 1.5;

/// What the simulator is.
#[derive(Debug, Clone)]
pub struct OpentronsConfig {
    pub robot: Robot,
    /// The robot's name (`/health`'s `name`).
    pub name: String,
    /// Pipettes physically attached, by mount.
    pub pipettes: Vec<(Mount, Pipette)>,
    pub scale: TimeScale,
    pub faults: Faults,
    /// Modules plugged in.
    pub modules: Vec<SimModule>,
}

impl OpentronsConfig {
    /// A simulator for one site instrument (pipettes where its lab.toml mounts them).
    pub fn from_site(inst: &labware::site::Instrument, robot: Robot, scale: TimeScale, faults: Faults) -> Self {
        let pipettes = inst.pipettes.iter().filter_map(|p| p.mount.map(|m| (m, p.clone()))).collect();
        OpentronsConfig { robot, name: format!("{}-sim", inst.id), pipettes, scale, faults, modules: Vec::new() }
    }

    /// With the modules `site` plugs into this robot.
    pub fn with_modules_of(mut self, site: &labware::Site, robot_id: &str) -> Self {
        self.modules = SimModule::of_site(site, robot_id);
        self
    }
}

/// A tip on one channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tip {
    pub capacity_ul: f64,
}

/// What is physically on one mount's channels.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    pub tips: Vec<Option<Tip>>,
    pub contents: Vec<Mixture>,
}

impl Channels {
    fn held(&self) -> f64 {
        self.contents.first().map_or(0.0, |m| m.values().sum())
    }
}

#[derive(Debug, Clone)]
struct LoadedLabware {
    /// What the bench calls it: the display name the client gave (Labwright: the plan's name).
    name: String,
    def: LabwareDef,
    /// Where it is: `{"slotName": …}` or `{"moduleId": …}`.
    location: Value,
    uri: String,
    offset_id: Option<String>,
}

/// Where a pipette last went, for the in-place commands.
#[derive(Debug, Clone, PartialEq)]
enum At {
    Well { labware: String, well: String },
    Trash,
}

#[derive(Debug)]
struct Run {
    id: String,
    created_at: String,
    status: RunStatus,
    current: bool,
    actions: Vec<Value>,
    commands: Vec<Value>,
    pipettes: BTreeMap<String, Mount>,
    labware: BTreeMap<String, LoadedLabware>,
    definitions: BTreeMap<String, LabwareDef>,
    offsets: Vec<Value>,
    errors: Vec<Value>,
    at: BTreeMap<String, At>,
    entered_recovery: bool,
    modules: InRun,
}

impl Run {
    fn resource(&self) -> Value {
        let pipettes: Vec<Value> = self.pipettes.iter().map(|(id, m)| json!({"id": id, "mount": m.as_str()})).collect();
        let labware: Vec<Value> = self
            .labware
            .iter()
            .map(|(id, l)| {
                json!({"id": id, "loadName": l.def.load_name, "definitionUri": l.uri,
                                  "location": l.location, "displayName": l.name, "offsetId": l.offset_id})
            })
            .collect();
        let modules: Vec<Value> =
            self.modules.loaded.iter().map(|(id, serial)| json!({"id": id, "serialNumber": serial})).collect();
        json!({
            "id": self.id, "createdAt": self.created_at, "status": self.status.as_str(), "current": self.current,
            "actions": self.actions, "errors": self.errors, "pipettes": pipettes, "labware": labware,
            "modules": modules, "labwareOffsets": self.offsets, "liquids": [], "protocolId": null,
            "hasEverEnteredErrorRecovery": self.entered_recovery, "ok": true,
        })
    }

    /// Whether a new run may replace this one as current (robot-server: idle with nothing in
    /// flight, or over).
    fn may_clear(&self) -> bool {
        self.status.is_terminal()
            || (self.status == RunStatus::Idle && !self.commands.iter().any(|c| c["status"] == "running"))
    }
}

/// Everything the simulator knows; shared so tests can look.
#[derive(Debug, Default)]
pub struct OpentronsState {
    pub mounts: BTreeMap<Mount, Channels>,
    /// Tips gone from their racks: (rack's bench name, well).
    pub tips_used: BTreeSet<(String, String)>,
    /// Every command body posted, in order (what the interop tests check against Opentrons'
    /// own command models).
    pub posted: Vec<Value>,
    /// Device seconds of work carried out.
    pub busy_s: f64,
    /// What each plugged-in module physically does, by serial number.
    pub modules: BTreeMap<String, Physical>,
    runs: Vec<Run>,
    requests: u32,
    next_id: u64,
}

impl OpentronsState {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{:08x}", self.next_id)
    }

    fn current(&self) -> Option<&Run> {
        self.runs.iter().find(|r| r.current)
    }
}

/// The simulated robot.
#[derive(Debug, Clone)]
pub struct OpentronsSim {
    pub state: Arc<Mutex<OpentronsState>>,
    config: Arc<OpentronsConfig>,
    faults: Arc<Mutex<Faults>>,
    library: Arc<Library>,
    bench: SharedBench,
    started: std::time::Instant,
    /// Woken when a command ends or a run is stopped (for `waitUntilComplete`).
    changed: Arc<tokio::sync::Notify>,
}

/// An error reply in robot-server's shape.
fn error(status: StatusCode, id: &str, detail: &str) -> Response {
    let code = if status == StatusCode::CONFLICT { "4001" } else { "4000" };
    let body = json!({"errors": [{"id": id, "title": id, "detail": detail, "errorCode": code}]});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

/// A command that failed, in the protocol engine's words.
pub(crate) struct Refusal {
    error_type: String,
    code: &'static str,
    detail: String,
}

pub(crate) fn refuse(error_type: &str, detail: String) -> Refusal {
    // Opentrons' error codes for the defined errors; the rest are general errors.
    let code = match error_type {
        "liquidNotFound" => "2017",
        "overpressure" => "3006",
        "tipPhysicallyMissing" => "3003",
        "tipPhysicallyAttached" => "3012",
        "stallOrCollision" => "2003",
        _ => "4000",
    };
    Refusal { error_type: error_type.to_string(), code, detail }
}

impl OpentronsSim {
    pub fn new(config: OpentronsConfig, library: Library, bench: SharedBench) -> Self {
        let mut state = OpentronsState::default();
        for (m, p) in &config.pipettes {
            let n = p.channels.max(1) as usize;
            state.mounts.insert(*m, Channels { tips: vec![None; n], contents: vec![Mixture::new(); n] });
        }
        let faults = Arc::new(Mutex::new(config.faults.clone()));
        OpentronsSim {
            state: Arc::new(Mutex::new(state)),
            config: Arc::new(config),
            faults,
            library: Arc::new(library),
            bench,
            started: std::time::Instant::now(),
            changed: Arc::default(),
        }
    }

    /// What every well of the site holds (shared with the site's other simulators).
    pub fn bench(&self) -> SharedBench {
        self.bench.clone()
    }

    /// Serves the API on `address` (e.g. `127.0.0.1:0`); returns the bound address and the
    /// server task (aborting it closes the listener).
    pub async fn serve(self, address: &str) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let addr = listener.local_addr()?;
        let sim = self;
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let sim = sim.clone();
            async move { sim.handle(method, uri, headers, body).await }
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "simulated Opentrons server stopped");
            }
        });
        Ok((addr, task))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpentronsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> String {
        // Device-time stamps are enough for ordering; a real robot sends wall-clock RFC 3339.
        let s = self.started.elapsed().as_secs_f64();
        format!("2026-01-01T00:00:{:09.6}+00:00", s.min(59.999_999))
    }

    async fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let slow = self.faults.lock().map(|f| f.slow_ms).unwrap_or(0);
        if slow > 0 {
            tokio::time::sleep(Duration::from_millis(slow)).await;
        }
        match headers.get("opentrons-version").and_then(|v| v.to_str().ok()) {
            None => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "InvalidRequest",
                    "header opentrons-version: field required",
                )
            }
            Some("*") => {}
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n >= MIN_API_VERSION => {}
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "OutdatedAPIVersion",
                        &format!("The requested API version '{v}' is not supported; use {MIN_API_VERSION} or higher"),
                    )
                }
            },
        }
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidRequest", &format!("body: {e}")),
            }
        };
        let path: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let query = uri.query().unwrap_or("");
        let mut response = match (&method, path.as_slice()) {
            (&Method::GET, ["health"]) => self.health(),
            (&Method::GET, ["pipettes"]) => self.pipettes(),
            (&Method::GET, ["instruments"]) => self.instruments(),
            (&Method::GET, ["modules"]) => {
                let s = self.lock();
                reply(StatusCode::OK, modules::list(&self.config.modules, &s.modules, self.config.robot))
            }
            (&Method::POST, ["runs"]) => self.create_run(&body),
            (&Method::GET, ["runs"]) => self.list_runs(),
            (&Method::GET, ["runs", id]) => self.with_run(id, |r| reply(StatusCode::OK, json!({"data": r.resource()}))),
            (&Method::PATCH, ["runs", id]) => self.update_run(id, &body),
            (&Method::POST, ["runs", id, "actions"]) => self.action(id, &body),
            (&Method::POST, ["runs", id, "labware_definitions"]) => self.define_labware(id, &body),
            (&Method::POST, ["runs", id, "labware_offsets"]) => self.add_offset(id, &body),
            (&Method::GET, ["runs", id, "commands"]) => self.list_commands(id, query),
            (&Method::GET, ["runs", id, "commands", cid]) => {
                self.with_run(id, |r| match r.commands.iter().find(|c| c["id"] == *cid) {
                    Some(c) => reply(StatusCode::OK, json!({"data": c})),
                    None => {
                        error(StatusCode::NOT_FOUND, "CommandNotFound", &format!("command {cid} is not in run {id}"))
                    }
                })
            }
            (&Method::POST, ["runs", id, "commands"]) => return self.command(id, query, &body).await,
            _ => error(StatusCode::NOT_FOUND, "RouteNotFound", &format!("no route {method} {}", uri.path())),
        };
        response.headers_mut().insert("opentrons-version", HeaderValue::from_static(API_VERSION));
        response
    }

    fn health(&self) -> Response {
        let c = &self.config;
        reply(
            StatusCode::OK,
            json!({"name": c.name, "robot_model": c.robot.model(), "api_version": "8.3.0", "fw_version": "lw-sim 1.0",
                   "board_revision": "sim", "system_version": "lw-sim", "robot_serial": format!("{}-serial", c.name),
                   "minimum_protocol_api_version": [2, 0], "maximum_protocol_api_version": [2, 20],
                   "links": {"apiLog": "/logs/api.log", "serialLog": "/logs/serial.log"}}),
        )
    }

    fn pipettes(&self) -> Response {
        let mut out = serde_json::Map::new();
        for m in [Mount::Left, Mount::Right] {
            let p = self.config.pipettes.iter().find(|(pm, _)| *pm == m).map(|(_, p)| p);
            out.insert(
                m.as_str().into(),
                match p {
                    Some(p) => json!({"name": p.name, "model": format!("{}_v2.0", p.name), "id": format!("{}-{}", self.config.name, m.as_str()),
                                      "mount_axis": if m == Mount::Left { "z" } else { "a" },
                                      "plunger_axis": if m == Mount::Left { "b" } else { "c" }}),
                    None => json!({"name": null, "model": null, "id": null, "mount_axis": if m == Mount::Left { "z" } else { "a" },
                                   "plunger_axis": if m == Mount::Left { "b" } else { "c" }}),
                },
            );
        }
        reply(StatusCode::OK, Value::Object(out))
    }

    fn instruments(&self) -> Response {
        let data: Vec<Value> = self
            .config
            .pipettes
            .iter()
            .map(|(m, p)| {
                json!({"mount": m.as_str(), "instrumentType": "pipette", "instrumentName": p.name,
                       "instrumentModel": format!("{}_v2.0", p.name), "serialNumber": format!("{}-{}", self.config.name, m.as_str()),
                       "ok": true, "data": {"channels": p.channels, "min_volume": p.min_ul, "max_volume": p.max_ul}})
            })
            .collect();
        reply(StatusCode::OK, json!({"data": data, "meta": {"cursor": 0, "totalLength": self.config.pipettes.len()}}))
    }

    fn create_run(&self, body: &Value) -> Response {
        let created_at = self.now();
        let mut s = self.lock();
        if let Some(cur) = s.current() {
            if !cur.may_clear() {
                return error(
                    StatusCode::CONFLICT,
                    "RunAlreadyActive",
                    &format!("Run {} is {}; stop it before creating another", cur.id, cur.status.as_str()),
                );
            }
        }
        s.runs.iter_mut().for_each(|r| r.current = false);
        let id = s.id("run");
        let offsets = body.pointer("/data/labwareOffsets").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut run = Run {
            id,
            created_at,
            status: RunStatus::Idle,
            current: true,
            actions: vec![],
            commands: vec![],
            pipettes: BTreeMap::new(),
            labware: BTreeMap::new(),
            definitions: BTreeMap::new(),
            offsets: vec![],
            errors: vec![],
            at: BTreeMap::new(),
            entered_recovery: false,
            modules: InRun::default(),
        };
        for o in offsets {
            let oid = s.id("offset");
            run.offsets.push(offset_resource(&oid, &o));
        }
        let resource = run.resource();
        s.runs.push(run);
        // Robot-server keeps the most recent runs only.
        if s.runs.len() > 20 {
            s.runs.remove(0);
        }
        reply(StatusCode::CREATED, json!({"data": resource}))
    }

    fn list_runs(&self) -> Response {
        let s = self.lock();
        let data: Vec<Value> = s.runs.iter().map(Run::resource).collect();
        let current = s.current().map(|r| json!({"href": format!("/runs/{}", r.id)}));
        reply(
            StatusCode::OK,
            json!({"data": data, "links": {"current": current}, "meta": {"cursor": 0, "totalLength": s.runs.len()}}),
        )
    }

    fn with_run(&self, id: &str, f: impl FnOnce(&mut Run) -> Response) -> Response {
        let mut s = self.lock();
        match s.runs.iter_mut().find(|r| r.id == id) {
            Some(r) => f(r),
            None => error(StatusCode::NOT_FOUND, "RunNotFound", &format!("Run {id} was not found.")),
        }
    }

    fn update_run(&self, id: &str, body: &Value) -> Response {
        self.with_run(id, |r| {
            if body.pointer("/data/current") == Some(&Value::Bool(false)) {
                if !r.may_clear() {
                    return error(
                        StatusCode::CONFLICT,
                        "RunNotIdle",
                        "Run is currently active. Allow the run to finish or stop it with a `stop` action before attempting to modify it.",
                    );
                }
                r.current = false;
            }
            reply(StatusCode::OK, json!({"data": r.resource()}))
        })
    }

    fn action(&self, id: &str, body: &Value) -> Response {
        let at = self.now();
        let mut s = self.lock();
        let aid = s.id("action");
        let Some(r) = s.runs.iter_mut().find(|r| r.id == id) else {
            return error(StatusCode::NOT_FOUND, "RunNotFound", &format!("Run {id} was not found."));
        };
        let kind = body.pointer("/data/actionType").and_then(Value::as_str).unwrap_or("");
        if !r.current {
            return error(StatusCode::CONFLICT, "RunStopped", &format!("Run {id} is not the current run"));
        }
        use RunStatus::*;
        let next = match (kind, r.status) {
            ("play", Idle | Paused) => Running,
            ("pause", Running) => Paused,
            ("stop", s) if !s.is_terminal() => Stopped,
            ("resume-from-recovery" | "resume-from-recovery-assuming-false-positive", AwaitingRecovery) => Running,
            (
                "play" | "pause" | "stop" | "resume-from-recovery" | "resume-from-recovery-assuming-false-positive",
                s,
            ) => {
                return error(
                    StatusCode::CONFLICT,
                    "RunActionNotAllowed",
                    &format!("Cannot {kind} a run that is {}", s.as_str()),
                )
            }
            _ => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "InvalidRequest",
                    &format!("unknown actionType {kind:?}"),
                )
            }
        };
        r.status = next;
        if next == Stopped {
            // The robot halts: the command under way ends as failed, nothing queued runs.
            for c in r.commands.iter_mut().filter(|c| c["status"] == "running" || c["status"] == "queued") {
                c["status"] = json!("failed");
                c["completedAt"] = json!(at);
                c["error"] = json!({"id": format!("{}-error", c["id"].as_str().unwrap_or("")), "createdAt": at,
                                    "errorType": "RunStoppedError", "errorCode": "4000",
                                    "detail": "the run was stopped while the command ran", "errorInfo": {}, "wrappedErrors": []});
            }
        }
        let action = json!({"id": aid, "createdAt": at, "actionType": kind});
        r.actions.push(action.clone());
        self.changed.notify_waiters();
        reply(StatusCode::CREATED, json!({"data": action}))
    }

    fn define_labware(&self, id: &str, body: &Value) -> Response {
        let Some(def) = body.get("data") else {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidRequest", "body needs a `data` labware definition");
        };
        let parsed = match labware::opentrons::import_value(def) {
            Ok(d) => d,
            Err(e) => {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidRequest", &format!("labware definition: {e}"))
            }
        };
        let namespace = def.get("namespace").and_then(Value::as_str).unwrap_or("custom_beta");
        let version = def.get("version").and_then(Value::as_u64).unwrap_or(1);
        let uri = format!("{namespace}/{}/{version}", parsed.load_name);
        self.with_run(id, |r| {
            if !r.current || r.status.is_terminal() {
                return error(StatusCode::CONFLICT, "RunStopped", &format!("Run {id} is not current"));
            }
            r.definitions.insert(uri.clone(), parsed);
            reply(StatusCode::CREATED, json!({"data": {"definitionUri": uri}}))
        })
    }

    fn add_offset(&self, id: &str, body: &Value) -> Response {
        let Some(o) = body.get("data").filter(|o| o.get("definitionUri").is_some() && o.get("vector").is_some()) else {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "InvalidRequest",
                "body needs data.definitionUri, data.location and data.vector",
            );
        };
        let mut s = self.lock();
        let oid = s.id("offset");
        let Some(r) = s.runs.iter_mut().find(|r| r.id == id) else {
            return error(StatusCode::NOT_FOUND, "RunNotFound", &format!("Run {id} was not found."));
        };
        if r.status != RunStatus::Idle {
            return error(StatusCode::CONFLICT, "RunNotIdle", "labware offsets are added while the run is idle");
        }
        let resource = offset_resource(&oid, o);
        r.offsets.push(resource.clone());
        reply(StatusCode::CREATED, json!({"data": resource}))
    }

    /// A page of the run's commands, as robot-server serves it: `pageLength` commands (20 unless
    /// asked) from `cursor`, or the most recent ones without a cursor.
    fn list_commands(&self, id: &str, query: &str) -> Response {
        let param = |k: &str| query.split('&').find_map(|q| q.strip_prefix(k)).and_then(|v| v.parse::<usize>().ok());
        let length = param("pageLength=").unwrap_or(20);
        self.with_run(id, |r| {
            let n = r.commands.len();
            let cursor = param("cursor=").unwrap_or(n.saturating_sub(length)).min(n);
            let data: Vec<Value> = r.commands[cursor..(cursor + length).min(n)].to_vec();
            reply(
                StatusCode::OK,
                json!({"data": data, "meta": {"cursor": cursor, "totalLength": n},
                       "links": {"current": r.commands.last().map(|c| json!({"href": format!("/runs/{id}/commands/{}", c["id"].as_str().unwrap_or(""))}))}}),
            )
        })
    }

    /// Accepts a command, carries it out for its device time, and answers when it has finished
    /// (`waitUntilComplete=true`, within `timeout` ms) or at once.
    async fn command(&self, id: &str, query: &str, body: &Value) -> Response {
        let wait = query.split('&').any(|q| q == "waitUntilComplete=true");
        let timeout_ms = query
            .split('&')
            .find_map(|q| q.strip_prefix("timeout="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(30_000);
        let Some(data) = body.get("data") else {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidRequest", "body needs `data` with a commandType");
        };
        let command_type = data.get("commandType").and_then(Value::as_str).unwrap_or("").to_string();
        let params = data.get("params").cloned().unwrap_or(json!({}));
        let intent = data.get("intent").and_then(Value::as_str).unwrap_or("setup").to_string();
        let (disconnect, hang, injected) = {
            let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
            let mut s = self.lock();
            s.requests += 1;
            let disconnect = f.disconnect_after.is_some_and(|n| s.requests > n);
            let hang = f.timeout_on.iter().any(|w| w.eq_ignore_ascii_case(&command_type));
            let injected = f.take_error_once(&command_type).or_else(|| f.error_for(&command_type).map(str::to_string));
            (disconnect, hang, injected)
        };
        let created = self.now();
        let outcome = {
            let mut s = self.lock();
            let cid = s.id("cmd");
            s.posted.push(json!({"data": data}));
            let Some(ri) = s.runs.iter().position(|r| r.id == id) else {
                return error(StatusCode::NOT_FOUND, "RunNotFound", &format!("Run {id} was not found."));
            };
            let status = s.runs[ri].status;
            if !s.runs[ri].current || status.is_terminal() {
                return error(
                    StatusCode::CONFLICT,
                    "RunStopped",
                    &format!("Run {id} is {} and takes no commands", status.as_str()),
                );
            }
            let allowed = match intent.as_str() {
                "setup" => status == RunStatus::Idle || status == RunStatus::Paused,
                "protocol" => status == RunStatus::Running,
                "fixit" => status == RunStatus::AwaitingRecovery,
                _ => false,
            };
            if !allowed {
                return error(
                    StatusCode::CONFLICT,
                    "CommandNotAllowed",
                    &format!("a {intent} command cannot be added while the run is {}", status.as_str()),
                );
            }
            let result = match injected {
                Some(error_type) => Err(refuse(&error_type, format!("injected fault on {command_type}"))),
                None => self.execute(&mut s, ri, &command_type, &params),
            };
            let mut cmd = json!({
                "id": cid, "key": data.get("key").cloned().unwrap_or_else(|| json!(cid)), "commandType": command_type,
                "createdAt": created, "startedAt": created, "params": params, "intent": intent,
                "status": "running", "notes": [],
            });
            let seconds = match &result {
                Ok((_, secs)) => *secs,
                Err(_) => 0.5,
            };
            if let Err(e) = &result {
                let err = json!({"id": format!("{cid}-error"), "createdAt": created, "errorType": e.error_type,
                                 "errorCode": e.code, "detail": e.detail, "errorInfo": {}, "wrappedErrors": []});
                cmd["error"] = err.clone();
                let r = &mut s.runs[ri];
                if intent == "protocol" {
                    if RECOVERABLE.contains(&e.error_type.as_str()) {
                        r.status = RunStatus::AwaitingRecovery;
                        r.entered_recovery = true;
                    } else {
                        r.status = RunStatus::Failed;
                        r.errors.push(err);
                    }
                }
            }
            let index = s.runs[ri].commands.len();
            s.runs[ri].commands.push(cmd);
            s.busy_s += seconds;
            (cid, index, ri, result.map(|(v, _)| v), seconds)
        };
        let (cid, index, ri, result, seconds) = outcome;
        let work = self.config.scale.wall(seconds);
        let finish = {
            let sim = self.clone();
            let run = id.to_string();
            async move {
                if hang {
                    return;
                }
                super::pause(work).await;
                let done = sim.now();
                let mut s = sim.lock();
                let Some(r) = s.runs.get_mut(ri).filter(|r| r.id == run) else { return };
                if let Some(c) = r.commands.get_mut(index).filter(|c| c["status"] == "running") {
                    c["completedAt"] = json!(done);
                    match &result {
                        Ok(v) => {
                            c["status"] = json!("succeeded");
                            c["result"] = v.clone();
                        }
                        Err(_) => c["status"] = json!("failed"),
                    }
                }
                drop(s);
                sim.changed.notify_waiters();
            }
        };
        if disconnect {
            // The robot carries the command out; the reply never comes (a connection that hangs
            // until the client gives up on it).
            tokio::spawn(finish);
            let never: std::convert::Infallible = std::future::pending().await;
            match never {}
        }
        tokio::spawn(finish);
        if wait {
            // Until the command ends (done, failed, or failed by a stop) or the client's timeout.
            let until = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
            loop {
                let woken = self.changed.notified();
                let running = {
                    let s = self.lock();
                    s.runs.get(ri).and_then(|r| r.commands.get(index)).is_some_and(|c| c["status"] == "running")
                };
                if !running || tokio::time::timeout_at(until, woken).await.is_err() {
                    break;
                }
            }
        }
        let s = self.lock();
        let cmd = s.runs.get(ri).and_then(|r| r.commands.get(index)).cloned().unwrap_or(json!({"id": cid}));
        let mut response = reply(StatusCode::CREATED, json!({"data": cmd}));
        response.headers_mut().insert("opentrons-version", HeaderValue::from_static(API_VERSION));
        response
    }

    /// Carries out one command on the run's engine state and the physical state; returns its
    /// result and how many device seconds it takes.
    fn execute(&self, s: &mut OpentronsState, ri: usize, kind: &str, p: &Value) -> Result<(Value, f64), Refusal> {
        let str_param = |k: &str| -> Result<String, Refusal> {
            p.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                refuse("InvalidSpecificationForRobotTypeError", format!("{kind}: params.{k} is required"))
            })
        };
        let num_param = |k: &str| -> Result<f64, Refusal> {
            p.get(k).and_then(Value::as_f64).filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| {
                refuse("InvalidSpecificationForRobotTypeError", format!("{kind}: params.{k} must be a number >= 0"))
            })
        };
        if modules::is_module_command(kind) {
            let OpentronsState { modules: physical, runs, .. } = s;
            let run = &mut runs[ri].modules;
            return modules::execute(&self.config.modules, physical, run, self.config.robot, kind, p);
        }
        match kind {
            "home" => Ok((json!({}), 8.0)),
            "loadPipette" => {
                let name = str_param("pipetteName")?;
                let mount = match str_param("mount")?.as_str() {
                    "left" => Mount::Left,
                    "right" => Mount::Right,
                    other => {
                        return Err(refuse("InvalidSpecificationForRobotTypeError", format!("no mount {other:?}")))
                    }
                };
                match self.config.pipettes.iter().find(|(m, _)| *m == mount) {
                    Some((_, attached)) if attached.name == name => {}
                    Some((_, attached)) => {
                        return Err(refuse(
                            "PipetteNotAttachedError",
                            format!("the {} mount carries {}, not {name}", mount.as_str(), attached.name),
                        ))
                    }
                    None => {
                        return Err(refuse(
                            "PipetteNotAttachedError",
                            format!("no pipette on the {} mount", mount.as_str()),
                        ))
                    }
                }
                let pid =
                    p.get("pipetteId").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| s.id("pipette"));
                s.runs[ri].pipettes.insert(pid.clone(), mount);
                Ok((json!({"pipetteId": pid}), 0.0))
            }
            "loadLabware" => {
                let load_name = str_param("loadName")?;
                let namespace = str_param("namespace")?;
                let version = p.get("version").and_then(Value::as_u64).unwrap_or(1);
                let location = self.place(s, ri, p.get("location").unwrap_or(&Value::Null))?;
                let slot = location.get("slotName").and_then(Value::as_str).unwrap_or("").to_string();
                let uri = format!("{namespace}/{load_name}/{version}");
                let def = if namespace == "opentrons" {
                    self.library.get(&load_name).cloned()
                } else {
                    s.runs[ri].definitions.get(&uri).cloned()
                };
                let Some(def) = def else {
                    return Err(refuse("LabwareDefinitionDoesNotExistError", format!("no labware definition {uri}")));
                };
                let lid =
                    p.get("labwareId").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| s.id("labware"));
                let name =
                    p.get("displayName").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| lid.clone());
                let offset = s.runs[ri]
                    .offsets
                    .iter()
                    .rev()
                    .find(|o| {
                        o["definitionUri"] == uri.as_str()
                            && o.pointer("/location/slotName").is_none_or(|v| v == slot.as_str())
                    })
                    .and_then(|o| o["id"].as_str().map(str::to_string));
                let definition = labware::opentrons::export(&def, &namespace);
                s.runs[ri]
                    .labware
                    .insert(lid.clone(), LoadedLabware { name, def, location, uri, offset_id: offset.clone() });
                Ok((json!({"labwareId": lid, "definition": definition, "offsetId": offset}), 0.0))
            }
            "moveLabware" => {
                let lid = str_param("labwareId")?;
                let Some(lw) = s.runs[ri].labware.get(&lid).cloned() else {
                    return Err(refuse("LabwareNotLoadedError", format!("labware {lid:?} is not loaded in this run")));
                };
                let gripper = match p.get("strategy").and_then(Value::as_str) {
                    Some("usingGripper") => true,
                    Some("manualMoveWithPause" | "manualMoveWithoutPause") => false,
                    other => {
                        return Err(refuse(
                            "InvalidSpecificationForRobotTypeError",
                            format!("moveLabware: no strategy {other:?}"),
                        ))
                    }
                };
                if gripper && self.config.robot != Robot::Flex {
                    return Err(refuse(
                        "NotSupportedOnRobotType",
                        "Labware movement using a gripper is not supported on the OT-2".into(),
                    ));
                }
                let to = self.place(s, ri, p.get("newLocation").unwrap_or(&Value::Null))?;
                // A heater-shaker's latch must be open, a thermocycler's lid too, on both ends.
                for end in [&lw.location, &to] {
                    let Some(mid) = end.get("moduleId").and_then(Value::as_str) else { continue };
                    let serial = s.runs[ri].modules.loaded.get(mid).cloned().unwrap_or_default();
                    let phys = s.modules.get(&serial).cloned().unwrap_or_default();
                    match self.config.modules.iter().find(|m| m.serial == serial).map(|m| m.kind) {
                        Some(ModuleKind::HeaterShaker) if !phys.latch_open || phys.rpm > 0.0 => {
                            return Err(refuse(
                                "HeaterShakerLabwareLatchNotOpenError",
                                format!("Cannot move {} to or from the Heater-Shaker with its latch closed", lw.name),
                            ))
                        }
                        Some(ModuleKind::Thermocycler) if !phys.lid_open => {
                            return Err(refuse(
                                "LabwareMovementNotAllowedError",
                                "Cannot move labware to or from a Thermocycler with its lid closed.".into(),
                            ))
                        }
                        _ => {}
                    }
                }
                if let Some(l) = s.runs[ri].labware.get_mut(&lid) {
                    l.location = to;
                }
                Ok((json!({"offsetId": null}), if gripper { 15.0 } else { 0.0 }))
            }
            "pickUpTip" => {
                let (mount, pid) = self.pipette(s, ri, p)?;
                let (lw, well) = self.labware_well(s, ri, p)?;
                if lw.def.tip.is_none() {
                    return Err(refuse("LabwareIsNotTipRackError", format!("{} is not a tip rack", lw.name)));
                }
                let tip = lw.def.tip.map(|t| t.volume_ul).unwrap_or(0.0);
                let ch = s.mounts.get(&mount).cloned().unwrap_or_default();
                if ch.tips.iter().any(Option::is_some) {
                    return Err(refuse("TipAttachedError", format!("pipette {pid} already has a tip; drop it first")));
                }
                let wells = channel_wells(&lw.def, &well, ch.tips.len())?;
                if let Some(w) = wells.iter().find(|w| s.tips_used.contains(&(lw.name.clone(), (*w).clone()))) {
                    return Err(refuse(
                        "tipPhysicallyMissing",
                        format!("no tip at {w} of {}: it was used before", lw.name),
                    ));
                }
                for w in &wells {
                    s.tips_used.insert((lw.name.clone(), w.clone()));
                }
                let chans = s.mounts.entry(mount).or_default();
                chans.tips = vec![Some(Tip { capacity_ul: tip }); chans.tips.len().max(1)];
                chans.contents = vec![Mixture::new(); chans.tips.len()];
                s.runs[ri].at.insert(pid, At::Well { labware: lw.name.clone(), well });
                Ok((
                    json!({"tipVolume": tip, "tipLength": lw.def.tip.map(|t| t.length_mm), "tipDiameter": 5.0, "position": {"x": 0, "y": 0, "z": 0}}),
                    MOVE_S + 2.0,
                ))
            }
            "aspirate" | "dispense" | "blowout" | "moveToWell" => {
                let (mount, pid) = self.pipette(s, ri, p)?;
                let (lw, well) = self.labware_well(s, ri, p)?;
                s.runs[ri].at.insert(pid.clone(), At::Well { labware: lw.name.clone(), well: well.clone() });
                let secs = match kind {
                    "moveToWell" => MOVE_S,
                    "blowout" => self.blow_out(s, mount, &lw, &well)? + MOVE_S,
                    _ => self.pipetting(s, mount, &lw, &well, kind == "aspirate", num_param("volume")?)? + MOVE_S,
                };
                let volume = p.get("volume").cloned().unwrap_or(Value::Null);
                Ok((json!({"position": {"x": 0, "y": 0, "z": 0}, "volume": volume}), secs))
            }
            "aspirateInPlace" | "dispenseInPlace" => {
                let (mount, pid) = self.pipette(s, ri, p)?;
                let Some(At::Well { labware, well }) = s.runs[ri].at.get(&pid).cloned() else {
                    return Err(refuse("PipetteNotReadyToAspirateError", format!("pipette {pid} is not over a well")));
                };
                let lw = s.runs[ri].labware.values().find(|l| l.name == labware).cloned().ok_or_else(|| {
                    refuse("LabwareNotLoadedError", format!("labware {labware} is gone from the run"))
                })?;
                let secs = self.pipetting(s, mount, &lw, &well, kind == "aspirateInPlace", num_param("volume")?)?;
                Ok((json!({"volume": p.get("volume")}), secs))
            }
            "moveToAddressableAreaForDropTip" | "moveToAddressableArea" => {
                let (_, pid) = self.pipette(s, ri, p)?;
                let area = str_param("addressableAreaName")?;
                if area != self.config.robot.trash_area() {
                    return Err(refuse(
                        "AddressableAreaDoesNotExistError",
                        format!("no addressable area {area:?} on this robot"),
                    ));
                }
                s.runs[ri].at.insert(pid, At::Trash);
                Ok((json!({"position": {"x": 0, "y": 0, "z": 0}}), MOVE_S))
            }
            "dropTipInPlace" => {
                let (mount, pid) = self.pipette(s, ri, p)?;
                if s.runs[ri].at.get(&pid) != Some(&At::Trash) {
                    return Err(refuse(
                        "LocationNotAccessibleByPipetteError",
                        format!("pipette {pid} is not over the trash: the tip would fall on the deck"),
                    ));
                }
                let chans = s.mounts.entry(mount).or_default();
                if chans.tips.iter().all(Option::is_none) {
                    return Err(refuse("TipNotAttachedError", format!("pipette {pid} has no tip to drop")));
                }
                chans.tips.iter_mut().for_each(|t| *t = None);
                chans.contents.iter_mut().for_each(Mixture::clear);
                Ok((json!({}), 2.0))
            }
            other => Err(refuse("CommandDoesNotExistError", format!("this simulator does not carry out {other}"))),
        }
    }

    /// A location labware may be put in, as the engine checks it: a deck slot (not the trash,
    /// not a module's slot) or a module loaded in the run, holding nothing; or off the deck.
    fn place(&self, s: &OpentronsState, ri: usize, location: &Value) -> Result<Value, Refusal> {
        let run = &s.runs[ri];
        if location == "offDeck" {
            return Ok(json!("offDeck"));
        }
        let out = if let Some(slot) = location.get("slotName").and_then(Value::as_str) {
            let n = self.config.robot.slot_number(slot);
            if n.is_none_or(|n| n == 12) {
                return Err(refuse("AddressableAreaDoesNotExistError", format!("no deck slot {slot:?} for labware")));
            }
            if self.config.modules.iter().any(|m| Some(m.slot) == n) {
                return Err(refuse("LocationIsOccupiedError", format!("slot {slot} holds a module")));
            }
            json!({"slotName": slot})
        } else if let Some(mid) = location.get("moduleId").and_then(Value::as_str) {
            if !run.modules.loaded.contains_key(mid) {
                return Err(refuse("ModuleNotLoadedError", format!("module {mid:?} is not loaded in this run")));
            }
            json!({"moduleId": mid})
        } else {
            return Err(refuse(
                "LabwareNotOnDeckError",
                format!("a location is a slotName or a moduleId, not {location}"),
            ));
        };
        if let Some(other) = run.labware.values().find(|l| l.location == out) {
            return Err(refuse("LocationIsOccupiedError", format!("{out} already holds {}", other.name)));
        }
        Ok(out)
    }

    fn pipette(&self, s: &OpentronsState, ri: usize, p: &Value) -> Result<(Mount, String), Refusal> {
        let pid = p.get("pipetteId").and_then(Value::as_str).unwrap_or("");
        s.runs[ri]
            .pipettes
            .get(pid)
            .map(|m| (*m, pid.to_string()))
            .ok_or_else(|| refuse("PipetteNotLoadedError", format!("pipette {pid:?} is not loaded in this run")))
    }

    fn labware_well(&self, s: &OpentronsState, ri: usize, p: &Value) -> Result<(LoadedLabware, String), Refusal> {
        let lid = p.get("labwareId").and_then(Value::as_str).unwrap_or("");
        let lw = s.runs[ri]
            .labware
            .get(lid)
            .cloned()
            .ok_or_else(|| refuse("LabwareNotLoadedError", format!("labware {lid:?} is not loaded in this run")))?;
        let well = p.get("wellName").and_then(Value::as_str).unwrap_or("").to_string();
        if lw.def.well(&well).is_none() {
            return Err(refuse("WellDoesNotExistError", format!("{} has no well {well:?}", lw.name)));
        }
        Ok((lw, well))
    }

    /// Moves `ul` per channel between the tips and the wells under them; device seconds.
    fn pipetting(
        &self,
        s: &mut OpentronsState,
        mount: Mount,
        lw: &LoadedLabware,
        well: &str,
        draw: bool,
        ul: f64,
    ) -> Result<f64, Refusal> {
        let pipette = self.config.pipettes.iter().find(|(m, _)| *m == mount).map(|(_, p)| p.clone());
        let Some(pipette) = pipette else { return Err(refuse("PipetteNotAttachedError", "no pipette".into())) };
        let chans = s.mounts.get(&mount).cloned().unwrap_or_default();
        let Some(Some(tip)) = chans.tips.first().copied() else {
            return Err(refuse("TipNotAttachedError", format!("{} has no tip; pick one up first", pipette.name)));
        };
        let wells = channel_wells(&lw.def, well, chans.tips.len())?;
        let held = chans.held();
        let eps = 1e-6;
        let mut bench = self.bench.lock().unwrap_or_else(|p| p.into_inner());
        if draw {
            let room = tip.capacity_ul.min(pipette.max_ul) - held;
            if ul > room + eps {
                return Err(refuse(
                    "InvalidAspirateVolumeError",
                    format!(
                        "{ul} µL more does not fit: {} holds {held:.2} µL of at most {:.2} µL",
                        pipette.name,
                        tip.capacity_ul.min(pipette.max_ul)
                    ),
                ));
            }
            // Several channels in one trough draw from it together.
            let need = ul * wells.iter().filter(|w| **w == wells[0]).count() as f64;
            for w in &wells {
                let has = bench.volume(&lw.name, w);
                if has + eps < need.max(ul) {
                    return Err(refuse(
                        "liquidNotFound",
                        format!("{} {w} holds {has:.2} µL; {:.2} µL cannot be drawn from it", lw.name, need.max(ul)),
                    ));
                }
            }
            let chans = s.mounts.entry(mount).or_default();
            for (c, w) in wells.iter().enumerate() {
                let taken = bench.take(&lw.name, w, ul);
                if let Some(m) = chans.contents.get_mut(c) {
                    bench::add(m, &taken);
                }
            }
        } else {
            if ul > held + eps {
                return Err(refuse(
                    "InvalidDispenseVolumeError",
                    format!("{ul} µL cannot be dispensed: the tip holds {held:.2} µL"),
                ));
            }
            let capacity = lw.def.well(well).map_or(0.0, |w| w.max_volume_ul);
            let need = ul * wells.iter().filter(|w| **w == wells[0]).count() as f64;
            for w in &wells {
                let has = bench.volume(&lw.name, w);
                if has + need > capacity + eps {
                    return Err(refuse(
                        "InvalidDispenseVolumeError",
                        format!(
                            "{} {w} holds {has:.2} µL of {capacity:.2} µL; {need:.2} µL more would overflow it",
                            lw.name
                        ),
                    ));
                }
            }
            let chans = s.mounts.entry(mount).or_default();
            for (c, w) in wells.iter().enumerate() {
                if let Some(m) = chans.contents.get_mut(c) {
                    let out = bench::take(m, ul);
                    bench.add(&lw.name, w, &out);
                }
            }
        }
        Ok(ul / pipette.flow_ul_per_s.max(1e-6))
    }

    /// Blows what is left in the tips into the wells under them.
    fn blow_out(&self, s: &mut OpentronsState, mount: Mount, lw: &LoadedLabware, well: &str) -> Result<f64, Refusal> {
        let chans = s.mounts.get(&mount).cloned().unwrap_or_default();
        if chans.tips.iter().all(Option::is_none) {
            return Err(refuse("TipNotAttachedError", "blow-out with no tip".into()));
        }
        let wells = channel_wells(&lw.def, well, chans.tips.len())?;
        let mut bench = self.bench.lock().unwrap_or_else(|p| p.into_inner());
        let chans = s.mounts.entry(mount).or_default();
        for (c, w) in wells.iter().enumerate() {
            if let Some(m) = chans.contents.get_mut(c) {
                let rest: f64 = m.values().sum();
                let out = bench::take(m, rest);
                bench.add(&lw.name, w, &out);
            }
        }
        Ok(0.5)
    }
}

fn offset_resource(id: &str, o: &Value) -> Value {
    json!({"id": id, "createdAt": "2026-01-01T00:00:00+00:00", "definitionUri": o.get("definitionUri"),
           "location": o.get("location"), "vector": o.get("vector")})
}

/// The wells under each channel of a head whose first channel is over `well`: down the column
/// on a plate, all in the one well of a trough with fewer rows than channels.
fn channel_wells(def: &LabwareDef, well: &str, channels: usize) -> Result<Vec<String>, Refusal> {
    if channels <= 1 {
        return Ok(vec![well.to_string()]);
    }
    let rows = def.rows();
    if rows.len() < channels {
        return Ok(vec![well.to_string(); channels]);
    }
    let split = well.find(|c: char| c.is_ascii_digit()).unwrap_or(well.len());
    let (row, column) = well.split_at(split);
    let first = rows.iter().position(|r| r == row).unwrap_or(0);
    (0..channels)
        .map(|k| {
            rows.get(first + k).map(|r| format!("{r}{column}")).ok_or_else(|| {
                refuse(
                    "WellDoesNotExistError",
                    format!("channel {k} over {well} would be past the last row of {}", def.load_name),
                )
            })
        })
        .collect()
}
