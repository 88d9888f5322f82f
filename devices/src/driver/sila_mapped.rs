//! Any SiLA 2 server as an instrument: `lab.toml` maps plan commands to commands of the features
//! the server implements (which feature, command, where each parameter's value comes from, unit
//! conversion), and the driver calls them without generated code ([`crate::sila::dynamic`]).
//!
//! At connect the mapping is checked against the server's own word: `Get_ImplementedFeatures`
//! must list each mapped feature, and its definition (`GetFeatureDefinition`) must have the
//! command, every parameter the mapping names and no parameter the mapping leaves out. A mistake
//! is a startup error naming the mapping and what the server has. Observable commands report the
//! server's progress; defined execution errors keep their identifiers.

use super::{spawn, Cancel};
use crate::error::InstrumentError;
use crate::instrument::{unsupported, Execution, Identity, Instrument, Outcome, State, Status};
use crate::sila::dynamic::{Fields, Value};
use crate::sila::fdl::{self, Basic, DataType};
use crate::sila::{FeatureClient, SILA_SERVICE};
use labware::site::{SilaCommand, SilaConstant};
use protocols::plan::CommandOp;
use protos::sila2::framework::String as SilaString;
use protos::sila2::silaservice as ss;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tonic::transport::Channel;

/// The fields of the plan commands a mapping may carry out, by op name. `prepare` is the deck
/// of a liquid-handling task, sent before its first command: `deck` is its labware as JSON,
/// `[{"slot": 1, "name": "plate", "load_name": "corning_96_wellplate_360ul_flat"}, …]`.
pub fn mappable_fields(op: &str) -> Option<&'static [&'static str]> {
    Some(match op {
        "prepare" => &["deck"],
        "pick_up_tip" => &["pipette", "rack", "well"],
        "aspirate" | "dispense" => &["pipette", "labware", "well", "volume_ul"],
        "mix" => &["pipette", "labware", "well", "volume_ul", "times"],
        "blow_out" => &["pipette", "labware", "well"],
        "drop_tip" => &["pipette"],
        "move_to" => &["pipette", "labware", "well"],
        "home" => &[],
        "seal" | "peel" | "cover" | "uncover" | "wait_for_temperature" => &["labware"],
        "centrifuge" => &["labware", "g", "duration_s"],
        "incubate" => &["labware", "temperature_c", "duration_s", "shake_rpm", "co2_percent"],
        "shake" => &["labware", "rpm", "duration_s", "temperature_c"],
        "set_temperature" => &["labware", "temperature_c"],
        "set_shake_speed" => &["labware", "rpm"],
        "stop_shaking" | "stop_heating" => &[],
        "latch" => &["open"],
        // A single-wavelength command is called once per wavelength (`wavelength_nm`); a command
        // taking a list of wavelengths, once (`wavelengths_nm`).
        "read_absorbance" => &["labware", "wells", "wavelength_nm", "wavelengths_nm"],
        "read_fluorescence" => &["labware", "wells", "excitation_nm", "emission_nm"],
        "read_luminescence" => &["labware", "wells"],
        _ => return None,
    })
}

/// A mapping checked against the server's definition.
#[derive(Debug, Clone)]
struct Bound {
    mapping: SilaCommand,
    service: String,
    command: fdl::Command,
    /// Reads: the response's field number and type.
    values: Option<(u32, DataType)>,
}

/// One instrument behind a SiLA 2 server, driven through its mapping.
#[derive(Debug, Clone)]
pub struct MappedSilaDriver {
    id: String,
    slots: u32,
    channel: Channel,
    bound: Arc<BTreeMap<String, Bound>>,
    busy: Arc<AtomicBool>,
    cancel: Arc<Cancel>,
}

fn refused(message: String) -> InstrumentError {
    InstrumentError::Validation { parameter: "sila".into(), message }
}

