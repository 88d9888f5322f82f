//! OT-2-style motion controller G-code (Smoothieware), host side.
//!
//! Requests are G-code tokens plus ` \r\n\r\n`; every request is answered by `ok\r\nok\r\n`,
//! possibly after an echo or data lines; a line containing `error` or `alarm` makes the exchange
//! an error (the ack still follows and is consumed). See PROTOCOLS.md §3.

use crate::codec::lines::LineBuffer;
use crate::error::InstrumentError;

/// Request terminator.
pub const TERMINATOR: &str = " \r\n\r\n";

/// Frames one request line.
pub fn encode(line: &str) -> Vec<u8> {
    format!("{line}{TERMINATOR}").into_bytes()
}

/// Reads one reply: data lines until two `ok` lines.
#[derive(Debug, Default)]
pub struct ReplyReader {
    oks: u32,
    body: Vec<String>,
    error: Option<InstrumentError>,
}

impl ReplyReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the data lines once the ack arrived, or the error the device reported.
    pub fn poll(&mut self, lines: &mut LineBuffer) -> Option<Result<Vec<String>, InstrumentError>> {
        while let Some(line) = lines.next_line() {
            let line = match line {
                Ok(l) => l,
                Err(e) => return Some(Err(e)),
            };
            if line.is_empty() {
                continue;
            }
            if line.eq_ignore_ascii_case("ok") {
                self.oks += 1;
                if self.oks == 2 {
                    return Some(match self.error.take() {
                        Some(e) => Err(e),
                        None => Ok(std::mem::take(&mut self.body)),
                    });
                }
                continue;
            }
            let lower = line.to_ascii_lowercase();
            if lower.contains("alarm") {
                self.error = Some(InstrumentError::Device { code: "alarm".into(), message: line });
            } else if lower.contains("error") {
                let message = line.split_once(':').map_or(line.as_str(), |(_, m)| m).trim().to_string();
                self.error = Some(InstrumentError::Device { code: "error".into(), message });
            } else {
                self.body.push(line);
            }
        }
        None
    }
}

/// Parses `X:1.0 Y:2.0 …` (after an optional `ok MCS:` prefix) into axis values.
pub fn axes(line: &str) -> Vec<(char, f64)> {
    line.split_whitespace()
        .filter_map(|t| {
            let (k, v) = t.split_once(':')?;
            let mut c = k.chars();
            let axis = c.next()?;
            if c.next().is_some() {
                return None;
            }
            Some((axis, v.parse::<f64>().ok().filter(|x| x.is_finite())?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_errors_and_positions() {
        let mut b = LineBuffer::new();
        b.push(b"M114.2\r\nok MCS: X:1.50 Y:2.00 Z:3.00 A:0.00 B:2.00 C:0.00\r\nok\r\nok\r\n");
        let body = ReplyReader::new().poll(&mut b).unwrap().unwrap();
        let pos = axes(&body[1]);
        assert_eq!(pos[0], ('X', 1.5));
        assert_eq!(pos.len(), 6);
        b.push(b"error: tip below well bottom\r\nok\r\nok\r\n");
        let e = ReplyReader::new().poll(&mut b).unwrap().unwrap_err();
        assert_eq!(e, InstrumentError::Device { code: "error".into(), message: "tip below well bottom".into() });
        b.push(b"ok\r\n");
        assert!(ReplyReader::new().poll(&mut b).is_none(), "half an ack is not an ack");
    }
}
