//! Liquid-handler driver for Opentrons robots (OT-2, Flex) over the robot's HTTP API, the way
//! fleets and cloud labs drive them: the robot's own server owns its motion controller.
//!
//! Each liquid-handler task is one protocol-less run: [`Instrument::prepare`] closes this
//! driver's previous run, creates a new one (the robot allows one active run and refuses a new
//! one while another client's run is under way: that is [`InstrumentError::Busy`]), posts the
//! definitions of labware the robot does not carry, applies the lab's labware offsets, loads the
//! pipettes by mount and the plan's deck, and plays the run. Each plan command is then posted
//! as live commands (`waitUntilComplete`), each with a key of ours: when a reply is lost, the
//! run's command list says whether the robot carried it out, so nothing is sent twice blindly.

use super::{spawn, Cancel};
use crate::codec::opentrons::{self as api, CommandState, Intent, Loaded, Robot, RunStatus};
use crate::deck::Deck;
use crate::error::InstrumentError;
use crate::instrument::{unsafe_state, Execution, Identity, Instrument, Outcome, State, Status, Whereabouts};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use labware::site::{LabwareOffset, Pipette};
use labware::Library;
use protocols::plan::{CommandOp, RunPlan};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Timing of the HTTP exchanges.
#[derive(Debug, Clone)]
pub struct OpentronsConfig {
    /// One request and its reply (a command's own time is not counted here).
    pub request_timeout: Duration,
    /// How long a command may run before its outcome counts as unknown.
    pub command_timeout: Duration,
    /// Between looks at a command still running.
    pub poll: Duration,
}

impl Default for OpentronsConfig {
    fn default() -> Self {
        OpentronsConfig {
            request_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(600),
            poll: Duration::from_millis(200),
        }
    }
}

/// How an exchange went wrong, which decides what may be sent again.
#[derive(Debug)]
enum HttpError {
    /// The request never reached the robot.
    NotSent(String),
    /// It was sent; no reply came.
    NoReply(String),
    /// A reply came that is not JSON: the robot's server is not what it should be.
    Garbled(String),
}

impl From<HttpError> for InstrumentError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::NotSent(m) => InstrumentError::Disconnected(m),
            HttpError::Garbled(m) => InstrumentError::Protocol(m),
            HttpError::NoReply(m) => {
                InstrumentError::Protocol(format!("{m}; whether the robot acted on it is not known"))
            }
        }
    }
}

/// What this driver has set up on the robot.
#[derive(Debug, Default)]
struct Session {
    robot: Option<Robot>,
    run: Option<String>,
    loaded: Loaded,
    /// Pipette ids by robot pipette id → channels (for whereabouts).
    channels: std::collections::BTreeMap<String, u32>,
    next_key: u64,
}

#[derive(Debug)]
struct Inner {
    id: String,
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    pipettes: Vec<Pipette>,
    offsets: Vec<LabwareOffset>,
    library: Library,
    slots: u32,
    config: OpentronsConfig,
    session: Mutex<Session>,
    /// The run under way, readable while a command holds the session (for abort).
    current: std::sync::Mutex<Option<String>>,
    cancel: Cancel,
}

/// One Opentrons robot.
#[derive(Debug, Clone)]
pub struct OpentronsDriver {
    inner: Arc<Inner>,
}

impl OpentronsDriver {
    /// A driver for the robot at `address` (`host:port`).
    pub fn new(
        instrument: &labware::site::Instrument,
        address: &str,
        library: Library,
        config: OpentronsConfig,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.request_timeout));
        let http = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        OpentronsDriver {
            inner: Arc::new(Inner {
                id: instrument.id.clone(),
                base: format!("http://{address}"),
                http,
                pipettes: instrument.pipettes.clone(),
                offsets: instrument.labware_offsets.clone(),
                library,
                slots: instrument.deck_slots.unwrap_or(11),
                config,
                session: Mutex::new(Session::default()),
                current: std::sync::Mutex::new(None),
                cancel: Cancel::default(),
            }),
        }
    }

    /// The run this driver has on the robot now, if any (tests and the console).
    pub async fn run_id(&self) -> Option<String> {
        self.inner.session.lock().await.run.clone()
    }
}