impl MappedSilaDriver {
    /// Reads the server's features and checks the instrument's mapping against them.
    pub async fn connect(instrument: &labware::site::Instrument, channel: Channel) -> Result<Self, InstrumentError> {
        let id = &instrument.id;
        let mut service = FeatureClient::new(channel.clone(), SILA_SERVICE);
        let implemented: ss::GetImplementedFeaturesResponses =
            service.unary("Get_ImplementedFeatures", ss::GetImplementedFeaturesParameters {}).await?;
        let implemented: Vec<String> = implemented.implemented_features.into_iter().map(|f| f.value).collect();
        let mut features: BTreeMap<String, fdl::Feature> = BTreeMap::new();
        let mut bound = BTreeMap::new();
        for m in &instrument.sila {
            let Some(fields) = mappable_fields(&m.op) else {
                return Err(refused(format!(
                    "{id}: `{}` cannot be mapped to a SiLA command (mappable: prepare, pick_up_tip, aspirate, dispense, mix, blow_out, drop_tip, move_to, home, seal, peel, cover, uncover, centrifuge, incubate, shake, set_temperature, wait_for_temperature, set_shake_speed, stop_shaking, stop_heating, latch, read_absorbance, read_fluorescence, read_luminescence)",
                    m.op
                )));
            };
            if !implemented.iter().any(|f| f.eq_ignore_ascii_case(&m.feature)) {
                return Err(refused(format!(
                    "{id}: `{}` is mapped to feature {}, which the server does not implement (it implements {})",
                    m.op,
                    m.feature,
                    implemented.join(", ")
                )));
            }
            if !features.contains_key(&m.feature) {
                let r: ss::GetFeatureDefinitionResponses = service
                    .unary(
                        "GetFeatureDefinition",
                        ss::GetFeatureDefinitionParameters {
                            feature_identifier: Some(SilaString { value: m.feature.clone() }),
                        },
                    )
                    .await?;
                let xml = r.feature_definition.map(|s| s.value).unwrap_or_default();
                let f = fdl::parse(&xml).map_err(|e| InstrumentError::Protocol(format!("{id}: {}: {e}", m.feature)))?;
                features.insert(m.feature.clone(), f);
            }
            let Some(feature) = features.get(&m.feature) else { continue };
            let Some(command) = feature.command(&m.command) else {
                let names: Vec<&str> = feature.commands.iter().map(|c| c.identifier.as_str()).collect();
                return Err(refused(format!(
                    "{id}: `{}` is mapped to command {} of {}, which has no such command (it has {})",
                    m.op,
                    m.command,
                    m.feature,
                    names.join(", ")
                )));
            };
            let names: Vec<&str> = command.parameters.iter().map(|p| p.identifier.as_str()).collect();
            for p in &m.parameters {
                let Some(el) = command.parameters.iter().find(|e| e.identifier == p.name) else {
                    return Err(refused(format!(
                        "{id}: the mapping of `{}` names parameter {} of {}, which has none such (it has {})",
                        m.op,
                        p.name,
                        m.command,
                        names.join(", ")
                    )));
                };
                if let DataType::Other(t) = &el.data_type {
                    return Err(refused(format!(
                        "{id}: parameter {} of {} is a {t}; a mapping can fill String, Integer, Real and Boolean parameters and lists of them",
                        p.name, m.command
                    )));
                }
                if let Some(field) = &p.from {
                    if !fields.contains(&field.as_str()) {
                        return Err(refused(format!(
                            "{id}: parameter {} of {} takes `{field}`, which `{}` does not have (it has {})",
                            p.name,
                            m.command,
                            m.op,
                            fields.join(", ")
                        )));
                    }
                }
            }
            for el in &command.parameters {
                if !m.parameters.iter().any(|p| p.name == el.identifier) {
                    return Err(refused(format!(
                        "{id}: parameter {} of {} is not given by the mapping of `{}`; map it with from = \"…\" or value = …",
                        el.identifier, m.command, m.op
                    )));
                }
            }
            let values = match &m.response {
                None => None,
                Some(name) => {
                    let found = command.responses.iter().enumerate().find(|(_, r)| &r.identifier == name);
                    let Some((i, r)) = found else {
                        let names: Vec<&str> = command.responses.iter().map(|r| r.identifier.as_str()).collect();
                        return Err(refused(format!(
                            "{id}: the mapping of `{}` takes its values from response {name} of {}, which has none such (it has {})",
                            m.op,
                            m.command,
                            names.join(", ")
                        )));
                    };
                    if !matches!(
                        r.data_type,
                        DataType::List(Basic::Real | Basic::Integer) | DataType::Basic(Basic::Real | Basic::Integer)
                    ) {
                        return Err(refused(format!(
                            "{id}: response {name} of {} is a {}; a read's values must be numbers (a Real or Integer, or a list of them)",
                            m.command, r.data_type
                        )));
                    }
                    Some((i as u32 + 1, r.data_type.clone()))
                }
            };
            bound.insert(
                m.op.clone(),
                Bound { mapping: m.clone(), service: feature.service(), command: command.clone(), values },
            );
        }
        Ok(MappedSilaDriver {
            id: id.clone(),
            slots: instrument.deck_slots.unwrap_or(11),
            channel,
            bound: Arc::new(bound),
            busy: Arc::default(),
            cancel: Arc::default(),
        })
    }
}

