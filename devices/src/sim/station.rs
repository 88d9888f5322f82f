//! Simulated stations speaking LWSP/1: a sealer (seal/peel with a door), a centrifuge (spin with
//! a lid and a balance check), an incubator and a plate hotel (store/retrieve with capacity).

use super::{LineDevice, Response};
use crate::driver::station::StationKind;
use std::collections::{BTreeMap, BTreeSet};

/// The simulated station.
#[derive(Debug)]
pub struct StationSim {
    kind: StationKind,
    serial: String,
    capacity: usize,
    plates: BTreeSet<String>,
    sealed: BTreeSet<String>,
    temp: f64,
    rpm: f64,
    /// CO₂ of an incubator's atmosphere, %.
    pub co2: f64,
}

/// The room's temperature, where a station rests with its heater off.
const AMBIENT_C: f64 = 25.0;

impl StationSim {
    pub fn new(kind: StationKind, serial: &str, capacity: u32) -> Self {
        StationSim {
            kind,
            serial: serial.into(),
            capacity: capacity.max(1) as usize,
            plates: BTreeSet::new(),
            sealed: BTreeSet::new(),
            temp: AMBIENT_C,
            rpm: 0.0,
            co2: 0.0,
        }
    }

    fn ok(fields: &str) -> Response {
        Response::Reply(if fields.is_empty() { "OK\n".to_string() } else { format!("OK {fields}\n") }.into_bytes())
    }

    fn err(code: &str, message: &str) -> Response {
        Response::Reply(format!("ERR {code} {message}\n").into_bytes())
    }

    fn args(line: &str) -> BTreeMap<String, String> {
        line.split_whitespace()
            .skip(1)
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// An LWSP/1 error reply.
pub fn error_reply(_line: &str, code: &str) -> Vec<u8> {
    format!("ERR {code} injected fault\n").into_bytes()
}

impl LineDevice for StationSim {
    fn handle(&mut self, line: &str, _now: f64) -> Response {
        let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let a = Self::args(line);
        let number = |k: &str| a.get(k).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
        let plate = a.get("plate").cloned();
        use StationKind::*;
        match (self.kind, verb.as_str()) {
            (_, "ID") => {
                let model = match self.kind {
                    Sealer => "lw-sim-sealer",
                    Centrifuge => "lw-sim-centrifuge",
                    Incubator => "lw-sim-incubator",
                    Hotel => "lw-sim-hotel",
                };
                Self::ok(&format!("model={model} serial={} firmware=1.0", self.serial))
            }
            (_, "STATUS") => Self::ok(&format!(
                "state=idle temp={:.1} rpm={} co2={} plates={}",
                self.temp,
                self.rpm,
                self.co2,
                self.plates.len()
            )),
            (Sealer, "SEAL") => {
                let Some(p) = plate else { return Self::err("E04", "SEAL needs plate=NAME") };
                match number("temp") {
                    Some(t) if (100.0..=200.0).contains(&t) => {}
                    _ => return Self::err("E04", "temp must be 100 to 200 C"),
                }
                if !self.sealed.insert(p.clone()) {
                    return Self::err("E07", &format!("plate {p} is already sealed"));
                }
                Self::ok("")
            }
            (Sealer, "PEEL") => {
                let Some(p) = plate else { return Self::err("E04", "PEEL needs plate=NAME") };
                if !self.sealed.remove(&p) {
                    return Self::err("E08", &format!("plate {p} has no seal to peel"));
                }
                Self::ok("")
            }
            (Centrifuge, "SPIN") => match (number("g"), number("time")) {
                (Some(g), Some(t)) if g > 0.0 && g <= 3000.0 && t > 0.0 => Self::ok(""),
                _ => Self::err("E04", "SPIN needs g=1..3000 and time>0"),
            },
            (Incubator, "SET") => {
                // No temp: the heater off (ambient).
                match (a.contains_key("temp"), number("temp")) {
                    (false, _) => self.temp = AMBIENT_C,
                    (true, Some(t)) if (4.0..=50.0).contains(&t) => self.temp = t,
                    _ => return Self::err("E04", "temp must be 4 to 50 C"),
                }
                match (a.contains_key("co2"), number("co2")) {
                    (false, _) => self.co2 = 0.0,
                    (true, Some(c)) if (0.0..=20.0).contains(&c) => self.co2 = c,
                    _ => return Self::err("E04", "co2 must be 0 to 20 %"),
                }
                self.rpm = number("rpm").unwrap_or(0.0);
                Self::ok("")
            }
            (Incubator | Hotel, "STORE") => {
                let Some(p) = plate else { return Self::err("E04", "STORE needs plate=NAME") };
                if self.plates.len() >= self.capacity {
                    return Self::err("E09", "no free slot");
                }
                self.plates.insert(p);
                Self::ok(&format!("slot={}", self.plates.len()))
            }
            (Incubator | Hotel, "RETRIEVE") => {
                let Some(p) = plate else { return Self::err("E04", "RETRIEVE needs plate=NAME") };
                if !self.plates.remove(&p) {
                    return Self::err("E02", &format!("plate {p} is not stored here"));
                }
                Self::ok("")
            }
            _ => Self::err("E10", &format!("unknown verb {verb}")),
        }
    }

    fn busy_for(&self, line: &str) -> f64 {
        let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let time = Self::args(line).get("time").and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0).clamp(0.0, 86_400.0);
        match verb.as_str() {
            "SEAL" => time + 5.0,
            "PEEL" => 5.0,
            "SPIN" => time + 30.0,
            "STORE" | "RETRIEVE" => 8.0,
            _ => 0.0,
        }
    }
}
