//! The simulated technician's hands at a simulated bench: filling wells with what a plan's
//! loading list says and telling the simulators what each liquid looks like to a reader. When
//! the simulators run in their own process (`labd sim`), this is how the runtime's simulated
//! technician reaches their bench: JSON lines over TCP (`{"op":"fill",…}` → `{"ok":true}`).
//! A real lab has a person here.

use super::bench::SharedBench;
use crate::error::InstrumentError;
use labware::optics::Optics;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What the hands are asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Put `ul` of `liquid` into a well.
    Fill { labware: String, well: String, liquid: String, ul: f64 },
    /// What a liquid looks like to a plate reader.
    Optics { liquid: String, optics: Optics },
    /// Whether the bench already has something in this well (a plate loaded before).
    Knows { labware: String, well: String },
}

/// The bench's answer to one request line (JSON), as one JSON object.
fn answer(bench: &SharedBench, line: &str) -> serde_json::Value {
    let request: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return serde_json::json!({"ok": false, "error": format!("not a bench request: {e}")}),
    };
    let Ok(mut bench) = bench.lock() else {
        return serde_json::json!({"ok": false, "error": "the bench's state is lost"});
    };
    match request {
        Request::Fill { labware, well, liquid, ul } if ul.is_finite() && ul >= 0.0 => {
            bench.fill(&labware, &well, &liquid, ul);
            serde_json::json!({"ok": true})
        }
        Request::Fill { ul, .. } => serde_json::json!({"ok": false, "error": format!("cannot fill {ul} µL")}),
        Request::Optics { liquid, optics } => {
            bench.set_optics(&liquid, optics);
            serde_json::json!({"ok": true})
        }
        Request::Knows { labware, well } => serde_json::json!({"ok": true, "knows": bench.knows(&labware, &well)}),
    }
}

/// Serves the bench on `bind` (host:port), every connection at once: several tasks of the
/// runtime load plates side by side. Aborting the task closes the listener.
pub async fn serve(
    bench: SharedBench,
    bind: &str,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let bench = bench.clone();
            tokio::spawn(async move {
                let (read, mut write) = sock.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = format!("{}\r\n", answer(&bench, line.trim()));
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, task))
}

/// The runtime's side: sends requests to a bench [`serve`]d at `address` (host:port).
#[derive(Debug, Clone)]
pub struct Hands {
    address: String,
}

impl Hands {
    pub fn at(address: &str) -> Hands {
        Hands { address: address.trim_start_matches("tcp:").to_string() }
    }

    /// Carries out the requests in order on one connection; for each, whether the bench knew
    /// the well (`Knows`) or `false`.
    pub async fn all(&self, requests: &[Request]) -> Result<Vec<bool>, InstrumentError> {
        let within = Duration::from_secs(10);
        let io =
            |e: std::io::Error| InstrumentError::Disconnected(format!("the simulated bench at {}: {e}", self.address));
        let stream = tokio::time::timeout(within, tokio::net::TcpStream::connect(&self.address))
            .await
            .map_err(|_| InstrumentError::Timeout(within))?
            .map_err(io)?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
            let text = serde_json::to_string(r).map_err(|e| InstrumentError::Protocol(e.to_string()))?;
            write.write_all(format!("{text}\n").as_bytes()).await.map_err(io)?;
            let line = tokio::time::timeout(within, lines.next_line())
                .await
                .map_err(|_| InstrumentError::Timeout(within))?
                .map_err(io)?
                .ok_or_else(|| InstrumentError::Protocol("the simulated bench hung up".into()))?;
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| InstrumentError::Protocol(format!("the simulated bench said {line:?}: {e}")))?;
            if v["ok"] != true {
                return Err(InstrumentError::Protocol(format!("the simulated bench refused {text}: {}", v["error"])));
            }
            out.push(v["knows"] == true);
        }
        Ok(out)
    }
}