/// The parameters of one call: each in FDL order, from the plan command or a constant.
fn parameters(b: &Bound, op: &serde_json::Value) -> Result<Fields, InstrumentError> {
    let mut fields = Fields::default();
    for (i, el) in b.command.parameters.iter().enumerate() {
        let Some(p) = b.mapping.parameters.iter().find(|p| p.name == el.identifier) else {
            return Err(refused(format!("parameter {} is not mapped", el.identifier)));
        };
        let (basic, list) = match el.data_type {
            DataType::Basic(b) => (b, false),
            DataType::List(b) => (b, true),
            DataType::Other(_) => {
                return Err(refused(format!("parameter {} is not of a basic type or a list", el.identifier)))
            }
        };
        let constant = |c: &SilaConstant| match c {
            SilaConstant::Flag(v) => serde_json::json!(v),
            SilaConstant::Number(v) => serde_json::json!(v),
            SilaConstant::Text(v) => serde_json::json!(v),
        };
        let source = match (&p.from, &p.value) {
            (Some(field), _) => match op.get(field).filter(|v| !v.is_null()) {
                Some(v) => v.clone(),
                None => p.default.as_ref().map(constant).unwrap_or(serde_json::Value::Null),
            },
            (None, Some(c)) => constant(c),
            (None, None) => serde_json::Value::Null,
        };
        let bad = |what: &str| InstrumentError::Validation {
            parameter: el.identifier.clone(),
            message: format!("{what} for {} of {} (from {source})", el.identifier, b.mapping.command),
        };
        let one = |source: &serde_json::Value| -> Result<Value, InstrumentError> {
            let number = || source.as_f64().map(|v| v * p.scale + p.offset).ok_or_else(|| bad("a number is needed"));
            Ok(match basic {
                Basic::Real => Value::Real(number()?),
                Basic::Integer => Value::Integer(number()?.round() as i64),
                Basic::Boolean => Value::Boolean(source.as_bool().ok_or_else(|| bad("true or false is needed"))?),
                Basic::String => match source {
                    serde_json::Value::String(s) => Value::String(s.clone()),
                    serde_json::Value::Null => return Err(bad("a value is needed")),
                    other => Value::String(other.to_string()),
                },
            })
        };
        match (list, &source) {
            (true, serde_json::Value::Array(items)) => {
                for item in items {
                    fields.0.push((i as u32 + 1, one(item)?.encode()));
                }
            }
            (true, serde_json::Value::Null) => return Err(bad("a list is needed")),
            (true, single) => fields.0.push((i as u32 + 1, one(single)?.encode())),
            (false, serde_json::Value::Array(items)) if items.len() == 1 => {
                fields.0.push((i as u32 + 1, one(&items[0])?.encode()))
            }
            (false, serde_json::Value::Array(_)) => {
                return Err(bad("one value is needed, not a list (map a List parameter, or a single well)"))
            }
            (false, single) => fields.0.push((i as u32 + 1, one(single)?.encode())),
        }
    }
    Ok(fields)
}

