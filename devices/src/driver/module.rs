//! Heater-shaker, thermocycler and temperature-module driver: Opentrons module G-code over serial.
//! Set points are acknowledged at once; reaching them is found by polling (set-then-poll).

use super::{spawn, Cancel};
use crate::codec::module::{Dialect, Reply, ReplyReader, Request};
use crate::error::InstrumentError;
use crate::instrument::{unsupported, Execution, Identity, Instrument, Outcome, State, Status, TimeScale};
use crate::link::Link;
use protocols::plan::CommandOp;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Tuning for one module link.
#[derive(Debug, Clone)]
pub struct ModuleConfig {
    /// Wait for one reply (the Opentrons host uses 40 s; 1 s for the temperature module).
    pub reply_timeout: Duration,
    /// Extra tries after a reply that never came (queries and set points are safe to resend).
    pub retries: u32,
    /// Time between temperature/speed polls (Opentrons polls once a second).
    pub poll: Duration,
    /// Physical durations (shake for 10 min) are scaled by this.
    pub scale: TimeScale,
    /// A set point counts as reached within this many °C.
    pub temperature_tolerance_c: f64,
    /// Give up waiting for a set point after this long (device time).
    pub settle_limit_s: f64,
}

impl ModuleConfig {
    pub fn for_dialect(dialect: Dialect, scale: TimeScale) -> Self {
        ModuleConfig {
            reply_timeout: match dialect {
                Dialect::TemperatureModule => Duration::from_secs(1),
                _ => Duration::from_secs(40),
            },
            retries: 3,
            poll: scale.wall(1.0).max(Duration::from_millis(2)),
            scale,
            temperature_tolerance_c: 1.0,
            settle_limit_s: 1800.0,
        }
    }
}

/// One Opentrons-style module.
#[derive(Debug, Clone)]
pub struct ModuleDriver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dialect: Dialect,
    config: ModuleConfig,
    link: Mutex<Link>,
    cancel: Cancel,
}

impl ModuleDriver {
    pub fn new(dialect: Dialect, link: Link, config: ModuleConfig) -> Self {
        ModuleDriver { inner: Arc::new(Inner { dialect, config, link: Mutex::new(link), cancel: Cancel::default() }) }
    }

    /// Sends one request and reads its reply; resends only when no reply came.
    pub async fn request(&self, req: Request) -> Result<Reply, InstrumentError> {
        self.inner.request(&req).await
    }

    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }
}

impl Inner {
    async fn request(&self, req: &Request) -> Result<Reply, InstrumentError> {
        let mut link = self.link.lock().await;
        let mut attempt = 0;
        loop {
            let r = exchange(&mut link, self.dialect, req, self.config.reply_timeout).await;
            match r {
                Err(InstrumentError::Timeout(_)) if attempt < self.config.retries => attempt += 1,
                other => return other,
            }
        }
    }

    async fn temperatures(&self) -> Result<(Option<f64>, Option<f64>), InstrumentError> {
        let r = self.request(&Request::new("M105")).await?;
        Ok((r.number("C")?, r.number("T")?))
    }

    /// Polls until the current temperature is within tolerance of the target.
    async fn wait_for_temperature(&self, progress: &(dyn Fn(f64, String) + Sync)) -> Result<(), InstrumentError> {
        let start = tokio::time::Instant::now();
        let limit = self.config.scale.wall(self.config.settle_limit_s);
        let first = self.temperatures().await?;
        loop {
            self.cancel.check()?;
            let (current, target) = self.temperatures().await?;
            let (Some(c), Some(t)) = (current, target) else { return Ok(()) };
            if (c - t).abs() <= self.config.temperature_tolerance_c {
                return Ok(());
            }
            let from = first.0.unwrap_or(c);
            let done = if (t - from).abs() > 1e-9 { (c - from) / (t - from) } else { 1.0 };
            progress(done, format!("{c:.1} °C of {t:.1} °C"));
            if start.elapsed() > limit {
                return Err(InstrumentError::Device {
                    code: "settle-timeout".into(),
                    message: format!("{} stayed at {c:.1} °C, target {t:.1} °C", self.dialect.name()),
                });
            }
            self.cancel.sleep(self.config.poll).await?;
        }
    }

