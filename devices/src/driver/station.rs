//! Sealer, centrifuge, incubator and plate-hotel driver: Labwright's station line protocol
//! (LWSP/1, [`crate::codec::station`]) over serial. Sealing and spinning reply when done; an
//! incubator stores the plate, the driver waits the incubation time without holding the link
//! (so the other plates in a 12-plate incubator are served meanwhile), then retrieves it.

use super::{spawn, Cancel};
use crate::codec::station;
use crate::error::InstrumentError;
use crate::instrument::{unsupported, Execution, Identity, Instrument, Outcome, State, Status, TimeScale};
use crate::link::Link;
use protocols::plan::CommandOp;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Which kind of station.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StationKind {
    Sealer,
    Centrifuge,
    Incubator,
    Hotel,
}

impl StationKind {
    pub fn name(self) -> &'static str {
        match self {
            StationKind::Sealer => "a sealer",
            StationKind::Centrifuge => "a centrifuge",
            StationKind::Incubator => "an incubator",
            StationKind::Hotel => "a plate hotel",
        }
    }
}

/// Link timing.
#[derive(Debug, Clone)]
pub struct StationConfig {
    pub reply_timeout: Duration,
    pub scale: TimeScale,
    /// Sealing temperature, °C, and time, s.
    pub seal_c: f64,
    pub seal_s: f64,
}

impl StationConfig {
    pub fn new(scale: TimeScale) -> Self {
        StationConfig { reply_timeout: Duration::from_secs(10), scale, seal_c: 170.0, seal_s: 3.0 }
    }
}

#[derive(Debug)]
struct Inner {
    kind: StationKind,
    config: StationConfig,
    link: Mutex<Link>,
    cancel: Cancel,
}

/// One station.
#[derive(Debug, Clone)]
pub struct StationDriver {
    inner: Arc<Inner>,
}

impl StationDriver {
    pub fn new(kind: StationKind, link: Link, config: StationConfig) -> Self {
        StationDriver { inner: Arc::new(Inner { kind, config, link: Mutex::new(link), cancel: Cancel::default() }) }
    }

    /// One request; `device_s` is how long the device may take to answer (device time).
    pub async fn request(
        &self,
        verb: &str,
        args: &[(&str, String)],
        device_s: f64,
    ) -> Result<BTreeMap<String, String>, InstrumentError> {
        let mut link = self.inner.link.lock().await;
        link.send(&station::encode(verb, args)).await?;
        let within = self.inner.config.reply_timeout + self.inner.config.scale.wall(device_s * 1.5);
        link.read_reply(within, station::poll).await
    }
}

fn num(v: f64) -> String {
    format!("{v}")
}

#[async_trait::async_trait]
impl Instrument for StationDriver {
    async fn identify(&self) -> Result<Identity, InstrumentError> {
        let r = self.request("ID", &[], 0.0).await?;
        let get = |k: &str| r.get(k).cloned().unwrap_or_default();
        Ok(Identity { model: get("model"), serial: get("serial"), firmware: get("firmware") })
    }

    async fn start(&self, op: &CommandOp) -> Result<Execution, InstrumentError> {
        use CommandOp::*;
        let kind = self.inner.kind;
        let ok = matches!(
            (kind, op),
            (StationKind::Sealer, Seal { .. } | Peel { .. })
                | (StationKind::Centrifuge, Centrifuge { .. })
                | (StationKind::Incubator, Incubate { .. })
        );
        if !ok {
            return Err(unsupported(kind.name(), op));
        }
        if let Centrifuge { g, duration_s, .. } = op {
            if !(*g > 0.0 && *duration_s > 0.0) {
                return Err(InstrumentError::Validation {
                    parameter: "g".into(),
                    message: format!("spin at {g} g for {duration_s} s is not a spin"),
                });
            }
        }
        let me = self.clone();
        let op = op.clone();
        me.inner.cancel.reset();
        Ok(spawn(move |tx| async move {
            let cfg = me.inner.config.clone();
            match op {
                Seal { labware } => {
                    me.request(
                        "SEAL",
                        &[("plate", labware), ("temp", num(cfg.seal_c)), ("time", num(cfg.seal_s))],
                        cfg.seal_s + 10.0,
                    )
                    .await?;
                }
                Peel { labware } => {
                    me.request("PEEL", &[("plate", labware)], 10.0).await?;
                }
                Centrifuge { labware, g, duration_s } => {
                    me.request(
                        "SPIN",
                        &[("plate", labware), ("g", num(g)), ("time", num(duration_s))],
                        duration_s + 60.0,
                    )
                    .await?;
                }
                Incubate { labware, temperature_c, duration_s, shake_rpm, co2_percent } => {
                    // No `temp`: ambient (the heater off).
                    let mut set = Vec::new();
                    if let Some(t) = temperature_c {
                        set.push(("temp", num(t)));
                    }
                    if let Some(rpm) = shake_rpm {
                        set.push(("rpm", num(rpm)));
                    }
                    if let Some(c) = co2_percent {
                        set.push(("co2", num(c)));
                    }
                    let at = temperature_c.map_or("ambient temperature".to_string(), |t| format!("{t} °C"));
                    me.request("SET", &set, 0.0).await?;
                    me.request("STORE", &[("plate", labware.clone())], 20.0).await?;
                    let steps = 20;
                    for i in 0..steps {
                        tx.progress(i as f64 / steps as f64, format!("incubating at {at}"));
                        me.inner.cancel.sleep(cfg.scale.wall(duration_s / steps as f64)).await?;
                    }
                    me.request("RETRIEVE", &[("plate", labware)], 20.0).await?;
                }
                other => return Err(unsupported(kind.name(), &other)),
            }
            Ok(Outcome::default())
        }))
    }

    async fn status(&self) -> Result<Status, InstrumentError> {
        let r = self.request("STATUS", &[], 0.0).await?;
        let state = match r.get("state").map(String::as_str) {
            Some("idle") => State::Idle,
            Some("busy") => State::Busy,
            Some(other) => State::Fault(other.to_string()),
            None => return Err(InstrumentError::Protocol("STATUS reply without state".into())),
        };
        let temperature_c = r.get("temp").and_then(|t| t.parse().ok());
        Ok(Status { state, temperature_c, detail: in_words(r.iter()) })
    }

    async fn abort(&self) -> Result<(), InstrumentError> {
        self.inner.cancel.fire();
        Ok(())
    }
}

/// The station's `STATUS` fields in words for the people at the bench (the temperature has its
/// own column): what it holds, and shaking or CO₂ only when on; a field it does not know is given
/// as sent.
fn in_words<'a>(fields: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    let mut said = Vec::new();
    for (k, v) in fields {
        let n: Option<f64> = v.parse().ok();
        said.push(match (k.as_str(), n) {
            ("state" | "temp", _) | ("rpm" | "co2", Some(0.0)) => continue,
            ("plates", Some(0.0)) => "empty".to_string(),
            ("plates", Some(1.0)) => "1 plate inside".to_string(),
            ("plates", Some(n)) => format!("{n} plates inside"),
            ("rpm", Some(n)) => format!("shaking at {n} rpm"),
            ("co2", Some(n)) => format!("CO₂ at {n} %"),
            _ => format!("{k} {v}"),
        });
    }
    said.join(", ")
}