impl MappedSilaDriver {
    /// A shake at a temperature on a server whose shake takes none: heat and wait, shake, stop
    /// heating, through the mapped `set_temperature`, `wait_for_temperature` and `stop_heating`.
    fn heated(
        &self,
        name: &str,
        b: &Bound,
        json: &serde_json::Value,
    ) -> Result<Option<Vec<(Bound, Fields)>>, InstrumentError> {
        let takes = |b: &Bound, field: &str| b.mapping.parameters.iter().any(|p| p.from.as_deref() == Some(field));
        let Some(t) = json.get("temperature_c").filter(|t| !t.is_null()) else { return Ok(None) };
        if name != "shake" || takes(b, "temperature_c") {
            return Ok(None);
        }
        let (Some(set), Some(wait), Some(stop)) =
            (self.bound.get("set_temperature"), self.bound.get("wait_for_temperature"), self.bound.get("stop_heating"))
        else {
            return Ok(None);
        };
        let heat = serde_json::json!({"op": "set_temperature", "labware": json.get("labware"), "temperature_c": t});
        let plain = serde_json::json!({"op": "stop_heating"});
        Ok(Some(vec![
            (set.clone(), parameters(set, &heat)?),
            (wait.clone(), parameters(wait, &heat)?),
            (b.clone(), parameters(b, json)?),
            (stop.clone(), parameters(stop, &plain)?),
        ]))
    }

    /// A setting the plan command carries that the mapping would drop is refused, never
    /// silently left out.
    fn nothing_ignored(&self, name: &str, b: &Bound, json: &serde_json::Value) -> Result<(), InstrumentError> {
        for field in ["temperature_c", "shake_rpm", "co2_percent"] {
            let Some(v) = json.get(field).filter(|v| !v.is_null()) else { continue };
            if !b.mapping.parameters.iter().any(|p| p.from.as_deref() == Some(field)) {
                return Err(InstrumentError::Validation {
                    parameter: field.into(),
                    message: format!(
                        "{}: the mapping of `{name}` ({}) takes no {field}, and this step asks for {v}; map it to a parameter{}",
                        self.id,
                        b.mapping.command,
                        if name == "shake" { ", or map set_temperature, wait_for_temperature and stop_heating" } else { "" }
                    ),
                });
            }
        }
        Ok(())
    }

    /// Calls each command with its parameters, in order; the replies in the same order.
    async fn call_all(
        &self,
        calls: Vec<(Bound, Fields)>,
        tx: &crate::instrument::ExecutionSender,
    ) -> Result<Vec<Fields>, InstrumentError> {
        let n = calls.len() as f64;
        let mut replies = Vec::new();
        for (i, (b, params)) in calls.into_iter().enumerate() {
            let mut client = FeatureClient::new(self.channel.clone(), &b.service);
            let command = b.mapping.command.as_str();
            let call = async {
                if b.command.observable {
                    let progress = |f: f64| tx.progress((i as f64 + f) / n, command);
                    client.observe::<Fields, Fields>(command, params, &progress).await
                } else {
                    client.unary::<Fields, Fields>(command, params).await
                }
            };
            let r = tokio::select! {
                r = call => r?,
                _ = self.cancel.fired() => return Err(InstrumentError::Cancelled),
            };
            tracing::debug!(instrument = %self.id, command, responses = %responses(&b.command, &r), "SiLA command done");
            replies.push(r);
        }
        Ok(replies)
    }
}