impl Inner {
    /// One exchange: the status and the JSON body of the reply.
    async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), HttpError> {
        let uri = format!("{}{path}", self.base);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&uri)
            .header("opentrons-version", api::API_VERSION)
            .header("accept", "application/json");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(bytes)).map_err(|e| HttpError::NotSent(format!("{method} {uri}: {e}")))?;
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| {
                if e.is_connect() {
                    HttpError::NotSent(format!("cannot reach the robot at {}: {e}", self.base))
                } else {
                    HttpError::NoReply(format!("{method} {path}: the connection failed: {e}"))
                }
            })?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| HttpError::NoReply(format!("{method} {path}: reply cut off: {e}")))?
                .to_bytes();
            let value = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).map_err(|e| {
                    HttpError::Garbled(format!("{method} {path}: HTTP {status} with a reply that is not JSON ({e})"))
                })?
            };
            Ok((status, value))
        };
        match tokio::time::timeout(self.config.request_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => {
                Err(HttpError::NoReply(format!("{method} {path}: no reply within {:?}", self.config.request_timeout)))
            }
        }
    }

    /// An exchange whose refusal is an error: the reply's `data`.
    async fn call(&self, method: &str, path: &str, body: Option<&Value>, what: &str) -> Result<Value, InstrumentError> {
        let (status, reply) = self.request(method, path, body).await?;
        if !(200..300).contains(&status) {
            return Err(api::refused(status, &reply, &format!("{} {what}", self.id)));
        }
        Ok(reply.get("data").cloned().unwrap_or(reply))
    }

    async fn robot(&self, session: &mut Session) -> Result<Robot, InstrumentError> {
        if let Some(r) = session.robot {
            return Ok(r);
        }
        let health = self.call("GET", "/health", None, "health").await?;
        let robot = Robot::from_model(health.get("robot_model").and_then(Value::as_str).unwrap_or(""))?;
        session.robot = Some(robot);
        Ok(robot)
    }

    async fn run_status(&self, run: &str) -> Result<RunStatus, InstrumentError> {
        let data = self.call("GET", &format!("/runs/{run}"), None, "run status").await?;
        api::run_status(&data)
    }

    /// Ends this driver's run, if it has one: stopped if it is still going, then no longer
    /// current, so the robot is free for the next run (ours or another client's).
    async fn close_run(&self, session: &mut Session) -> Result<(), InstrumentError> {
        let Some(run) = session.run.take() else { return Ok(()) };
        self.set_current(None);
        session.loaded = Loaded::default();
        let status = match self.run_status(&run).await {
            Ok(s) => s,
            Err(InstrumentError::Device { code, .. }) if code == "RunNotFound" => return Ok(()),
            Err(e) => return Err(e),
        };
        if !status.is_terminal() && status != RunStatus::Idle {
            self.call(
                "POST",
                &format!("/runs/{run}/actions"),
                Some(&json!({"data": {"actionType": "stop"}})),
                "stopping our run",
            )
            .await?;
        }
        let body = json!({"data": {"current": false}});
        self.call("PATCH", &format!("/runs/{run}"), Some(&body), "closing our run").await?;
        Ok(())
    }

    /// Whether the robot's current run is one of this instrument's (its commands carry keys
    /// `<instrument id>-…`); if so it is stopped and closed.
    async fn adopt_own_run(&self, session: &mut Session) -> Result<bool, InstrumentError> {
        let (status, runs) = self.request("GET", "/runs", None).await?;
        let current = runs.pointer("/links/current/href").and_then(Value::as_str).and_then(|h| h.rsplit('/').next());
        let Some(run) = current.filter(|_| (200..300).contains(&status)).map(str::to_string) else { return Ok(false) };
        let commands = self.call("GET", &format!("/runs/{run}/commands"), None, "listing commands").await?;
        let prefix = format!("{}-", self.id);
        let ours = commands.as_array().is_some_and(|cs| {
            !cs.is_empty()
                && cs.iter().all(|c| c.get("key").and_then(Value::as_str).is_some_and(|k| k.starts_with(&prefix)))
        });
        if ours {
            tracing::warn!(instrument = %self.id, run = %run, "closing a run an earlier labd left on the robot");
            session.run = Some(run);
            self.close_run(session).await?;
        }
        Ok(ours)
    }

    /// Posts one robot command and waits for its outcome.
    async fn command(
        &self,
        session: &mut Session,
        run: &str,
        cmd: &api::Command,
        intent: Intent,
    ) -> Result<Value, InstrumentError> {
        session.next_key += 1;
        let key = format!("{}-{}-{}", self.id, run, session.next_key);
        let wait_ms = self.config.command_timeout.as_millis().min(self.config.request_timeout.as_millis()) as u64;
        let path = format!("/runs/{run}/commands?waitUntilComplete=true&timeout={wait_ms}");
        let state = match self.request("POST", &path, Some(&cmd.body(intent, &key))).await {
            Ok((status, reply)) if (200..300).contains(&status) => {
                api::command_state(reply.get("data").unwrap_or(&Value::Null))?
            }
            Ok((status, reply)) => {
                return Err(api::refused(status, &reply, &format!("{} {}", self.id, cmd.command_type)))
            }
            Err(HttpError::NotSent(m)) => return Err(InstrumentError::Disconnected(m)),
            Err(HttpError::NoReply(m)) => match self.find_by_key(run, &key).await? {
                Some(state) => state,
                // The robot has no such command: it never got it, so sending again is safe.
                None => return Err(InstrumentError::Disconnected(format!("{m}; the robot never received it"))),
            },
            Err(e @ HttpError::Garbled(_)) => return Err(e.into()),
        };
        self.settle(run, state).await
    }

    /// Looks a command up by our key in the run's command list (after a lost reply).
    async fn find_by_key(&self, run: &str, key: &str) -> Result<Option<CommandState>, InstrumentError> {
        let list = self.call("GET", &format!("/runs/{run}/commands"), None, "listing commands").await?;
        let found =
            list.as_array().and_then(|cs| cs.iter().find(|c| c.get("key").and_then(Value::as_str) == Some(key)));
        found.map(api::command_state).transpose()
    }

    /// Waits for a pending command and turns its end into a result.
    async fn settle(&self, run: &str, mut state: CommandState) -> Result<Value, InstrumentError> {
        let started = tokio::time::Instant::now();
        loop {
            match state {
                CommandState::Succeeded { result, .. } => return Ok(result),
                CommandState::Failed { error, .. } => {
                    let status = self.run_status(run).await.unwrap_or(RunStatus::Failed);
                    return Err(api::command_failed(&error, status));
                }
                CommandState::Pending { id } => {
                    if started.elapsed() > self.config.command_timeout {
                        return Err(InstrumentError::Timeout(self.config.command_timeout));
                    }
                    if let Err(e) = self.cancel.sleep(self.config.poll).await {
                        let stop = json!({"data": {"actionType": "stop"}});
                        let _stopped = self.request("POST", &format!("/runs/{run}/actions"), Some(&stop)).await;
                        return Err(e);
                    }
                    let data = self.call("GET", &format!("/runs/{run}/commands/{id}"), None, "command status").await?;
                    state = api::command_state(&data)?;
                }
            }
        }
    }

    /// Sets up a new run for `plan`'s deck and plays it.
    async fn open_run(&self, session: &mut Session, plan: &RunPlan) -> Result<(), InstrumentError> {
        let robot = self.robot(session).await?;
        let deck = Deck::for_plan(plan, &self.library, self.slots)
            .map_err(|m| InstrumentError::Validation { parameter: "labware".into(), message: m })?;
        self.close_run(session).await?;
        let run = match self.call("POST", "/runs", Some(&json!({"data": {}})), "creating a run").await {
            Err(InstrumentError::Busy(why)) => {
                // A run of an earlier labd (before a restart, or the node that held this cell
                // before a failover) holds the robot: its commands carry our keys. Close it and
                // go on; anyone else's run is left alone.
                if !self.adopt_own_run(session).await? {
                    return Err(InstrumentError::Busy(why));
                }
                self.call("POST", "/runs", Some(&json!({"data": {}})), "creating a run").await?
            }
            other => other?,
        };
        let run_id = run
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| InstrumentError::Protocol(format!("{}: the new run has no id: {run}", self.id)))?;
        session.run = Some(run_id.clone());
        self.set_current(Some(run_id.clone()));
        let mut loaded = Loaded::default();
        for p in &self.pipettes {
            let Some(mount) = p.mount else {
                return Err(InstrumentError::Validation {
                    parameter: "mount".into(),
                    message: format!("pipette {} of {} names no mount; say left or right in lab.toml", p.name, self.id),
                });
            };
            let cmd = api::Command {
                command_type: "loadPipette",
                params: json!({"pipetteName": p.name, "mount": mount.as_str()}),
            };
            let result = self.command(session, &run_id, &cmd, Intent::Setup).await?;
            let pid = result.get("pipetteId").and_then(Value::as_str).unwrap_or_default().to_string();
            session.channels.insert(pid.clone(), p.channels.max(1));
            loaded.pipettes.insert(p.name.clone(), pid);
        }
        for item in &deck.items {
            let uri = match labware::opentrons::uri_of(&item.def) {
                Some(uri) => uri,
                None => {
                    let def = labware::opentrons::export(&item.def, labware::opentrons::CUSTOM_NAMESPACE);
                    let path = format!("/runs/{run_id}/labware_definitions");
                    self.call("POST", &path, Some(&json!({"data": def})), "posting a labware definition").await?;
                    labware::opentrons::DefinitionUri {
                        namespace: labware::opentrons::CUSTOM_NAMESPACE.into(),
                        load_name: item.def.load_name.clone(),
                        version: 1,
                    }
                }
            };
            let slot = robot.slot_name(item.slot);
            for o in
                self.offsets.iter().filter(|o| o.labware == item.def.load_name && o.slot.is_none_or(|s| s == item.slot))
            {
                let body = json!({"data": {"definitionUri": uri.to_string(), "location": {"slotName": slot},
                                           "vector": {"x": o.x, "y": o.y, "z": o.z}}});
                self.call("POST", &format!("/runs/{run_id}/labware_offsets"), Some(&body), "applying a labware offset")
                    .await?;
            }
            let cmd = api::Command {
                command_type: "loadLabware",
                params: json!({"location": {"slotName": slot}, "loadName": uri.load_name, "namespace": uri.namespace,
                               "version": uri.version, "displayName": item.name}),
            };
            let result = self.command(session, &run_id, &cmd, Intent::Setup).await?;
            let lid = result.get("labwareId").and_then(Value::as_str).unwrap_or_default().to_string();
            loaded.labware.insert(item.name.clone(), lid);
        }
        session.loaded = loaded;
        let play = json!({"data": {"actionType": "play"}});
        self.call("POST", &format!("/runs/{run_id}/actions"), Some(&play), "playing the run").await?;
        tracing::debug!(instrument = %self.id, run = %run_id, labware = deck.items.len(), "Opentrons run ready");
        Ok(())
    }

    fn set_current(&self, run: Option<String>) {
        if let Ok(mut c) = self.current.lock() {
            *c = run;
        }
    }

    fn flow_rates(&self) -> api::FlowRates {
        self.pipettes.iter().map(|p| (p.name.clone(), p.flow_ul_per_s)).collect()
    }

    /// Which of our pipettes carry a tip, by the run's own record of its commands.
    async fn tips(&self, run: &str) -> Result<std::collections::BTreeMap<String, bool>, InstrumentError> {
        let list = self.call("GET", &format!("/runs/{run}/commands"), None, "listing commands").await?;
        let mut on = std::collections::BTreeMap::new();
        for c in list.as_array().into_iter().flatten() {
            let Some(pid) = c.pointer("/params/pipetteId").and_then(Value::as_str) else { continue };
            if c.get("status").and_then(Value::as_str) != Some("succeeded") {
                continue;
            }
            match c.get("commandType").and_then(Value::as_str) {
                Some("pickUpTip") => {
                    on.insert(pid.to_string(), true);
                }
                Some("dropTip" | "dropTipInPlace") => {
                    on.insert(pid.to_string(), false);
                }
                _ => {}
            }
        }
        Ok(on)
    }
}

