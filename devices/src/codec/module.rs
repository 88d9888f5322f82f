//! Opentrons module G-code (Heater-Shaker, Thermocycler GEN2, Temperature Module), host side.
//!
//! Framing and reply rules follow `corpus/instruments/PROTOCOLS.md` §1: requests are tokens joined
//! by spaces plus a dialect terminator; a reply ends with the dialect's ack; the echo rule decides
//! whether a reply is normal; `async ERR…` lines are device errors not tied to the request;
//! error text is matched loosely because real firmware misspells some codes (`EERR502`, `ERR5006`).

use crate::codec::lines::LineBuffer;
use crate::error::InstrumentError;
use std::collections::BTreeMap;

/// The three module dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    HeaterShaker,
    ThermocyclerGen2,
    TemperatureModule,
}

impl Dialect {
    /// Bytes after the tokens of a request.
    pub fn request_terminator(self) -> &'static str {
        match self {
            Dialect::HeaterShaker => " \n",
            Dialect::ThermocyclerGen2 => " \r\n",
            Dialect::TemperatureModule => " \r\n\r\n",
        }
    }

    /// Whether the ack still follows an error line (Temperature Module: `Error…` then `ok ok`).
    fn ack_follows_error(self) -> bool {
        matches!(self, Dialect::TemperatureModule)
    }

    /// Model name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::HeaterShaker => "heater-shaker",
            Dialect::ThermocyclerGen2 => "thermocycler",
            Dialect::TemperatureModule => "temperature module",
        }
    }
}

/// One request: a G-code and its parameters (`S37.00`).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub gcode: String,
    pub params: Vec<String>,
}

impl Request {
    pub fn new(gcode: &str) -> Self {
        Request { gcode: gcode.into(), params: Vec::new() }
    }

    /// Adds `<letter><value>` with two decimals, as the Opentrons host does.
    pub fn real(mut self, letter: char, value: f64) -> Self {
        self.params.push(format!("{letter}{value:.2}"));
        self
    }

    /// Adds `<letter><value>` as an integer.
    pub fn int(mut self, letter: char, value: i64) -> Self {
        self.params.push(format!("{letter}{value}"));
        self
    }

    /// The bytes to write.
    pub fn encode(&self, dialect: Dialect) -> Vec<u8> {
        let mut s = self.gcode.clone();
        for p in &self.params {
            s.push(' ');
            s.push_str(p);
        }
        s.push_str(dialect.request_terminator());
        s.into_bytes()
    }
}

/// A successful reply: `KEY:value` fields (keys as sent, e.g. `C`, `T`, `STATUS`, `Lid`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    pub fields: BTreeMap<String, String>,
    /// The reply text without echo and ack.
    pub text: String,
}

impl Reply {
    /// A numeric field; `none` (no target) is `Ok(None)`.
    pub fn number(&self, key: &str) -> Result<Option<f64>, InstrumentError> {
        match self.fields.get(key).map(String::as_str) {
            None => Err(InstrumentError::Protocol(format!("reply {:?} has no {key} field", self.text))),
            Some("none") => Ok(None),
            Some(v) => v.parse::<f64>().ok().filter(|x| x.is_finite()).map(Some).ok_or_else(|| {
                InstrumentError::Protocol(format!("{key}:{v} is not a number in reply {:?}", self.text))
            }),
        }
    }
}

/// Reads one reply, line by line, for one request.
#[derive(Debug)]
pub struct ReplyReader {
    dialect: Dialect,
    gcode: String,
    acks_seen: u32,
    body: Vec<String>,
    error: Option<InstrumentError>,
    /// Device errors announced asynchronously while waiting (reported, not the reply).
    pub async_errors: Vec<InstrumentError>,
}

impl ReplyReader {
    pub fn new(dialect: Dialect, request: &Request) -> Self {
        ReplyReader {
            dialect,
            gcode: request.gcode.clone(),
            acks_seen: 0,
            body: Vec::new(),
            error: None,
            async_errors: Vec::new(),
        }
    }

    /// Feeds buffered lines; returns the reply once the exchange is over.
    pub fn poll(&mut self, lines: &mut LineBuffer) -> Option<Result<Reply, InstrumentError>> {
        while let Some(line) = lines.next_line() {
            let line = match line {
                Ok(l) => l,
                Err(e) => return Some(Err(e)),
            };
            if let Some(done) = self.line(&line) {
                return Some(done);
            }
        }
        None
    }