    /// Polls the shaker until it runs at the target speed (within 5 %).
    async fn wait_for_speed(&self) -> Result<(), InstrumentError> {
        let start = tokio::time::Instant::now();
        loop {
            self.cancel.check()?;
            let r = self.request(&Request::new("M123")).await?;
            let (Some(c), t) = (r.number("C")?, r.number("T")?.unwrap_or(0.0)) else { return Ok(()) };
            if (t == 0.0 && c == 0.0) || (t > 0.0 && (c - t).abs() <= t * 0.05) {
                return Ok(());
            }
            if start.elapsed() > self.config.scale.wall(120.0).max(Duration::from_secs(5)) {
                return Err(InstrumentError::Device {
                    code: "speed-timeout".into(),
                    message: format!("shaker at {c} rpm, target {t} rpm"),
                });
            }
            self.cancel.sleep(self.config.poll).await?;
        }
    }

    fn set_temperature(&self, t: f64) -> Result<Request, InstrumentError> {
        let (lo, hi) = match self.dialect {
            Dialect::HeaterShaker => (0.0, 95.0),
            Dialect::ThermocyclerGen2 => (0.0, 99.0),
            Dialect::TemperatureModule => (-9.0, 99.0),
        };
        if !(lo..=hi).contains(&t) {
            return Err(InstrumentError::Validation {
                parameter: "temperature_c".into(),
                message: format!("{t} °C is outside the {} range {lo}–{hi} °C", self.dialect.name()),
            });
        }
        Ok(match self.dialect {
            Dialect::TemperatureModule => Request::new("M104").real('S', t.round()),
            _ => Request::new("M104").real('S', t),
        })
    }

    fn speed(&self, rpm: f64) -> Result<Request, InstrumentError> {
        if self.dialect != Dialect::HeaterShaker {
            return Err(InstrumentError::Validation {
                parameter: "rpm".into(),
                message: format!("a {} cannot shake", self.dialect.name()),
            });
        }
        if !(200.0..=3000.0).contains(&rpm) {
            return Err(InstrumentError::Validation {
                parameter: "rpm".into(),
                message: format!("{rpm} rpm is outside 200–3000 rpm"),
            });
        }
        Ok(Request::new("M3").int('S', rpm.round() as i64))
    }

    fn stop_heating(&self) -> Vec<Request> {
        match self.dialect {
            Dialect::HeaterShaker => vec![Request::new("M106")],
            Dialect::ThermocyclerGen2 => vec![Request::new("M14"), Request::new("M108")],
            Dialect::TemperatureModule => vec![Request::new("M18")],
        }
    }

    fn latch(&self, open: bool) -> Result<Request, InstrumentError> {
        Ok(match (self.dialect, open) {
            (Dialect::HeaterShaker, true) => Request::new("M242"),
            (Dialect::HeaterShaker, false) => Request::new("M243"),
            (Dialect::ThermocyclerGen2, true) => Request::new("M126"),
            (Dialect::ThermocyclerGen2, false) => Request::new("M127"),
            (Dialect::TemperatureModule, _) => {
                return Err(InstrumentError::Validation {
                    parameter: "open".into(),
                    message: "a temperature module has no latch or lid".into(),
                })
            }
        })
    }

    async fn run(
        self: Arc<Self>,
        op: CommandOp,
        progress: &(dyn Fn(f64, String) + Sync),
    ) -> Result<Outcome, InstrumentError> {
        use CommandOp::*;
        match op {
            SetTemperature { temperature_c, .. } => {
                self.request(&self.set_temperature(temperature_c)?).await?;
            }
            WaitForTemperature { .. } => self.wait_for_temperature(progress).await?,
            SetShakeSpeed { rpm, .. } => {
                let req = self.speed(rpm)?;
                self.request(&Request::new("M243")).await?;
                self.request(&req).await?;
                self.wait_for_speed().await?;
            }
            StopShaking => {
                self.speed(200.0)?; // validates the family
                self.request(&Request::new("G28")).await?;
                self.wait_for_speed().await?;
            }
            StopHeating => {
                for r in self.stop_heating() {
                    self.request(&r).await?;
                }
            }
            Latch { open } => {
                self.request(&self.latch(open)?).await?;
            }
            Shake { rpm, duration_s, temperature_c, .. } => {
                let speed = self.speed(rpm)?;
                let heat = temperature_c.map(|t| self.set_temperature(t)).transpose()?;
                self.request(&Request::new("M243")).await?;
                if let Some(h) = heat {
                    self.request(&h).await?;
                    self.wait_for_temperature(progress).await?;
                }
                self.request(&speed).await?;
                self.wait_for_speed().await?;
                let total = self.config.scale.wall(duration_s);
                let step = total / 20;
                for i in 0..20 {
                    progress(i as f64 / 20.0, format!("shaking at {rpm} rpm"));
                    if let Err(e) = self.cancel.sleep(step).await {
                        let _ = self.request(&Request::new("G28")).await;
                        return Err(e);
                    }
                }
                self.request(&Request::new("G28")).await?;
                self.wait_for_speed().await?;
                if temperature_c.is_some() {
                    self.request(&Request::new("M106")).await?;
                }
            }
            other => return Err(unsupported(self.dialect.name(), &other)),
        }
        Ok(Outcome::default())
    }
}

