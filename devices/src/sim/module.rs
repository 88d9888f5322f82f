//! Simulated Opentrons modules: the firmware side of the module G-code dialects, with
//! temperatures and shaker speed that ramp in device time and a labware latch.

use super::{LineDevice, Response};
use crate::codec::module::Dialect;

/// Heating/cooling rate of the simulated block, °C per device second.
const RAMP_C_PER_S: f64 = 0.5;
/// Shaker acceleration, rpm per device second.
const RAMP_RPM_PER_S: f64 = 500.0;
/// Room temperature.
const AMBIENT_C: f64 = 23.0;

/// A value that moves towards its target at a fixed rate.
#[derive(Debug, Clone, Copy)]
struct Ramp {
    from: f64,
    since: f64,
    target: Option<f64>,
    rate: f64,
    rest: f64,
}

impl Ramp {
    fn new(rest: f64, rate: f64) -> Self {
        Ramp { from: rest, since: 0.0, target: None, rate, rest }
    }

    fn at(&self, now: f64) -> f64 {
        let goal = self.target.unwrap_or(self.rest);
        let dt = (now - self.since).max(0.0);
        let step = self.rate * dt;
        if (goal - self.from).abs() <= step {
            goal
        } else {
            self.from + step * (goal - self.from).signum()
        }
    }

    fn set(&mut self, target: Option<f64>, now: f64) {
        self.from = self.at(now);
        self.since = now;
        self.target = target;
    }
}

/// One simulated module.
#[derive(Debug)]
pub struct ModuleSim {
    dialect: Dialect,
    temperature: Ramp,
    lid_temperature: Ramp,
    speed: Ramp,
    latch_closed: bool,
    lid_open: bool,
    serial: String,
}

impl ModuleSim {
    pub fn new(dialect: Dialect, serial: &str) -> Self {
        ModuleSim {
            dialect,
            temperature: Ramp::new(AMBIENT_C, RAMP_C_PER_S),
            lid_temperature: Ramp::new(AMBIENT_C, RAMP_C_PER_S),
            speed: Ramp::new(0.0, RAMP_RPM_PER_S),
            latch_closed: false,
            lid_open: false,
            serial: serial.into(),
        }
    }

    fn ok(&self, echo: &str, fields: &str) -> Response {
        let body = match (self.dialect, fields.is_empty()) {
            (Dialect::TemperatureModule, true) => String::new(),
            (Dialect::TemperatureModule, false) => format!("{fields}\r\n\r\n"),
            (_, true) => format!("{echo} OK\n"),
            (_, false) => format!("{echo} {fields} OK\n"),
        };
        let ack = if self.dialect == Dialect::TemperatureModule { "ok\r\nok\r\n" } else { "" };
        Response::Reply(format!("{body}{ack}").into_bytes())
    }

    fn err(&self, code: &str, text: &str) -> Response {
        Response::Reply(error_reply_for(self.dialect, &format!("{code}:{text}")))
    }

    fn param(line: &str, letter: char) -> Option<Result<f64, ()>> {
        line.split_whitespace().skip(1).find(|t| t.starts_with(letter)).map(|t| t[1..].parse::<f64>().map_err(|_| ()))
    }
}