    fn line(&mut self, line: &str) -> Option<Result<Reply, InstrumentError>> {
        // The emulators add blank lines to every reply.
        if line.is_empty() {
            return None;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("async") {
            let rest = line[5..].trim();
            let rest = strip_ok(rest);
            self.async_errors.push(device_error(rest));
            return None;
        }
        match self.dialect {
            Dialect::TemperatureModule => {
                if lower == "ok" {
                    self.acks_seen += 1;
                    if self.acks_seen == 2 {
                        return Some(self.finish());
                    }
                    return None;
                }
                if lower.contains("error") || lower.contains("alarm") {
                    self.error = Some(classify_error(line));
                } else {
                    self.body.push(line.to_string());
                }
                None
            }
            Dialect::HeaterShaker | Dialect::ThermocyclerGen2 => {
                let first = line.split_whitespace().next().unwrap_or("");
                let echoed = first.eq_ignore_ascii_case(&self.gcode);
                if !echoed && looks_like_gcode(first) && !lower.contains("err") {
                    // An echo of another command: a late reply to an earlier request, not ours.
                    return Some(Err(InstrumentError::Protocol(format!(
                        "reply {line:?} answers {first}, not {}",
                        self.gcode
                    ))));
                }
                let acked = line == "OK" || line.ends_with(" OK");
                if !echoed && (lower.contains("err") || lower.contains("alarm")) {
                    self.error = Some(classify_error(strip_ok(line)));
                    if !self.dialect.ack_follows_error() {
                        return Some(self.finish());
                    }
                }
                let text = strip_ok(line);
                let text = if echoed { text[first.len()..].trim() } else { text };
                if !text.is_empty() && self.error.is_none() {
                    self.body.push(text.to_string());
                }
                if acked {
                    return Some(self.finish());
                }
                None
            }
        }
    }

    fn finish(&mut self) -> Result<Reply, InstrumentError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let text = self.body.join(" ");
        Ok(Reply { fields: parse_fields(&text), text })
    }
}

/// `M105`, `G28`, `M240.D`: a letter G or M followed by a digit.
fn looks_like_gcode(token: &str) -> bool {
    let mut c = token.chars();
    matches!(c.next(), Some('G' | 'M' | 'g' | 'm')) && c.next().is_some_and(|d| d.is_ascii_digit())
}

fn strip_ok(line: &str) -> &str {
    let t = line.trim_end();
    t.strip_suffix("OK").map(str::trim_end).unwrap_or(t)
}

/// `KEY:value` tokens; a key followed by a space (`Last Reset Reason: 01`) takes the next token.
pub fn parse_fields(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut i = 0;
    while i < tokens.len() {
        if let Some((k, v)) = tokens[i].split_once(':') {
            if v.is_empty() && i + 1 < tokens.len() && !tokens[i + 1].contains(':') {
                out.insert(k.to_string(), tokens[i + 1].to_string());
                i += 1;
            } else {
                out.insert(k.to_string(), v.to_string());
            }
        }
        i += 1;
    }
    out
}

/// Turns error text into the classified error.
pub fn classify_error(text: &str) -> InstrumentError {
    let t = text.trim();
    // The emulators answer a missing or malformed parameter with `Error: 'S'` or `Error: Invalid content: …`.
    if let Some(rest) = t.strip_prefix("Error:") {
        let rest = rest.trim();
        let param = rest.trim_matches('\'');
        if param.len() == 1 {
            return InstrumentError::Validation {
                parameter: param.into(),
                message: format!("missing or bad parameter {param}"),
            };
        }
        return InstrumentError::Validation { parameter: "request".into(), message: rest.into() };
    }
    if t.to_ascii_lowercase().contains("alarm") {
        return InstrumentError::Device { code: "alarm".into(), message: t.into() };
    }
    device_error(t)
}

