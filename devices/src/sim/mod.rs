//! Simulators: the device side of each wire protocol, so the real drivers run against them.
//!
//! Each text-protocol simulator is a pure state machine ([`LineDevice`]) fed one request line at a
//! time with the device clock; [`serve`] puts it on a byte stream (a PTY or a TCP socket) and
//! applies the configured [`Faults`].

pub mod arm;
pub mod bench;
pub mod hands;
pub mod liquid;
pub mod module;
pub mod opentrons;
pub mod opentrons_modules;
pub mod site;
pub mod station;

use crate::instrument::TimeScale;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a simulated device does with one request line.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// Bytes to send back.
    Reply(Vec<u8>),
    /// Nothing (the request is ignored, or an emulator gap).
    Silent,
}

/// A simulated device: one request line in, a response out. `now_s` is device time in seconds
/// since the simulator started (wall time divided by the time scale).
pub trait LineDevice: Send + 'static {
    fn handle(&mut self, line: &str, now_s: f64) -> Response;
    /// How long (device seconds) the reply to this line takes; the serve loop waits that long
    /// before answering (moves, reads, homing).
    fn busy_for(&self, _line: &str) -> f64 {
        0.0
    }
}

/// Faults to inject, from config (`labd sim --faults` or a test).
///
/// Written as comma-separated items, each naming the request word it applies to:
/// `timeout=M104` (never answer), `error=M3:ERR120` (answer with this device error),
/// `garbage=M105` (answer with bytes that are not the protocol), `disconnect_after=5` (close the
/// link after five requests), `slow_ms=200` (delay every reply), `stuck_door` (reader door),
/// `error_once=G0 B:ERR120` (the first such request only gets the error: a task that fails
/// mid-way once).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    pub timeout_on: Vec<String>,
    pub error_on: Vec<(String, String)>,
    /// Errors for the first matching request only; spent as they fire.
    pub error_once: Vec<(String, String)>,
    pub garbage_on: Vec<String>,
    pub disconnect_after: Option<u32>,
    pub slow_ms: u64,
    pub stuck_door: bool,
}

impl Faults {
    /// Parses the fault list; says which item is wrong.
    pub fn parse(text: &str) -> Result<Faults, String> {
        let mut f = Faults::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let need = |v: &str| {
                if v.is_empty() {
                    Err(format!("fault `{key}` needs a value, e.g. `{key}=M104`"))
                } else {
                    Ok(v.to_string())
                }
            };
            match key {
                "timeout" => f.timeout_on.push(need(value)?),
                "garbage" => f.garbage_on.push(need(value)?),
                "error" | "error_once" => {
                    let (word, code) = value
                        .split_once(':')
                        .ok_or_else(|| format!("fault `{item}`: write {key}=WORD:CODE, e.g. {key}=M3:ERR120"))?;
                    let list = if key == "error" { &mut f.error_on } else { &mut f.error_once };
                    list.push((word.to_string(), code.to_string()));
                }
                "disconnect_after" => {
                    f.disconnect_after =
                        Some(value.parse().map_err(|_| format!("fault `{item}`: a whole number of requests"))?)
                }
                "slow_ms" => {
                    f.slow_ms = value.parse().map_err(|_| format!("fault `{item}`: milliseconds as a whole number"))?
                }
                "stuck_door" => f.stuck_door = true,
                _ => {
                    return Err(format!(
                        "unknown fault `{key}`; known: timeout, error, error_once, garbage, disconnect_after, slow_ms, stuck_door"
                    ))
                }
            }
        }
        Ok(f)
    }

    /// A fault names a request word (`G0`), or with a space a line prefix (`G0 B`: only
    /// plunger moves).
    fn applies(list: &[String], line: &str) -> bool {
        let word = line.split_whitespace().next().unwrap_or("");
        list.iter().any(|w| {
            w.eq_ignore_ascii_case(word)
                || (w.contains(' ') && line.trim_start().to_ascii_uppercase().starts_with(&w.to_ascii_uppercase()))
        })
    }

    /// The device error configured for this request word.
    pub fn error_for(&self, word: &str) -> Option<&str> {
        self.error_on.iter().find(|(w, _)| w.eq_ignore_ascii_case(word)).map(|(_, c)| c.as_str())
    }

    /// The one-shot error for this request line (a word, or a prefix with a space), spent.
    fn take_error_once(&mut self, line: &str) -> Option<String> {
        let i = self.error_once.iter().position(|(w, _)| Faults::applies(std::slice::from_ref(w), line))?;
        Some(self.error_once.remove(i).1)
    }
}

/// The device clock: wall time since start, divided by the time scale.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    start: Instant,
    scale: TimeScale,
}

impl SimClock {
    pub fn new(scale: TimeScale) -> Self {
        SimClock { start: Instant::now(), scale }
    }

    pub fn now_s(&self) -> f64 {
        let wall = self.start.elapsed().as_secs_f64();
        if self.scale.0 > 0.0 {
            wall / self.scale.0
        } else {
            wall
        }
    }

    pub fn scale(&self) -> TimeScale {
        self.scale
    }
}

/// Waits `d` of wall-clock time, skipping waits too short to matter: tokio's timer has a
/// millisecond grain, so a "1 ns" device wait at a tiny time scale would otherwise cost 1 ms.
pub async fn pause(d: std::time::Duration) {
    if d >= std::time::Duration::from_micros(100) {
        tokio::time::sleep(d).await;
    }
}