/// One request/reply exchange on a link.
pub async fn exchange(
    link: &mut Link,
    dialect: Dialect,
    req: &Request,
    within: Duration,
) -> Result<Reply, InstrumentError> {
    link.send(&req.encode(dialect)).await?;
    let mut reader = ReplyReader::new(dialect, req);
    link.read_reply(within, |lines| reader.poll(lines)).await
}

#[async_trait::async_trait]
impl Instrument for ModuleDriver {
    async fn identify(&self) -> Result<Identity, InstrumentError> {
        let r = self.request(Request::new("M115")).await?;
        let get = |a: &str, b: &str| r.fields.get(a).or_else(|| r.fields.get(b)).cloned().unwrap_or_default();
        Ok(Identity { model: get("HW", "model"), serial: get("SerialNo", "serial"), firmware: get("FW", "version") })
    }

    async fn start(&self, op: &CommandOp) -> Result<Execution, InstrumentError> {
        let inner = self.inner.clone();
        inner.cancel.reset();
        let op = op.clone();
        // Validate before anything moves.
        match &op {
            CommandOp::SetTemperature { temperature_c, .. } => drop(inner.set_temperature(*temperature_c)?),
            CommandOp::SetShakeSpeed { rpm, .. } | CommandOp::Shake { rpm, .. } => drop(inner.speed(*rpm)?),
            CommandOp::Latch { open } => drop(inner.latch(*open)?),
            CommandOp::WaitForTemperature { .. } | CommandOp::StopHeating => {}
            CommandOp::StopShaking => drop(inner.speed(200.0)?),
            other => return Err(unsupported(inner.dialect.name(), other)),
        }
        Ok(spawn(move |tx| async move {
            let report = |f: f64, m: String| tx.progress(f, m);
            inner.run(op, &report).await
        }))
    }

    async fn status(&self) -> Result<Status, InstrumentError> {
        let (c, _) = self.inner.temperatures().await?;
        let mut detail = String::new();
        if self.inner.dialect == Dialect::HeaterShaker {
            let s = self.request(Request::new("M123")).await?;
            let l = self.request(Request::new("M241")).await?;
            // In words for the people at the bench, not the firmware's fields.
            let rpm: f64 = s.fields.get("C").and_then(|c| c.parse().ok()).unwrap_or(0.0);
            let latch = l.fields.get("STATUS").map(|v| v.to_ascii_lowercase()).unwrap_or_default();
            detail = format!(
                "{}, latch {}",
                if rpm > 0.0 { format!("shaking at {rpm} rpm") } else { "not shaking".to_string() },
                if latch.contains("closed") {
                    "closed"
                } else if latch.contains("open") {
                    "open"
                } else {
                    latch.as_str()
                }
            );
        }
        Ok(Status { state: State::Idle, temperature_c: c, detail })
    }

    /// Stops shaking and heating, then checks with the module's own queries that the shaker
    /// stands still and no set point is held.
    async fn make_safe(&self) -> Result<String, InstrumentError> {
        let inner = &self.inner;
        if inner.dialect == Dialect::HeaterShaker {
            inner.request(&Request::new("G28")).await?;
            inner.wait_for_speed().await?;
        }
        for r in inner.stop_heating() {
            inner.request(&r).await?;
        }
        if inner.dialect == Dialect::HeaterShaker {
            let s = inner.request(&Request::new("M123")).await?;
            if s.number("C")?.is_some_and(|c| c > 0.0) {
                return Err(crate::instrument::unsafe_state("the shaker still turns after stopping it"));
            }
        }
        if let (_, Some(target)) = inner.temperatures().await? {
            return Err(crate::instrument::unsafe_state(&format!(
                "it still holds a {target:.1} °C set point after deactivating"
            )));
        }
        Ok("stopped shaking and heating".into())
    }

    async fn abort(&self) -> Result<(), InstrumentError> {
        self.inner.cancel.fire();
        if self.inner.dialect == Dialect::HeaterShaker {
            self.request(Request::new("G28")).await?;
        }
        for r in self.inner.stop_heating() {
            self.inner.request(&r).await?;
        }
        Ok(())
    }
}