/// What a read asks for, and how its values come back.
#[derive(Debug, Clone)]
struct Read {
    labware: String,
    kind: &'static str,
    wells: Vec<String>,
    wavelengths_nm: Vec<f64>,
}

impl Read {
    fn of(op: &CommandOp) -> Option<Read> {
        let (labware, kind, wells, wavelengths_nm) = match op {
            CommandOp::ReadAbsorbance { labware, wells, wavelengths_nm } => {
                (labware, "absorbance", wells, wavelengths_nm.clone())
            }
            CommandOp::ReadFluorescence { labware, wells, excitation_nm, emission_nm } => {
                (labware, "fluorescence", wells, vec![*excitation_nm, *emission_nm])
            }
            CommandOp::ReadLuminescence { labware, wells } => (labware, "luminescence", wells, Vec::new()),
            _ => return None,
        };
        Some(Read { labware: labware.clone(), kind, wells: wells.clone(), wavelengths_nm })
    }

    /// The values of every reply as one measurement, well-major (each well's wavelengths
    /// together), checked against the number of wells.
    fn measurement(
        self,
        b: &Bound,
        replies: &[Fields],
        per_wavelength: bool,
    ) -> Result<crate::instrument::Measurement, InstrumentError> {
        let Some((tag, data_type)) = &b.values else {
            return Err(refused(format!("the mapping of `read_{}` names no response", self.kind)));
        };
        let basic = match data_type {
            DataType::List(basic) | DataType::Basic(basic) => *basic,
            DataType::Other(_) => Basic::Real,
        };
        let mut lists = Vec::new();
        for r in replies {
            let values: Vec<f64> = r
                .all(*tag)
                .map(|bytes| match Value::decode(basic, bytes) {
                    Ok(Value::Real(v)) => Ok(v),
                    Ok(Value::Integer(v)) => Ok(v as f64),
                    Ok(other) => Err(InstrumentError::Protocol(format!("a value that is not a number: {other}"))),
                    Err(e) => Err(InstrumentError::Protocol(format!("response {tag}: {e}"))),
                })
                .collect::<Result<_, _>>()?;
            lists.push(values);
        }
        let per_well = if self.kind == "absorbance" { self.wavelengths_nm.len().max(1) } else { 1 };
        let values: Vec<f64> = if per_wavelength {
            if let Some(bad) = lists.iter().find(|l| l.len() != self.wells.len()) {
                return Err(InstrumentError::Protocol(format!(
                    "{} returned {} values for {} wells",
                    b.mapping.command,
                    bad.len(),
                    self.wells.len()
                )));
            }
            (0..self.wells.len()).flat_map(|w| lists.iter().map(move |l| l[w])).collect()
        } else {
            let all: Vec<f64> = lists.into_iter().flatten().collect();
            if all.len() != self.wells.len() * per_well {
                return Err(InstrumentError::Protocol(format!(
                    "{} returned {} values for {} wells × {per_well}",
                    b.mapping.command,
                    all.len(),
                    self.wells.len()
                )));
            }
            all
        };
        Ok(crate::instrument::Measurement {
            labware: self.labware,
            kind: self.kind.into(),
            wells: self.wells,
            wavelengths_nm: self.wavelengths_nm,
            values,
            unit: b.mapping.unit.clone().unwrap_or_default(),
        })
    }
}