/// Serves a device on a byte stream until the peer goes away. Requests are lines; blank lines
/// (the `\r\n\r\n` terminators of some dialects) are skipped. Each device error is written in the
/// device's own error syntax by the `error_reply` function.
pub async fn serve<S, D>(
    mut io: S,
    device: &mut D,
    faults: &mut Faults,
    clock: SimClock,
    error_reply: fn(&str, &str) -> Vec<u8>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    D: LineDevice,
{
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut served = 0u32;
    // Wall time the timer overslept so far: taken off the next wait, so that over many short
    // moves the device's time follows its model rather than the timer's millisecond grain.
    let mut overslept = std::time::Duration::ZERO;
    loop {
        let n = match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            buf.clear(); // a flood without line ends: drop it, as a firmware's buffer would
        }
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw).trim().to_string();
            if line.is_empty() {
                continue;
            }
            served += 1;
            if faults.disconnect_after.is_some_and(|n| served > n) {
                return;
            }
            let word = line.split_whitespace().next().unwrap_or("").to_string();
            if Faults::applies(&faults.timeout_on, &line) {
                continue;
            }
            let reply = if Faults::applies(&faults.garbage_on, &line) {
                Response::Reply(b"\x15\xfe#!garbage\xff\n".to_vec())
            } else if let Some(code) =
                faults.error_for(&word).map(str::to_string).or_else(|| faults.take_error_once(&line))
            {
                Response::Reply(error_reply(&line, &code))
            } else {
                let busy = device.busy_for(&line);
                if busy > 0.0 {
                    let want = clock.scale().wall(busy);
                    if want > overslept {
                        let wait = want - overslept;
                        let started = Instant::now();
                        pause(wait).await;
                        overslept = started.elapsed().saturating_sub(wait);
                    } else {
                        overslept -= want;
                    }
                }
                device.handle(&line, clock.now_s())
            };
            if faults.slow_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(faults.slow_ms)).await;
            }
            if let Response::Reply(bytes) = reply {
                if io.write_all(&bytes).await.is_err() || io.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A simulated serial device on a PTY pair: the simulator holds the master side; drivers open
/// the returned path like any serial port.
pub struct Pty {
    pub path: String,
    /// Kept open so the master never sees EIO between clients.
    _slave: tokio_serial::SerialStream,
}

impl std::fmt::Debug for Pty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pty").field("path", &self.path).finish()
    }
}

/// Creates a PTY pair; returns the master stream and the slave's path holder.
pub fn pty() -> std::io::Result<(tokio_serial::SerialStream, Pty)> {
    use tokio_serial::SerialPort;
    let (master, slave) = tokio_serial::SerialStream::pair().map_err(std::io::Error::other)?;
    let path = slave.name().ok_or_else(|| std::io::Error::other("the PTY has no name"))?;
    Ok((master, Pty { path, _slave: slave }))
}

/// Serves `device` on a new PTY in the background; returns the path drivers open. The PTY
/// vanishes (readers get EIO) when the device hangs up (`disconnect_after`).
pub fn spawn_serial<D: LineDevice>(
    mut device: D,
    mut faults: Faults,
    clock: SimClock,
    error_reply: fn(&str, &str) -> Vec<u8>,
) -> std::io::Result<Pty> {
    let (master, pty) = pty()?;
    tokio::spawn(async move {
        serve(master, &mut device, &mut faults, clock, error_reply).await;
    });
    Ok(pty)
}

/// Serves `device` on a loopback TCP port in the background, one client at a time; the device
/// keeps its state across connections. Returns the bound address.
pub async fn spawn_tcp<D: LineDevice>(
    device: D,
    faults: Faults,
    clock: SimClock,
    error_reply: fn(&str, &str) -> Vec<u8>,
    bind: &str,
) -> std::io::Result<std::net::SocketAddr> {
    spawn_tcp_owned(device, faults, clock, error_reply, bind).await.map(|(addr, _detached)| addr)
}

/// As [`spawn_tcp`], with the serving task: aborting it closes the listener.
///
/// One client at a time, and the newest wins: a controller that takes a new connection drops
/// the one it had, so a standby node can take an arm over from a node that froze holding it.
pub async fn spawn_tcp_owned<D: LineDevice>(
    mut device: D,
    mut faults: Faults,
    clock: SimClock,
    error_reply: fn(&str, &str) -> Vec<u8>,
    bind: &str,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else { return };
        loop {
            let _ = sock.set_nodelay(true);
            let next = tokio::select! {
                _ = serve(sock, &mut device, &mut faults, clock, error_reply) => listener.accept().await,
                newer = listener.accept() => newer,
            };
            match next {
                Ok((s, _)) => sock = s,
                Err(_) => return,
            }
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_name_bad_items() {
        let f = Faults::parse("timeout=M104, error=M3:ERR120,disconnect_after=5,slow_ms=20,stuck_door").unwrap();
        assert_eq!(f.timeout_on, vec!["M104"]);
        assert!(Faults::applies(&f.timeout_on, "m104 S37"));
        let mut once = Faults::parse("error_once=G0 B:ERR9").unwrap();
        assert_eq!(once.take_error_once("G0 Z10"), None);
        assert_eq!(once.take_error_once("G0 B3.5").as_deref(), Some("ERR9"));
        assert_eq!(once.take_error_once("G0 B3.5"), None, "spent");
        let plunger = Faults::parse("timeout=G0 B").unwrap();
        assert!(Faults::applies(&plunger.timeout_on, "G0 B-12.5"));
        assert!(!Faults::applies(&plunger.timeout_on, "G0 Z100"));
        assert_eq!(f.error_for("m3"), Some("ERR120"));
        assert_eq!(f.disconnect_after, Some(5));
        assert!(f.stuck_door);
        assert!(Faults::parse("error=M3").unwrap_err().contains("WORD:CODE"));
        assert!(Faults::parse("explode").unwrap_err().contains("unknown fault"));
        assert!(Faults::parse("slow_ms=fast").unwrap_err().contains("milliseconds"));
    }
}