#[async_trait::async_trait]
impl Instrument for OpentronsDriver {
    async fn identify(&self) -> Result<Identity, InstrumentError> {
        let health = self.inner.call("GET", "/health", None, "health").await?;
        let field = |k: &str| health.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let model = field("robot_model");
        let robot = Robot::from_model(&model)?;
        self.inner.session.lock().await.robot = Some(robot);
        Ok(Identity {
            model,
            serial: field("robot_serial"),
            firmware: format!("robot software {} firmware {}", field("api_version"), field("fw_version")),
        })
    }

    async fn prepare(&self, plan: &RunPlan) -> Result<(), InstrumentError> {
        let mut session = self.inner.session.lock().await;
        self.inner.open_run(&mut session, plan).await
    }

    async fn start(&self, op: &CommandOp) -> Result<Execution, InstrumentError> {
        let inner = self.inner.clone();
        inner.cancel.reset();
        let (run, commands) = {
            let session = inner.session.lock().await;
            let robot = session.robot.unwrap_or(Robot::Ot2);
            let commands = api::lower(op, &session.loaded, &inner.flow_rates(), robot)?;
            let run = session.run.clone().ok_or_else(|| InstrumentError::Validation {
                parameter: "run".into(),
                message: format!("{} has no run on the robot; prepare the task's deck first", inner.id),
            })?;
            (run, commands)
        };
        Ok(spawn(move |tx| async move {
            let mut session = inner.session.lock().await;
            let n = commands.len();
            for (i, cmd) in commands.iter().enumerate() {
                inner.cancel.check()?;
                match inner.command(&mut session, &run, cmd, Intent::Protocol).await {
                    Ok(_) => tx.progress((i + 1) as f64 / n as f64, cmd.command_type),
                    // A later robot command of the same plan command never arrived: the earlier
                    // ones did, so the plan command as a whole must not simply be sent again.
                    Err(InstrumentError::Disconnected(m)) if i > 0 => {
                        return Err(InstrumentError::Protocol(format!(
                            "{m}, after {i} of {n} robot commands of this step had run"
                        )))
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(Outcome::default())
        }))
    }

    async fn status(&self) -> Result<Status, InstrumentError> {
        self.inner.call("GET", "/health", None, "health").await?;
        let run = self.inner.session.try_lock().ok().and_then(|s| s.run.clone());
        let busy = self.inner.session.try_lock().is_err();
        let (state, detail) = match run {
            None => (if busy { State::Busy } else { State::Idle }, "no run of ours on the robot".to_string()),
            Some(run) => match self.inner.run_status(&run).await? {
                RunStatus::AwaitingRecovery => (
                    State::Fault("the robot holds our run in error recovery".into()),
                    format!("run {run} awaiting-recovery"),
                ),
                RunStatus::BlockedByOpenDoor => (State::Fault("the robot's door is open".into()), format!("run {run}")),
                s => (if busy { State::Busy } else { State::Idle }, format!("run {run} {}", s.as_str())),
            },
        };
        Ok(Status { state, temperature_c: None, detail })
    }

    /// Stops the robot's run at once (the robot halts its motion and fails the command under
    /// way), besides ending this driver's wait for it.
    async fn abort(&self) -> Result<(), InstrumentError> {
        self.inner.cancel.fire();
        let run = self.inner.current.lock().ok().and_then(|c| c.clone());
        if let Some(run) = run {
            let stop = json!({"data": {"actionType": "stop"}});
            match self.inner.request("POST", &format!("/runs/{run}/actions"), Some(&stop)).await? {
                (s, _) if (200..300).contains(&s) || s == 409 => {}
                (s, body) => return Err(api::refused(s, &body, &format!("{} stopping the run", self.inner.id))),
            }
        }
        Ok(())
    }

    /// Which pipettes carry a tip by the robot's own record of this driver's run, and the
    /// run's status.
    async fn whereabouts(&self) -> Result<Whereabouts, InstrumentError> {
        let session = self.inner.session.lock().await;
        let Some(run) = session.run.clone() else {
            return Ok(Whereabouts { text: "no run of ours on the robot".into(), tips_on: None });
        };
        let status = self.inner.run_status(&run).await?;
        let tips = self.inner.tips(&run).await?;
        let on: u32 =
            tips.iter().filter(|(_, on)| **on).map(|(p, _)| session.channels.get(p).copied().unwrap_or(1)).sum();
        Ok(Whereabouts {
            text: format!("run {run} {}; {on} channel(s) carrying a tip", status.as_str()),
            tips_on: Some(on),
        })
    }

    /// Drops any tip our run left on a pipette into the trash (as a fix-it command while the run
    /// waits in error recovery), stops and closes the run.
    async fn make_safe(&self) -> Result<String, InstrumentError> {
        let inner = &self.inner;
        let mut session = inner.session.lock().await;
        let Some(run) = session.run.clone() else { return Ok("no run of ours on the robot".into()) };
        let robot = inner.robot(&mut session).await?;
        let status = inner.run_status(&run).await?;
        let tipped: Vec<String> = inner.tips(&run).await?.into_iter().filter(|(_, on)| *on).map(|(p, _)| p).collect();
        let mut did = Vec::new();
        if !tipped.is_empty() {
            let intent = match status {
                RunStatus::AwaitingRecovery => Intent::Fixit,
                RunStatus::Running => Intent::Protocol,
                RunStatus::Idle | RunStatus::Paused => Intent::Setup,
                s => {
                    return Err(unsafe_state(&format!(
                        "our run is {} with a tip on {} pipette(s); remove it with the Opentrons App's drop-tip wizard",
                        s.as_str(),
                        tipped.len()
                    )))
                }
            };
            for pid in &tipped {
                for cmd in api::drop_tip(pid, robot) {
                    inner.command(&mut session, &run, &cmd, intent).await?;
                }
            }
            did.push(format!("dropped {} tip(s) in the trash", tipped.len()));
        }
        inner.close_run(&mut session).await?;
        did.push(format!("closed run {run}"));
        Ok(did.join(", "))
    }
}
