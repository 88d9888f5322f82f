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
        "incubate" => &["labware", "temperature_c", "duration_s", "shake_rpm"],
        "shake" => &["labware", "rpm", "duration_s", "temperature_c"],
        "set_temperature" => &["labware", "temperature_c"],
        "set_shake_speed" => &["labware", "rpm"],
        "stop_shaking" | "stop_heating" => &[],
        "latch" => &["open"],
        _ => return None,
    })
}

/// A mapping checked against the server's definition.
#[derive(Debug, Clone)]
struct Bound {
    mapping: SilaCommand,
    service: String,
    command: fdl::Command,
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
                    "{id}: `{}` cannot be mapped to a SiLA command (mappable: prepare, pick_up_tip, aspirate, dispense, mix, blow_out, drop_tip, move_to, home, seal, peel, cover, uncover, centrifuge, incubate, shake, set_temperature, wait_for_temperature, set_shake_speed, stop_shaking, stop_heating, latch)",
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
                        "{id}: parameter {} of {} is a {t}; a mapping can fill String, Integer, Real and Boolean parameters",
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
            bound.insert(
                m.op.clone(),
                Bound { mapping: m.clone(), service: feature.service(), command: command.clone() },
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
        let DataType::Basic(basic) = el.data_type else {
            return Err(refused(format!("parameter {} is not of a basic type", el.identifier)));
        };
        let source = match (&p.from, &p.value) {
            (Some(field), _) => op.get(field).cloned().unwrap_or(serde_json::Value::Null),
            (None, Some(SilaConstant::Flag(v))) => serde_json::json!(v),
            (None, Some(SilaConstant::Number(v))) => serde_json::json!(v),
            (None, Some(SilaConstant::Text(v))) => serde_json::json!(v),
            (None, None) => serde_json::Value::Null,
        };
        let bad = |what: &str| InstrumentError::Validation {
            parameter: el.identifier.clone(),
            message: format!("{what} for {} of {} (from {source})", el.identifier, b.mapping.command),
        };
        let number = || source.as_f64().map(|v| v * p.scale + p.offset).ok_or_else(|| bad("a number is needed"));
        let value = match basic {
            Basic::Real => Value::Real(number()?),
            Basic::Integer => Value::Integer(number()?.round() as i64),
            Basic::Boolean => Value::Boolean(source.as_bool().ok_or_else(|| bad("true or false is needed"))?),
            Basic::String => match &source {
                serde_json::Value::String(s) => Value::String(s.clone()),
                serde_json::Value::Null => return Err(bad("a value is needed")),
                other => Value::String(other.to_string()),
            },
        };
        fields.0.push((i as u32 + 1, value.encode()));
    }
    Ok(fields)
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
        let params = parameters(&b, &json)?;
        self.cancel.reset();
        let me = self.clone();
        Ok(spawn(move |tx| async move {
            me.busy.store(true, Ordering::SeqCst);
            let mut client = FeatureClient::new(me.channel.clone(), &b.service);
            let command = b.mapping.command.clone();
            let call = async {
                if b.command.observable {
                    let progress = |f: f64| tx.progress(f, command.as_str());
                    client.observe::<Fields, Fields>(&command, params, &progress).await
                } else {
                    client.unary::<Fields, Fields>(&command, params).await
                }
            };
            let result = tokio::select! {
                r = call => r,
                _ = me.cancel.fired() => Err(InstrumentError::Cancelled),
            };
            me.busy.store(false, Ordering::SeqCst);
            let r = result?;
            tracing::debug!(instrument = %me.id, command = %command, responses = %responses(&b.command, &r), "SiLA command done");
            tx.progress(1.0, command.as_str());
            Ok(Outcome::default())
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
