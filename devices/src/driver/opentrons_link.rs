//! One Opentrons robot's HTTP API, shared by the drivers of what is on it: the liquid handler
//! (its pipettes) and the modules plugged into it. The robot takes commands in one current run
//! at a time, so they share the run: whoever needs one while none of ours is current creates it.
//! A liquid-handling task starts a run of its own (for a clean deck); a module loads itself into
//! whatever run of ours is current. Every command carries a key `<robot id>-<run>-<n>`, so a
//! lost reply is looked up in the run's command list, and a run an earlier labd left is known
//! as ours.

use super::Cancel;
use crate::codec::opentrons::{self as api, CommandState, Intent, Loaded, Robot, RunStatus};
use crate::error::InstrumentError;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
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
pub(crate) enum HttpError {
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

/// What the drivers of this robot have set up on it.
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub robot: Option<Robot>,
    pub run: Option<String>,
    /// What the liquid handler's task loaded in the run.
    pub loaded: Loaded,
    /// Pipette ids by robot pipette id → channels (for whereabouts).
    pub channels: BTreeMap<String, u32>,
    /// Module ids in the current run, by module instrument id.
    pub modules: BTreeMap<String, String>,
    next_key: u64,
}

/// The robots a lab's drivers share, by robot id and address: one [`RobotLink`] each.
#[derive(Debug, Clone, Default)]
pub struct Robots(Arc<std::sync::Mutex<BTreeMap<RobotKey, Weak<RobotLink>>>>);

/// A robot's instrument id and address.
type RobotKey = (String, String);

impl Robots {
    /// The link to robot `id` at `address`, made on first use.
    pub fn link(&self, id: &str, address: &str, config: &OpentronsConfig) -> Arc<RobotLink> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (id.to_string(), address.to_string());
        if let Some(link) = all.get(&key).and_then(Weak::upgrade) {
            return link;
        }
        let link = Arc::new(RobotLink::new(id, address, config.clone()));
        all.insert(key, Arc::downgrade(&link));
        link
    }
}

/// One robot's HTTP API and the run its drivers share.
#[derive(Debug)]
pub struct RobotLink {
    pub(crate) id: String,
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    pub(crate) config: OpentronsConfig,
    pub(crate) session: Mutex<Session>,
    /// The run under way, readable while a command holds the session (for abort).
    current: std::sync::Mutex<Option<String>>,
}

