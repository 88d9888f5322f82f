//! Simulated PF400-style arm: power, attach, home, taught locations with plates in them, a
//! gripper, joint motion that takes device time (so `wherej` changes until the move ends).

use super::{LineDevice, Response};

/// Joints reported by `wherej`.
const JOINTS: usize = 5;
/// Gripper widths, mm: closed on an SBS plate, and closed on nothing (open is the taught 80).
const HOLDING_WIDTH: f64 = 76.0;
const CLOSED_WIDTH: f64 = 60.0;

/// The simulated controller.
#[derive(Debug)]
pub struct ArmSim {
    powered: bool,
    attached: bool,
    homed: bool,
    /// Motion: from, to, start and end in device seconds.
    from: [f64; JOINTS],
    to: [f64; JOINTS],
    t0: f64,
    t1: f64,
    gripper_closed: bool,
    holding: bool,
    /// Which location the arm is exactly at (not an approach position).
    at: Option<usize>,
    /// Plates at each taught location.
    pub occupied: Vec<u32>,
    /// How many plates each location holds. A location holding more than one is a store (hotel,
    /// incubator) whose own mechanism presents the wanted plate: picking there always finds one.
    capacity: Vec<u32>,
    names: Vec<String>,
    /// Each location's taught joints (`locAngles`); the approach is 50 mm above.
    taught: Vec<[f64; JOINTS]>,
}

/// Where the simulator was taught location `index` (1-based) when nobody re-taught it.
pub fn factory_taught(index: usize) -> [f64; JOINTS] {
    let i = index as f64;
    [250.0, 20.0 * i, 90.0 - 10.0 * i, 5.0 * i, 80.0]
}

impl ArmSim {
    /// `locations` in the order they were taught (index 1 is the first), each holding one plate.
    pub fn new(locations: &[String]) -> Self {
        Self::with_capacity(locations, &vec![1; locations.len()])
    }

    /// As [`ArmSim::new`], with how many plates each location holds.
    pub fn with_capacity(locations: &[String], capacity: &[u32]) -> Self {
        let home = [300.0, 0.0, 0.0, 0.0, 80.0];
        ArmSim {
            powered: false,
            attached: false,
            homed: false,
            from: home,
            to: home,
            t0: 0.0,
            t1: 0.0,
            gripper_closed: false,
            holding: false,
            at: None,
            occupied: vec![0; locations.len()],
            capacity: locations.iter().enumerate().map(|(i, _)| capacity.get(i).copied().unwrap_or(1).max(1)).collect(),
            names: locations.to_vec(),
            taught: (1..=locations.len()).map(factory_taught).collect(),
        }
    }

    fn taught(&self, index: usize, approach: bool) -> [f64; JOINTS] {
        let mut j = self.taught[index - 1];
        if approach {
            j[0] += 50.0;
        }
        j
    }

    /// Puts a plate at a location (the technician loading the hotel).
    pub fn place(&mut self, location: &str) {
        if let Some(i) = self.names.iter().position(|n| n == location) {
            self.occupied[i] += 1;
        }
    }

    fn joints(&self, now: f64) -> [f64; JOINTS] {
        if now >= self.t1 || self.t1 <= self.t0 {
            return self.to;
        }
        let f = (now - self.t0) / (self.t1 - self.t0);
        std::array::from_fn(|k| self.from[k] + (self.to[k] - self.from[k]) * f)
    }

    fn moving(&self, now: f64) -> bool {
        now < self.t1
    }

    fn go(&mut self, target: [f64; JOINTS], now: f64) {
        self.from = self.joints(now);
        let dist = self.from.iter().zip(&target).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        self.to = target;
        self.t0 = now;
        self.t1 = now + 0.5 + dist / 100.0;
    }

    fn reply(code: i32, data: &str) -> Response {
        Response::Reply(if data.is_empty() { format!("{code}\r\n") } else { format!("{code} {data}\r\n") }.into_bytes())
    }
}

/// A PF400-style error reply.
pub fn error_reply(_line: &str, code: &str) -> Vec<u8> {
    format!("{code} injected error\r\n").into_bytes()
}

