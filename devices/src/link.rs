//! The thin tokio transport under every text protocol: a byte stream (serial port, PTY or TCP
//! socket) plus line framing, with per-exchange deadlines, resync after a timeout and reconnect
//! with backoff. The codecs decide what a reply is; the link only moves bytes and keeps time.

use crate::codec::lines::LineBuffer;
use crate::error::InstrumentError;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Where an instrument listens, parsed from `lab.toml`'s `endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `serial:/dev/ttyUSB0` (also PTYs).
    Serial(String),
    /// `tcp:host:port`.
    Tcp(String),
    /// `sila:host:port` (gRPC, insecure) or `silas:host:port` (TLS).
    Sila { address: String, tls: bool },
    /// `opentrons:host[:port]`: an Opentrons robot's HTTP API (port 31950 unless given).
    Opentrons { address: String },
    /// `sim`, `sim:sila` or `sim:opentrons`: an in-process simulator.
    Sim,
}

impl Endpoint {
    /// Parses an endpoint string, naming what is wrong.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let (scheme, rest) = text.split_once(':').unwrap_or((text, ""));
        let need = |what: &str| {
            if rest.is_empty() {
                Err(format!("endpoint `{text}` has no {what}; write e.g. `{scheme}:{}`", example(scheme)))
            } else {
                Ok(rest.to_string())
            }
        };
        match scheme {
            "serial" => need("device path").map(Endpoint::Serial),
            "tcp" => need("host:port").map(Endpoint::Tcp),
            "sila" => need("host:port").map(|a| Endpoint::Sila { address: a, tls: false }),
            "silas" => need("host:port").map(|a| Endpoint::Sila { address: a, tls: true }),
            "opentrons" => need("host").map(|a| Endpoint::Opentrons {
                address: if a.contains(':') { a } else { format!("{a}:{}", crate::codec::opentrons::DEFAULT_PORT) },
            }),
            "sim" => Ok(Endpoint::Sim),
            _ => Err(format!(
                "endpoint `{text}`: unknown scheme `{scheme}`; use serial:PATH, tcp:HOST:PORT, sila:HOST:PORT, silas:HOST:PORT, opentrons:HOST[:PORT] or sim"
            )),
        }
    }
}

fn example(scheme: &str) -> &'static str {
    match scheme {
        "serial" => "/dev/ttyACM0",
        "tcp" => "10.0.0.5:10100",
        "opentrons" => "10.0.0.12",
        _ => "127.0.0.1:50052",
    }
}

/// Any byte stream a link can run over.
pub trait Wire: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Wire for T {}

/// Opens a serial port (or PTY) at 115200 8N1.
pub fn open_serial(path: &str) -> Result<Box<dyn Wire>, InstrumentError> {
    use tokio_serial::SerialPortBuilderExt;
    tokio_serial::new(path, 115_200)
        .open_native_async()
        .map(|s| Box::new(s) as Box<dyn Wire>)
        .map_err(|e| InstrumentError::Disconnected(format!("cannot open serial port {path}: {e}")))
}

/// Connects a TCP socket with a deadline.
pub async fn connect_tcp(address: &str, within: Duration) -> Result<Box<dyn Wire>, InstrumentError> {
    match tokio::time::timeout(within, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(Box::new(s))
        }
        Ok(Err(e)) => Err(InstrumentError::Disconnected(format!("cannot connect to {address}: {e}"))),
        Err(_) => Err(InstrumentError::Disconnected(format!("no answer connecting to {address} within {within:?}"))),
    }
}

/// A line-oriented connection to one device.
pub struct Link {
    endpoint: Endpoint,
    io: Option<Box<dyn Wire>>,
    lines: LineBuffer,
    needs_resync: bool,
    /// How many times the link was re-opened (for status and tests).
    pub reconnects: u32,
    /// Bytes thrown away while resynchronising (for status and tests).
    pub discarded: usize,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("endpoint", &self.endpoint).field("open", &self.io.is_some()).finish()
    }
}

/// Backoff between reconnect attempts.
const BACKOFF: [Duration; 3] = [Duration::from_millis(50), Duration::from_millis(200), Duration::from_millis(800)];
/// How long the line must be quiet before a resync counts as done.
const QUIET: Duration = Duration::from_millis(100);

impl Link {
    /// Opens the endpoint.
    pub async fn open(endpoint: Endpoint) -> Result<Link, InstrumentError> {
        let io = Self::dial(&endpoint).await?;
        let serial = matches!(endpoint, Endpoint::Serial(_));
        let mut link = Link::over(endpoint, io);
        if serial {
            // Replies to a process that died mid-exchange wait on the port for whoever opens it
            // next: they are not this link's.
            link.discard_stale(Duration::from_millis(20)).await?;
        }
        Ok(link)
    }

    /// Wraps an already open stream (in-process PTY pairs, tests).
    pub fn over(endpoint: Endpoint, io: Box<dyn Wire>) -> Link {
        Link { endpoint, io: Some(io), lines: LineBuffer::new(), needs_resync: false, reconnects: 0, discarded: 0 }
    }