impl RobotLink {
    /// A link to the robot `id` (its instrument id, which prefixes command keys) at `address`.
    pub fn new(id: &str, address: &str, config: OpentronsConfig) -> RobotLink {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.request_timeout));
        let http = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        RobotLink {
            id: id.to_string(),
            base: format!("http://{address}"),
            http,
            config,
            session: Mutex::new(Session::default()),
            current: std::sync::Mutex::new(None),
        }
    }

    /// The run of ours under way on the robot, if any.
    pub(crate) fn current_run(&self) -> Option<String> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    /// Creates a run and makes it ours (closing one an earlier labd left, never another
    /// client's: that is `Busy`).
    pub(crate) async fn create_run(&self, session: &mut Session) -> Result<String, InstrumentError> {
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
        Ok(run_id)
    }

    /// Stops the run of ours under way at once (the robot halts its motion and fails the
    /// command under way); a run already over is left as it is.
    pub(crate) async fn stop_current(&self) -> Result<(), InstrumentError> {
        let Some(run) = self.current_run() else { return Ok(()) };
        let stop = json!({"data": {"actionType": "stop"}});
        match self.request("POST", &format!("/runs/{run}/actions"), Some(&stop)).await? {
            (s, _) if (200..300).contains(&s) || s == 409 => Ok(()),
            (s, body) => Err(api::refused(s, &body, &format!("{} stopping the run", self.id))),
        }
    }

    /// The id of module `instrument` (a `kind` in deck slot `slot`) in our run `run`, loading it
    /// into the run the first time.
    pub(crate) async fn module_id(
        &self,
        session: &mut Session,
        run: &str,
        instrument: &str,
        kind: crate::codec::opentrons_module::ModuleKind,
        slot: u32,
        cancel: &Cancel,
    ) -> Result<String, InstrumentError> {
        if let Some(id) = session.modules.get(instrument) {
            return Ok(id.clone());
        }
        let robot = self.robot(session).await?;
        let load = api::Command::new(
            "loadModule",
            json!({"model": kind.model(), "location": {"slotName": robot.slot_name(slot)}}),
        );
        let result = self.command(session, run, &load, Intent::Protocol, cancel).await?;
        let module_id = result.get("moduleId").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
            InstrumentError::Protocol(format!("{instrument}: loadModule answered without a moduleId: {result}"))
        })?;
        session.modules.insert(instrument.to_string(), module_id.clone());
        Ok(module_id)
    }

    /// Plays a run (live commands are then `protocol` commands).
    pub(crate) async fn play(&self, run: &str) -> Result<(), InstrumentError> {
        let play = json!({"data": {"actionType": "play"}});
        self.call("POST", &format!("/runs/{run}/actions"), Some(&play), "playing the run").await?;
        Ok(())
    }

    /// A run of ours that takes commands: the current one while it runs, else a new one, played.
    pub(crate) async fn running_run(&self, session: &mut Session) -> Result<String, InstrumentError> {
        if let Some(run) = session.run.clone() {
            match self.run_status(&run).await {
                Ok(RunStatus::Running) => return Ok(run),
                Ok(RunStatus::Idle) => {
                    self.play(&run).await?;
                    return Ok(run);
                }
                Ok(s) if !s.is_terminal() => {
                    // Paused, in error recovery, door open: a person decides, not a module.
                    return Err(InstrumentError::Busy(format!(
                        "{}: our run {run} is {}; it takes module commands again once it runs",
                        self.id,
                        s.as_str()
                    )));
                }
                Ok(_) | Err(InstrumentError::Device { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let run = self.create_run(session).await?;
        self.play(&run).await?;
        Ok(run)
    }

    /// One exchange: the status and the JSON body of the reply.
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), HttpError> {
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
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, InstrumentError> {
        let (status, reply) = self.request(method, path, body).await?;
        if !(200..300).contains(&status) {
            return Err(api::refused(status, &reply, &format!("{} {what}", self.id)));
        }
        Ok(reply.get("data").cloned().unwrap_or(reply))
    }

    pub(crate) async fn robot(&self, session: &mut Session) -> Result<Robot, InstrumentError> {
        if let Some(r) = session.robot {
            return Ok(r);
        }
        let health = self.call("GET", "/health", None, "health").await?;
        let robot = Robot::from_model(health.get("robot_model").and_then(Value::as_str).unwrap_or(""))?;
        session.robot = Some(robot);
        Ok(robot)
    }

    pub(crate) async fn run_status(&self, run: &str) -> Result<RunStatus, InstrumentError> {
        let data = self.call("GET", &format!("/runs/{run}"), None, "run status").await?;
        api::run_status(&data)
    }

    /// Ends this driver's run, if it has one: stopped if it is still going, then no longer
    /// current, so the robot is free for the next run (ours or another client's).
    pub(crate) async fn close_run(&self, session: &mut Session) -> Result<(), InstrumentError> {
        let Some(run) = session.run.take() else { return Ok(()) };
        self.set_current(None);
        session.loaded = Loaded::default();
        session.modules.clear();
        session.channels.clear();
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
    pub(crate) async fn adopt_own_run(&self, session: &mut Session) -> Result<bool, InstrumentError> {
        let (status, runs) = self.request("GET", "/runs", None).await?;
        let current = runs.pointer("/links/current/href").and_then(Value::as_str).and_then(|h| h.rsplit('/').next());
        let Some(run) = current.filter(|_| (200..300).contains(&status)).map(str::to_string) else { return Ok(false) };
        let commands = Value::Array(self.commands(&run).await?);
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
    pub(crate) async fn command(
        &self,
        session: &mut Session,
        run: &str,
        cmd: &api::Command,
        intent: Intent,
        cancel: &Cancel,
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
        self.settle(run, state, cancel).await
    }

    /// Queues a command without waiting for it to run: the robot carries queued commands out in
    /// order. For an emergency stop, whose duty is to reach the robot at once, not to watch the
    /// module slow down.
    pub(crate) async fn enqueue(
        &self,
        session: &mut Session,
        run: &str,
        cmd: &api::Command,
        intent: Intent,
    ) -> Result<(), InstrumentError> {
        session.next_key += 1;
        let key = format!("{}-{}-{}", self.id, run, session.next_key);
        let path = format!("/runs/{run}/commands");
        match self.request("POST", &path, Some(&cmd.body(intent, &key))).await? {
            (status, _) if (200..300).contains(&status) => Ok(()),
            (status, reply) => Err(api::refused(status, &reply, &format!("{} {}", self.id, cmd.command_type))),
        }
    }

    /// Every command of a run, oldest first: the robot serves them a page at a time (20 around
    /// the current command unless asked), so this pages from the start.
    pub(crate) async fn commands(&self, run: &str) -> Result<Vec<Value>, InstrumentError> {
        const PAGE: usize = 200;
        let mut all: Vec<Value> = Vec::new();
        loop {
            let path = format!("/runs/{run}/commands?cursor={}&pageLength={PAGE}", all.len());
            let (status, reply) = self.request("GET", &path, None).await?;
            if !(200..300).contains(&status) {
                return Err(api::refused(status, &reply, &format!("{} listing commands", self.id)));
            }
            let page = reply.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
            let total = reply.pointer("/meta/totalLength").and_then(Value::as_u64).unwrap_or(0) as usize;
            let got = page.len();
            all.extend(page);
            if got == 0 || all.len() >= total {
                return Ok(all);
            }
        }
    }

    /// Looks a command up by our key in the run's command list (after a lost reply).
    pub(crate) async fn find_by_key(&self, run: &str, key: &str) -> Result<Option<CommandState>, InstrumentError> {
        let list = Value::Array(self.commands(run).await?);
        let found =
            list.as_array().and_then(|cs| cs.iter().find(|c| c.get("key").and_then(Value::as_str) == Some(key)));
        found.map(api::command_state).transpose()
    }

    /// Waits for a pending command and turns its end into a result.
    async fn settle(&self, run: &str, mut state: CommandState, cancel: &Cancel) -> Result<Value, InstrumentError> {
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
                    if let Err(e) = cancel.sleep(self.config.poll).await {
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

    pub(crate) fn set_current(&self, run: Option<String>) {
        if let Ok(mut c) = self.current.lock() {
            *c = run;
        }
    }

    /// Which of our pipettes carry a tip, by the run's own record of its commands.
    pub(crate) async fn tips(&self, run: &str) -> Result<std::collections::BTreeMap<String, bool>, InstrumentError> {
        let list = Value::Array(self.commands(run).await?);
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
