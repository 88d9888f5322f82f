//! Robot-arm driver: PF400-style text lines over TCP. Moves a plate from nest to nest as
//! approach → grip → retract → approach → release → retract, waiting for each motion by polling
//! `wherej` (which keeps the link free for `halt`), as PyLabRobot's driver does.

use super::{spawn, Cancel};
use crate::codec::pf400::{self, Reply};
use crate::error::InstrumentError;
use crate::instrument::{unsupported, Execution, Identity, Instrument, Outcome, Settled, State, Status, Whereabouts};
use crate::link::Link;
use protocols::plan::CommandOp;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Timing of the arm link.
#[derive(Debug, Clone)]
pub struct ArmConfig {
    pub reply_timeout: Duration,
    /// Poll period while waiting for motion to end (50 ms on a real arm).
    pub poll: Duration,
    /// Give up on one move after this long.
    pub move_limit: Duration,
}

impl Default for ArmConfig {
    fn default() -> Self {
        ArmConfig {
            reply_timeout: Duration::from_secs(10),
            poll: Duration::from_millis(50),
            move_limit: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// Taught locations in order: location index = position + 1.
    locations: Vec<String>,
    config: ArmConfig,
    link: Mutex<(Link, bool)>,
    /// What lab.toml says each location was taught (joints), where it says.
    taught: Vec<Option<Vec<f64>>>,
    /// Where each plate is, as far as this arm knows.
    plates: std::sync::Mutex<BTreeMap<String, String>>,
    /// The gripper may be closed: set before closing it, cleared once it opened.
    gripping: std::sync::atomic::AtomicBool,
    /// After a restart: the plate recovery found in the gripper, whose move only needs placing.
    holding: std::sync::Mutex<Option<String>>,
    /// Where the arm's last move left it (after a restart: by the journal).
    last_at: std::sync::Mutex<Option<String>>,
    cancel: Cancel,
}

/// One arm.
#[derive(Debug, Clone)]
pub struct ArmDriver {
    inner: Arc<Inner>,
}

impl ArmDriver {
    /// `locations` are the arm's reach, in the order they were taught (index 1, 2, …).
    pub fn new(locations: Vec<String>, link: Link, config: ArmConfig) -> Self {
        let taught = vec![None; locations.len()];
        Self::taught(locations, taught, link, config)
    }

    /// As [`ArmDriver::new`], with the joints lab.toml records for each location (in the same
    /// order), which [`ArmDriver::verify_positions`] checks against the arm.
    pub fn taught(locations: Vec<String>, taught: Vec<Option<Vec<f64>>>, link: Link, config: ArmConfig) -> Self {
        ArmDriver {
            inner: Arc::new(Inner {
                taught,
                locations,
                config,
                link: Mutex::new((link, false)),
                plates: std::sync::Mutex::new(BTreeMap::new()),
                gripping: std::sync::atomic::AtomicBool::new(false),
                holding: std::sync::Mutex::new(None),
                last_at: std::sync::Mutex::new(None),
                cancel: Cancel::default(),
            }),
        }
    }

    /// Compares every position lab.toml records with where the arm's controller has it taught
    /// (`locAngles`), within 0.05 mm or degree: a re-taught arm or a stale lab.toml is a startup
    /// error naming the nest and both, never a move to the wrong place.
    pub async fn verify_positions(&self) -> Result<usize, InstrumentError> {
        let mut checked = 0;
        for (i, want) in self.inner.taught.iter().enumerate() {
            let Some(want) = want else { continue };
            let index = i + 1;
            let have = self.command(&format!("locAngles {index}")).await?.numbers()?;
            let same = have.len() >= want.len() && want.iter().zip(&have).all(|(a, b)| (a - b).abs() <= 0.05);
            if !same {
                let fmt = |v: &[f64]| v.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join(", ");
                return Err(InstrumentError::Validation {
                    parameter: "positions".into(),
                    message: format!(
                        "{} (location {index}) is taught at [{}] on the arm, but lab.toml says [{}]; re-teach the arm or update lab.toml",
                        self.inner.locations[i],
                        fmt(&have),
                        fmt(want)
                    ),
                });
            }
            checked += 1;
        }
        Ok(checked)
    }

    /// Tells the driver where a plate is (the executor knows from the schedule).
    pub fn locate(&self, labware: &str, location: &str) {
        if let Ok(mut p) = self.inner.plates.lock() {
            p.insert(labware.to_string(), location.to_string());
        }
    }

    /// Where the driver believes a plate is.
    pub fn location_of(&self, labware: &str) -> Option<String> {
        self.inner.plates.lock().ok().and_then(|p| p.get(labware).cloned())
    }

    /// One raw command (service use and tests).
    pub async fn command(&self, line: &str) -> Result<Reply, InstrumentError> {
        let mut g = self.inner.link.lock().await;
        exchange(&mut g.0, line, self.inner.config.reply_timeout).await
    }
}

async fn exchange(link: &mut Link, line: &str, within: Duration) -> Result<Reply, InstrumentError> {
    link.send(&pf400::encode(line)).await?;
    link.read_reply(within, pf400::poll).await
}

impl Inner {
    fn index(&self, location: &str) -> Result<usize, InstrumentError> {
        self.locations.iter().position(|l| l == location).map(|i| i + 1).ok_or_else(|| InstrumentError::Validation {
            parameter: "to".into(),
            message: format!("`{location}` is not a location this arm reaches ({})", self.locations.join(", ")),
        })
    }

    /// Powers, attaches and homes the arm once per connection.
    async fn ready(&self, link: &mut Link, ready: &mut bool) -> Result<(), InstrumentError> {
        if *ready && link.is_open() {
            return Ok(());
        }
        let t = self.config.reply_timeout;
        exchange(link, "mode 0", t).await?;
        exchange(link, "hp 1 20", t).await?;
        exchange(link, "attach 1", t).await?;
        exchange(link, "home", t.max(Duration::from_secs(60))).await?;
        *ready = true;
        Ok(())
    }

    /// Polls `wherej` until two samples agree within 0.02 on every joint.
    async fn settle(&self, link: &mut Link) -> Result<(), InstrumentError> {
        let start = tokio::time::Instant::now();
        let mut last: Option<Vec<f64>> = None;
        loop {
            if self.cancel.check().is_err() {
                let _ = exchange(link, "halt", self.config.reply_timeout).await;
                return Err(InstrumentError::Cancelled);
            }
            let j = exchange(link, "wherej", self.config.reply_timeout).await?.numbers()?;
            if let Some(prev) = &last {
                if prev.len() == j.len() && prev.iter().zip(&j).all(|(a, b)| (a - b).abs() < 0.02) {
                    return Ok(());
                }
            }
            last = Some(j);
            if start.elapsed() > self.config.move_limit {
                let _ = exchange(link, "halt", self.config.reply_timeout).await;
                return Err(InstrumentError::Timeout(self.config.move_limit));
            }
            tokio::time::sleep(self.config.poll).await;
        }
    }

    /// Moves a plate from location `from` to `to`; with `from` `None` the plate is already in
    /// the gripper (found there after a restart) and is only placed.
    async fn transfer(
        &self,
        from: Option<usize>,
        to: usize,
        progress: &(dyn Fn(f64, String) + Sync),
    ) -> Result<(), InstrumentError> {
        let mut g = self.link.lock().await;
        let (link, ready) = &mut *g;
        self.ready(link, ready).await?;
        let t = self.config.reply_timeout;
        let pick: Vec<(String, bool)> = match from {
            Some(from) => vec![
                ("gripper 1".into(), false),
                (format!("moveAppro {from} 1"), true),
                (format!("move {from} 1"), true),
                ("gripper 2".into(), false),
                (format!("moveAppro {from} 1"), true),
            ],
            None => Vec::new(),
        };
        let place = [
            (format!("moveAppro {to} 1"), true),
            (format!("move {to} 1"), true),
            ("gripper 1".into(), false),
            (format!("moveAppro {to} 1"), true),
            ("nop".into(), false),
        ];
        let steps: Vec<(String, bool)> = pick.into_iter().chain(place).collect();
        use std::sync::atomic::Ordering::SeqCst;
        for (i, (cmd, motion)) in steps.iter().enumerate() {
            self.cancel.check()?;
            if cmd == "gripper 2" {
                self.gripping.store(true, SeqCst);
            }
            exchange(link, cmd, t).await?;
            if cmd == "gripper 1" {
                self.gripping.store(false, SeqCst);
            }
            if *motion {
                self.settle(link).await?;
            }
            progress((i + 1) as f64 / steps.len() as f64, cmd.to_string());
        }
        Ok(())
    }
}

impl crate::instrument::Arm for ArmDriver {
    fn locate(&self, labware: &str, location: &str) {
        ArmDriver::locate(self, labware, location)
    }
}

#[async_trait::async_trait]
impl Instrument for ArmDriver {
    async fn identify(&self) -> Result<Identity, InstrumentError> {
        let v = self.command("version").await?;
        Ok(Identity { model: "PF400-style arm".into(), serial: String::new(), firmware: v.data })
    }

    async fn start(&self, op: &CommandOp) -> Result<Execution, InstrumentError> {
        let CommandOp::MoveLabware { labware, to } = op else { return Err(unsupported("a robot arm", op)) };
        let inner = self.inner.clone();
        let from_name = self.location_of(labware).ok_or_else(|| InstrumentError::Validation {
            parameter: "labware".into(),
            message: format!("the arm does not know where `{labware}` is; locate it first"),
        })?;
        let from = inner.index(&from_name)?;
        let to_idx = inner.index(to)?;
        // A plate recovery found in the gripper is only placed.
        let in_hand = crate::lock(&inner.holding).as_deref() == Some(labware.as_str());
        inner.cancel.reset();
        let (labware, to) = (labware.clone(), to.clone());
        Ok(spawn(move |tx| async move {
            let report = |f: f64, m: String| tx.progress(f, m);
            inner.transfer((!in_hand).then_some(from), to_idx, &report).await?;
            if in_hand {
                *crate::lock(&inner.holding) = None;
            }
            *crate::lock(&inner.last_at) = Some(to.clone());
            if let Ok(mut p) = inner.plates.lock() {
                p.insert(labware, to);
            }
            Ok(Outcome::default())
        }))
    }

    /// Only the last move matters: it says where the arm stopped before the one in doubt.
    async fn replay(&self, done: &[CommandOp]) -> Result<(), InstrumentError> {
        if let Some(CommandOp::MoveLabware { to, .. }) =
            done.iter().rev().find(|op| matches!(op, CommandOp::MoveLabware { .. }))
        {
            *crate::lock(&self.inner.last_at) = Some(to.clone());
        }
        Ok(())
    }

    /// A move by the gripper and where the arm stands (once it has stopped): a plate in the
    /// gripper is placed by sending the move again (it only places it); an open gripper over
    /// the destination placed it, unless the arm stood there before the move began (then
    /// nobody can tell); an open gripper anywhere else never took it (the plate is where it was).
    async fn settle(&self, op: &CommandOp) -> Result<Settled, InstrumentError> {
        let CommandOp::MoveLabware { labware, to } = op else { return Err(unsupported("a robot arm", op)) };
        let inner = &self.inner;
        let to_idx = inner.index(to)?;
        let mut g = inner.link.lock().await;
        let link = &mut g.0;
        let t = inner.config.reply_timeout;
        inner.settle(link).await?;
        let joints = exchange(link, "wherej", t).await?.numbers()?;
        let fully_closed = exchange(link, "IsFullyClosed", t).await?.data.trim() == "-1";
        let taught = exchange(link, &format!("locAngles {to_idx}"), t).await?.numbers()?;
        let (Some(&width), Some(&open)) = (joints.last(), taught.last()) else {
            return Err(InstrumentError::Protocol(format!("wherej gave {joints:?}, locAngles {taught:?}")));
        };
        // Over a location: the same shoulder, elbow and wrist (the approach differs only in height).
        let over = |at: &[f64]| joints.len() >= 4 && at.len() >= 4 && (1..4).all(|k| (joints[k] - at[k]).abs() < 0.05);
        let said = format!("joints {}", joints.iter().map(|j| format!("{j:.3}")).collect::<Vec<_>>().join(" "));
        let holding = !fully_closed && width < open - 1.0;
        let was_there = crate::lock(&inner.last_at).as_deref() == Some(to.as_str());
        Ok(if holding {
            *crate::lock(&inner.holding) = Some(labware.clone());
            Settled::Rest(op.clone(), format!("{said}; the gripper holds a plate: it is placed on {to}"))
        } else if over(&taught) && was_there {
            Settled::Unknown(format!(
                "{said}, over {to} with the gripper open; the arm stood there before this move too"
            ))
        } else if over(&taught) {
            if let Ok(mut p) = inner.plates.lock() {
                p.insert(labware.clone(), to.clone());
            }
            Settled::Happened(format!("{said}: over {to} with the gripper open, the plate placed"))
        } else {
            Settled::NotDone(format!("{said}, not over {to}, gripper open: the plate was not taken"))
        })
    }

    async fn status(&self) -> Result<Status, InstrumentError> {
        let s = self.command("sysState").await?;
        let state = match s.data.trim() {
            "21" | "20" | "11" | "12" => State::Idle,
            "15" => State::Fault("hard E-stop engaged".into()),
            "5" | "4" => State::Fault("fault must be cleared".into()),
            other => State::Fault(format!("system state {other}")),
        };
        // In words first; the controller's code after it, for whoever calls the vendor.
        let words = match &state {
            State::Fault(why) => why.clone(),
            _ => "ready".to_string(),
        };
        Ok(Status { state, temperature_c: None, detail: format!("{words} (system state {})", s.data.trim()) })
    }

    /// Its joints (`wherej`) and whether the gripper closed on nothing (`IsFullyClosed`: a
    /// gripper holding a plate cannot close fully, nor can an open one).
    async fn whereabouts(&self) -> Result<Whereabouts, InstrumentError> {
        let joints = self.command("wherej").await?;
        let closed = self.command("IsFullyClosed").await?;
        let gripper = match closed.data.trim() {
            "-1" => "closed on nothing",
            _ => "open or holding a plate",
        };
        Ok(Whereabouts { text: format!("joints {}; gripper {gripper}", joints.data.trim()), tips_on: None })
    }

    /// Ends the move under way at its next poll, then halts the arm where it is (`halt`).
    async fn abort(&self) -> Result<(), InstrumentError> {
        self.inner.cancel.fire();
        self.command("halt").await.map(|_| ())
    }

    /// Halts; a gripper closed on nothing is opened. A plate still in the gripper cannot be put
    /// down safely without knowing where it belongs: that is for a person.
    async fn make_safe(&self) -> Result<String, InstrumentError> {
        use std::sync::atomic::Ordering::SeqCst;
        let inner = &self.inner;
        let mut g = inner.link.lock().await;
        let (link, ready) = &mut *g;
        let t = inner.config.reply_timeout;
        inner.ready(link, ready).await?;
        exchange(link, "halt", t).await?;
        if !inner.gripping.load(SeqCst) {
            return Ok("halted; the gripper is open".into());
        }
        let closed = exchange(link, "IsFullyClosed", t).await?;
        if closed.data.trim() != "-1" {
            return Err(crate::instrument::unsafe_state(
                "the gripper may still hold a plate after a failed move; take the plate out and put it in storage",
            ));
        }
        exchange(link, "gripper 1", t).await?;
        inner.gripping.store(false, SeqCst);
        Ok("halted; opened the empty gripper".into())
    }
}