/// Writes an error in the dialect's syntax.
pub fn error_reply_for(dialect: Dialect, text: &str) -> Vec<u8> {
    match dialect {
        Dialect::TemperatureModule => format!("error: {text}\r\n\r\nok\r\nok\r\n").into_bytes(),
        _ => format!("{text}\n").into_bytes(),
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("none".to_string(), |x| format!("{x:.1}"))
}

impl LineDevice for ModuleSim {
    fn handle(&mut self, line: &str, now: f64) -> Response {
        let gcode = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let hs = self.dialect == Dialect::HeaterShaker;
        let tc = self.dialect == Dialect::ThermocyclerGen2;
        let s = Self::param(line, 'S');
        match gcode.as_str() {
            "M115" => {
                let fields = match self.dialect {
                    Dialect::HeaterShaker => format!("FW:lw-sim-1.0 HW:heaterShakerModuleV1 SerialNo:{}", self.serial),
                    Dialect::ThermocyclerGen2 => {
                        format!("FW:lw-sim-1.0 HW:thermocyclerModuleV2 SerialNo:{}", self.serial)
                    }
                    Dialect::TemperatureModule => {
                        format!("serial:{} model:temp_deck_v20 version:lw-sim-1.0", self.serial)
                    }
                };
                self.ok("M115", &fields)
            }
            "M104" => match s {
                Some(Ok(t)) => {
                    let (lo, hi) = if tc {
                        (0.0, 99.0)
                    } else if hs {
                        (0.0, 95.0)
                    } else {
                        (-9.0, 99.0)
                    };
                    if !(lo..=hi).contains(&t) {
                        return if tc {
                            self.err("ERR407", "thermal:Invalid target temperature")
                        } else {
                            self.err("ERR212", "heater:control constant out of range")
                        };
                    }
                    self.temperature.set(Some(t), now);
                    self.ok("M104", "")
                }
                _ => self.err("ERR003", "unhandled gcode"),
            },
            "M105" => {
                let c = self.temperature.at(now);
                let t = self.temperature.target;
                match self.dialect {
                    Dialect::HeaterShaker => self.ok("M105", &format!("C:{c:.1} T:{}", fmt_opt(t))),
                    Dialect::ThermocyclerGen2 => {
                        self.ok("M105", &format!("T:{} C:{c:.1} H:none Total_H:none", fmt_opt(t)))
                    }
                    Dialect::TemperatureModule => self.ok("M105", &format!("T:{} C:{c:.1}", fmt_opt(t))),
                }
            }
            "M106" if hs => {
                self.temperature.set(None, now);
                self.ok("M106", "")
            }
            "M18" => {
                self.temperature.set(None, now);
                self.lid_temperature.set(None, now);
                self.ok("M18", "")
            }
            "M14" if tc => {
                self.temperature.set(None, now);
                self.ok("M14", "")
            }
            "M140" if tc => match s {
                Some(Ok(t)) => {
                    self.lid_temperature.set(Some(t), now);
                    self.ok("M140", "")
                }
                _ => self.err("ERR003", "unhandled gcode"),
            },
            "M141" if tc => {
                let c = self.lid_temperature.at(now);
                self.ok("M141", &format!("T:{} C:{c:.1}", fmt_opt(self.lid_temperature.target)))
            }
            "M108" if tc => {
                self.lid_temperature.set(None, now);
                self.ok("M108", "")
            }
            "M126" if tc => {
                self.lid_open = true;
                self.ok("M126", "")
            }
            "M127" if tc => {
                self.lid_open = false;
                self.ok("M127", "")
            }
            "M119" if tc => {
                let lid = if self.lid_open { "open" } else { "closed" };
                self.ok("M119", &format!("Lid:{lid}"))
            }
            "M3" if hs => match s {
                Some(Ok(0.0)) => {
                    self.speed.set(None, now);
                    self.ok("M3", "")
                }
                Some(Ok(rpm)) if (200.0..=3000.0).contains(&rpm) => {
                    if !self.latch_closed {
                        return self.err("ERR126", "main motor:plate lock not closed (required)");
                    }
                    self.speed.set(Some(rpm), now);
                    self.ok("M3", "")
                }
                Some(Ok(_)) => self.err("ERR120", "main motor:illegal speed"),
                _ => self.err("ERR003", "unhandled gcode"),
            },
            "M123" if hs => {
                let c = self.speed.at(now).round();
                let t = self.speed.target.unwrap_or(0.0);
                self.ok("M123", &format!("C:{c} T:{t}"))
            }
            "G28" if hs => {
                self.speed.set(None, now);
                self.ok("G28", "")
            }
            "M242" if hs => {
                if self.speed.at(now) > 0.0 {
                    return self.err("ERR124", "main motor:not stopped (required)");
                }
                self.latch_closed = false;
                self.ok("M242", "")
            }
            "M243" if hs => {
                self.latch_closed = true;
                self.ok("M243", "")
            }
            "M241" if hs => {
                let st = if self.latch_closed { "IDLE_CLOSED" } else { "IDLE_OPEN" };
                self.ok("M241", &format!("STATUS:{st}"))
            }
            "M114" => self.ok("M114", "Last Reset Reason: 01"),
            _ => self.err("ERR003", "unhandled gcode"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: Response) -> String {
        match r {
            Response::Reply(b) => String::from_utf8(b).unwrap(),
            Response::Silent => String::new(),
        }
    }

    #[test]
    fn temperatures_ramp_in_device_time_and_the_latch_guards_shaking() {
        let mut hs = ModuleSim::new(Dialect::HeaterShaker, "hs-1");
        assert_eq!(text(hs.handle("M104 S37.00", 0.0)), "M104 OK\n");
        assert_eq!(text(hs.handle("M105", 10.0)), "M105 C:28.0 T:37.0 OK\n");
        assert_eq!(text(hs.handle("M105", 100.0)), "M105 C:37.0 T:37.0 OK\n");
        assert!(text(hs.handle("M3 S500", 0.0)).starts_with("ERR126"));
        hs.handle("M243", 0.0);
        assert_eq!(text(hs.handle("M3 S500", 0.0)), "M3 OK\n");
        assert!(text(hs.handle("M3 S5000", 0.0)).starts_with("ERR120"));
        assert_eq!(text(hs.handle("M999", 0.0)), "ERR003:unhandled gcode\n");
        let mut td = ModuleSim::new(Dialect::TemperatureModule, "td-1");
        assert_eq!(text(td.handle("M105", 0.0)), "T:none C:23.0\r\n\r\nok\r\nok\r\n");
    }
}