/// The responses in words, for the log.
fn responses(command: &fdl::Command, r: &Fields) -> String {
    command
        .responses
        .iter()
        .enumerate()
        .map(|(i, el)| {
            let v = match (&el.data_type, r.get(i as u32 + 1)) {
                (DataType::Basic(b), Some(bytes)) => Value::decode(*b, bytes).map_or("?".into(), |v| v.to_string()),
                _ => "…".into(),
            };
            format!("{}={v}", el.identifier)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait::async_trait]
impl Instrument for MappedSilaDriver {
    async fn identify(&self) -> Result<Identity, InstrumentError> {
        crate::sila::identify(self.channel.clone()).await
    }

    /// Sends the task's deck through the mapped `prepare` command, if there is one.
    async fn prepare(&self, plan: &protocols::plan::RunPlan) -> Result<(), InstrumentError> {
        let Some(b) = self.bound.get("prepare") else { return Ok(()) };
        let deck = crate::deck::Deck::for_plan(plan, &labware::Library::shipped(), self.slots)
            .map_err(|m| InstrumentError::Validation { parameter: "labware".into(), message: m })?;
        let items: Vec<serde_json::Value> = deck
            .items
            .iter()
            .map(|p| serde_json::json!({"slot": p.slot, "name": p.name, "load_name": p.def.load_name}))
            .collect();
        let op = serde_json::json!({"op": "prepare", "deck": serde_json::Value::Array(items).to_string()});
        let params = parameters(b, &op)?;
        let mut client = FeatureClient::new(self.channel.clone(), &b.service);
        if b.command.observable {
            client.observe::<Fields, Fields>(&b.mapping.command, params, &|_| {}).await?;
        } else {
            client.unary::<Fields, Fields>(&b.mapping.command, params).await?;
        }
        Ok(())
    }

    async fn start(&self, op: &CommandOp) -> Result<Execution, InstrumentError> {
        let json = serde_json::to_value(op).map_err(|e| InstrumentError::Protocol(e.to_string()))?;
        let name = json.get("op").and_then(|o| o.as_str()).unwrap_or("?").to_string();
        let Some(b) = self.bound.get(&name).cloned() else {
            return Err(unsupported(&format!("{} (its SiLA mapping has no `{name}`)", self.id), op));
        };
        let read = Read::of(op);
        // One call, or one per wavelength when the command takes a single wavelength.
        let per_wavelength = b.mapping.parameters.iter().any(|p| p.from.as_deref() == Some("wavelength_nm"));
        let calls: Vec<(Bound, Fields)> = match (&read, per_wavelength) {
            (Some(r), true) => r
                .wavelengths_nm
                .iter()
                .map(|wl| {
                    let mut one = json.clone();
                    one["wavelength_nm"] = serde_json::json!(wl);
                    Ok((b.clone(), parameters(&b, &one)?))
                })
                .collect::<Result<_, InstrumentError>>()?,
            _ => match self.heated(&name, &b, &json)? {
                Some(sequence) => sequence,
                None => {
                    self.nothing_ignored(&name, &b, &json)?;
                    vec![(b.clone(), parameters(&b, &json)?)]
                }
            },
        };
        self.cancel.reset();
        let me = self.clone();
        Ok(spawn(move |tx| async move {
            me.busy.store(true, Ordering::SeqCst);
            let result = me.call_all(calls, &tx).await;
            me.busy.store(false, Ordering::SeqCst);
            let replies = result?;
            tx.progress(1.0, b.mapping.command.as_str());
            match read {
                None => Ok(Outcome::default()),
                Some(r) => r.measurement(&b, &replies, per_wavelength).map(|m| Outcome { measurements: vec![m] }),
            }
        }))
    }

    async fn status(&self) -> Result<Status, InstrumentError> {
        let mut svc = FeatureClient::new(self.channel.clone(), SILA_SERVICE);
        let n: ss::GetServerNameResponses = svc.unary("Get_ServerName", ss::GetServerNameParameters {}).await?;
        let busy = self.busy.load(Ordering::SeqCst);
        let ops: Vec<&str> = self.bound.keys().map(String::as_str).collect();
        Ok(Status {
            state: if busy { State::Busy } else { State::Idle },
            temperature_c: None,
            detail: format!("SiLA server {} ({})", n.server_name.map(|s| s.value).unwrap_or_default(), ops.join(", ")),
        })
    }

    async fn abort(&self) -> Result<(), InstrumentError> {
        self.cancel.fire();
        Ok(())
    }
}