    async fn dial(endpoint: &Endpoint) -> Result<Box<dyn Wire>, InstrumentError> {
        match endpoint {
            Endpoint::Serial(path) => open_serial(path),
            Endpoint::Tcp(addr) => connect_tcp(addr, Duration::from_secs(5)).await,
            other => Err(InstrumentError::Disconnected(format!("{other:?} is not a byte-stream endpoint"))),
        }
    }

    /// Whether the link is currently open.
    pub fn is_open(&self) -> bool {
        self.io.is_some()
    }

    /// Re-opens a closed link, with backoff; `Disconnected` if every attempt fails.
    async fn ensure_open(&mut self) -> Result<(), InstrumentError> {
        if self.io.is_some() {
            return Ok(());
        }
        let mut last = None;
        for wait in BACKOFF {
            tokio::time::sleep(wait).await;
            match Self::dial(&self.endpoint).await {
                Ok(io) => {
                    self.io = Some(io);
                    self.lines.clear();
                    self.reconnects += 1;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| InstrumentError::Disconnected("cannot reopen".into())))
    }

    fn lost(&mut self, why: String) -> InstrumentError {
        self.io = None;
        self.lines.clear();
        InstrumentError::Disconnected(why)
    }

    /// Writes one request. Stale input (late replies to an earlier request) is discarded first,
    /// as the Opentrons host clears its buffer before each write.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), InstrumentError> {
        self.ensure_open().await?;
        if self.needs_resync {
            self.resync().await?;
        }
        self.discarded += self.lines.pending().len();
        self.lines.clear();
        let Some(io) = self.io.as_mut() else { return Err(InstrumentError::Disconnected("link closed".into())) };
        let r = async {
            io.write_all(bytes).await?;
            io.flush().await
        }
        .await;
        r.map_err(|e| self.lost(format!("write failed: {e}")))
    }

    /// Reads until `decode` returns a reply or the deadline passes. A timeout marks the link for
    /// resync: whatever the device sends late is discarded before the next request.
    pub async fn read_reply<T>(
        &mut self,
        within: Duration,
        mut decode: impl FnMut(&mut LineBuffer) -> Option<Result<T, InstrumentError>>,
    ) -> Result<T, InstrumentError> {
        let until = Instant::now() + within;
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(done) = decode(&mut self.lines) {
                return done;
            }
            let Some(io) = self.io.as_mut() else { return Err(InstrumentError::Disconnected("link closed".into())) };
            match tokio::time::timeout_at(until, io.read(&mut chunk)).await {
                Err(_) => {
                    self.needs_resync = true;
                    return Err(InstrumentError::Timeout(within));
                }
                // EOF: the peer closed (socket) or the PTY's other side went away.
                Ok(Ok(0)) => return Err(self.lost("the device closed the connection".into())),
                Ok(Ok(n)) => self.lines.push(&chunk[..n]),
                // EIO on a vanished port, ECONNRESET on a socket.
                Ok(Err(e)) => return Err(self.lost(format!("read failed: {e}"))),
            }
        }
    }

    /// Reads and discards until the line has been quiet for a moment (at most two seconds).
    pub async fn resync(&mut self) -> Result<(), InstrumentError> {
        self.discard_stale(QUIET).await
    }

    /// Reads and discards until the line has been quiet for `quiet` (at most two seconds).
    async fn discard_stale(&mut self, quiet: Duration) -> Result<(), InstrumentError> {
        let give_up = Instant::now() + Duration::from_secs(2);
        let mut chunk = [0u8; 1024];
        self.discarded += self.lines.pending().len();
        self.lines.clear();
        while Instant::now() < give_up {
            let Some(io) = self.io.as_mut() else { return Err(InstrumentError::Disconnected("link closed".into())) };
            match tokio::time::timeout(quiet, io.read(&mut chunk)).await {
                Err(_) => break,
                Ok(Ok(0)) => return Err(self.lost("the device closed the connection".into())),
                Ok(Ok(n)) => self.discarded += n,
                Ok(Err(e)) => return Err(self.lost(format!("read failed: {e}"))),
            }
        }
        self.needs_resync = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_clear_errors() {
        assert_eq!(Endpoint::parse("serial:/dev/ttyACM0").unwrap(), Endpoint::Serial("/dev/ttyACM0".into()));
        assert_eq!(
            Endpoint::parse("silas:10.0.0.9:50052").unwrap(),
            Endpoint::Sila { address: "10.0.0.9:50052".into(), tls: true }
        );
        assert_eq!(Endpoint::parse("sim:sila").unwrap(), Endpoint::Sim);
        assert!(Endpoint::parse("tcp").unwrap_err().contains("host:port"));
        assert!(Endpoint::parse("usb:1").unwrap_err().contains("unknown scheme"));
    }
}