/// `ERRnnn:text`, tolerating the firmware's misspellings.
fn device_error(text: &str) -> InstrumentError {
    let upper = text.to_ascii_uppercase();
    if let Some(at) = upper.find("ERR") {
        let after = &text[at + 3..];
        let digits: String = after.chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
        let message = after[digits.len()..].trim_start_matches(':').trim().to_string();
        let code = match digits.as_str() {
            "5006" => "506".to_string(), // the seal-stall code is sent as ERR5006
            d => d.to_string(),
        };
        if !code.is_empty() {
            return InstrumentError::Device { code: format!("ERR{code}"), message };
        }
    }
    InstrumentError::Device { code: "unknown".into(), message: text.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(d: Dialect, req: &Request, bytes: &[u8]) -> Option<Result<Reply, InstrumentError>> {
        let mut b = LineBuffer::new();
        b.push(bytes);
        ReplyReader::new(d, req).poll(&mut b)
    }

    #[test]
    fn emulator_and_firmware_replies_decode() {
        let r = read(Dialect::HeaterShaker, &Request::new("M105"), b"M105 C:29.0 T:37.0 OK\n\n").unwrap().unwrap();
        assert_eq!(r.number("C").unwrap(), Some(29.0));
        assert_eq!(r.number("T").unwrap(), Some(37.0));
        let r =
            read(Dialect::ThermocyclerGen2, &Request::new("M105"), b"M105 T:none C:23.0 H:none Total_H:none   OK\n\n")
                .unwrap()
                .unwrap();
        assert_eq!(r.number("T").unwrap(), None);
        let r = read(Dialect::TemperatureModule, &Request::new("M105"), b"T:4.0 C:4.0\r\n\r\nok\r\nok\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.number("C").unwrap(), Some(4.0));
        // No echo on the emulator's M115, still a normal reply.
        let r = read(Dialect::HeaterShaker, &Request::new("M115"), b"FW:v1 HW:hs SerialNo:abc OK\n").unwrap().unwrap();
        assert_eq!(r.fields["SerialNo"], "abc");
        // Half a reply is not a reply.
        assert!(read(Dialect::TemperatureModule, &Request::new("M105"), b"T:4.0 C:4.0\r\n\r\nok\r\n").is_none());
    }

    #[test]
    fn errors_are_classified_including_misspelled_codes() {
        let e = read(Dialect::HeaterShaker, &Request::new("M999"), b"ERR003:unhandled gcode\n").unwrap().unwrap_err();
        assert_eq!(e, InstrumentError::Device { code: "ERR003".into(), message: "unhandled gcode".into() });
        let e = read(Dialect::ThermocyclerGen2, &Request::new("M126"), b"EERR502:lid:Lid motor fault OK\n")
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, InstrumentError::Device { ref code, .. } if code == "ERR502"));
        let e = read(Dialect::ThermocyclerGen2, &Request::new("M126"), b"ERR5006:seal:Seal motor stall event\n")
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, InstrumentError::Device { ref code, .. } if code == "ERR506"));
        let e = read(Dialect::TemperatureModule, &Request::new("M104"), b"Error: 'S' \r\n\r\nok\r\nok\r\n")
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, InstrumentError::Validation { ref parameter, .. } if parameter == "S"));
        // The echo rule: a normal reply whose body mentions "err" is not an error.
        assert!(read(Dialect::HeaterShaker, &Request::new("M114"), b"M114 Last Reset Reason: err1 OK\n")
            .unwrap()
            .is_ok());
    }

    #[test]
    fn a_reply_to_another_command_is_a_protocol_error() {
        let e = read(Dialect::HeaterShaker, &Request::new("M105"), b"M123 C:0 T:0 OK\n").unwrap().unwrap_err();
        assert!(matches!(e, InstrumentError::Protocol(ref m) if m.contains("answers M123")), "{e:?}");
    }

    #[test]
    fn async_errors_are_reported_and_the_ack_still_consumed() {
        let mut b = LineBuffer::new();
        b.push(b"async ERR401:thermal:Thermal plate busy OK\nM104 OK\n");
        let mut r = ReplyReader::new(Dialect::ThermocyclerGen2, &Request::new("M104").real('S', 95.0));
        assert!(r.poll(&mut b).unwrap().is_ok());
        assert_eq!(r.async_errors.len(), 1);
        assert!(b.pending().is_empty());
    }

    #[test]
    fn requests_are_framed_per_dialect() {
        assert_eq!(Request::new("M104").real('S', 37.0).encode(Dialect::HeaterShaker), b"M104 S37.00 \n");
        assert_eq!(Request::new("M105").encode(Dialect::TemperatureModule), b"M105 \r\n\r\n");
    }
}