impl LineDevice for ArmSim {
    fn handle(&mut self, line: &str, now: f64) -> Response {
        let mut w = line.split_whitespace();
        let cmd = w.next().unwrap_or("");
        let args: Vec<&str> = w.collect();
        let motion_ready = |s: &ArmSim| -> Option<Response> {
            if !s.powered {
                Some(Self::reply(-1046, "Power not enabled"))
            } else if !s.attached {
                Some(Self::reply(-1009, "No robot attached"))
            } else if !s.homed {
                Some(Self::reply(-1021, "Robot not homed"))
            } else {
                None
            }
        };
        match cmd {
            "mode" | "nop" | "selectRobot" => Self::reply(0, ""),
            "version" => Self::reply(0, "Labwright simulated PF400 3.0"),
            "sysState" => Self::reply(
                0,
                if self.powered {
                    if self.attached {
                        "21"
                    } else {
                        "20"
                    }
                } else {
                    "7"
                },
            ),
            "hp" => {
                self.powered = args.first() == Some(&"1");
                Self::reply(0, "")
            }
            "attach" => {
                if args.first() == Some(&"1") {
                    if !self.powered {
                        return Self::reply(-1007, "Robot not ready to be attached");
                    }
                    self.attached = true;
                } else {
                    self.attached = false;
                }
                Self::reply(0, "")
            }
            "home" => {
                if !self.powered {
                    return Self::reply(-1046, "Power not enabled");
                }
                if !self.attached {
                    return Self::reply(-1009, "No robot attached");
                }
                self.homed = true;
                self.go([300.0, 0.0, 0.0, 0.0, 80.0], now);
                self.t1 = now; // the reply comes when homing is done
                self.at = None;
                Self::reply(0, "")
            }
            "wherej" => {
                // The fifth joint is the gripper's width: closed on a plate it stops at the
                // plate's width, closed on nothing it closes all the way.
                let mut j = self.joints(now);
                if self.gripper_closed {
                    j[JOINTS - 1] = if self.holding { HOLDING_WIDTH } else { CLOSED_WIDTH };
                }
                Self::reply(0, &j.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(" "))
            }
            "halt" => {
                let j = self.joints(now);
                self.to = j;
                self.t1 = now;
                Self::reply(0, "")
            }
            "move" | "moveAppro" => {
                if let Some(e) = motion_ready(self) {
                    return e;
                }
                let Some(idx) = args.first().and_then(|a| a.parse::<usize>().ok()) else {
                    return Self::reply(-205, "Missing argument");
                };
                if idx == 0 || idx > self.names.len() {
                    return Self::reply(-202, "Invalid argument: no such location");
                }
                if cmd == "move" && self.holding && self.occupied[idx - 1] >= self.capacity[idx - 1] {
                    // Lowering a plate onto a plate.
                    self.powered = false;
                    return Self::reply(-3100, "Hard envelope error: collision at the nest");
                }
                self.go(self.taught(idx, cmd == "moveAppro"), now);
                self.at = if cmd == "move" { Some(idx - 1) } else { None };
                Self::reply(0, "")
            }
            // `locAngles N` says where location N was taught; `locAngles N j1 … j5` teaches it.
            "locAngles" => {
                let Some(idx) = args.first().and_then(|a| a.parse::<usize>().ok()) else {
                    return Self::reply(-205, "Missing argument");
                };
                if idx == 0 || idx > self.names.len() {
                    return Self::reply(-202, "Invalid argument: no such location");
                }
                if args.len() > 1 {
                    let j: Vec<f64> = args[1..].iter().filter_map(|a| a.parse().ok()).collect();
                    if j.len() != JOINTS {
                        return Self::reply(-202, "Invalid argument: give every joint");
                    }
                    self.taught[idx - 1].copy_from_slice(&j);
                    return Self::reply(0, "");
                }
                let j = self.taught[idx - 1];
                Self::reply(0, &j.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(" "))
            }
            // -1 when the jaws closed all the way (on nothing), 0 when open or on a plate.
            "IsFullyClosed" => Self::reply(0, if self.gripper_closed && !self.holding { "-1" } else { "0" }),
            "gripper" => {
                if self.moving(now) {
                    return Self::reply(-1011, "Illegal during motion");
                }
                match args.first() {
                    Some(&"2") => {
                        self.gripper_closed = true;
                        if let Some(i) = self.at {
                            let store = self.capacity[i] > 1;
                            if (self.occupied[i] > 0 || store) && !self.holding {
                                self.occupied[i] = self.occupied[i].saturating_sub(1);
                                self.holding = true;
                            }
                        }
                        Self::reply(0, "")
                    }
                    Some(&"1") => {
                        self.gripper_closed = false;
                        if self.holding {
                            match self.at {
                                Some(i) => {
                                    self.occupied[i] += 1;
                                    self.holding = false;
                                }
                                None => return Self::reply(-3122, "Soft envelope error: released a plate in mid-air"),
                            }
                        }
                        Self::reply(0, "")
                    }
                    _ => Self::reply(-205, "Missing argument"),
                }
            }
            _ => Self::reply(-204, "Not implemented"),
        }
    }
}
