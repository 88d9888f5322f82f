//! Labwright's station line protocol (LWSP/1) for sealers, centrifuges, incubators and plate
//! hotels over serial: `VERB key=value …\n` in, `OK key=value …\n` or `ERR <code> <message>\n`
//! out, one reply per request. Documented in docs/instruments.md.

use crate::codec::lines::LineBuffer;
use crate::error::InstrumentError;
use std::collections::BTreeMap;

/// Frames a request.
pub fn encode(verb: &str, args: &[(&str, String)]) -> Vec<u8> {
    let mut s = verb.to_string();
    for (k, v) in args {
        s.push(' ');
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s.push('\n');
    s.into_bytes()
}

/// Reads one reply.
pub fn poll(lines: &mut LineBuffer) -> Option<Result<BTreeMap<String, String>, InstrumentError>> {
    let line = match lines.next_line()? {
        Ok(l) => l,
        Err(e) => return Some(Err(e)),
    };
    if line.is_empty() {
        return None;
    }
    Some(decode(&line))
}

/// Decodes one reply line.
pub fn decode(line: &str) -> Result<BTreeMap<String, String>, InstrumentError> {
    let mut words = line.split_whitespace();
    match words.next() {
        Some("OK") => {
            Ok(words.filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
        }
        Some("ERR") => {
            let code = words.next().unwrap_or("E00").to_string();
            let message = words.collect::<Vec<_>>().join(" ");
            Err(match code.as_str() {
                "E04" => InstrumentError::Validation { parameter: "request".into(), message },
                "E03" => InstrumentError::Busy(message),
                _ => InstrumentError::Device { code, message },
            })
        }
        _ => Err(InstrumentError::Protocol(format!("reply {line:?} is neither OK nor ERR"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies() {
        assert_eq!(encode("SEAL", &[("temp", "170".into())]), b"SEAL temp=170\n");
        assert_eq!(decode("OK state=idle plate=no").unwrap()["state"], "idle");
        assert!(matches!(decode("ERR E01 door stuck"), Err(InstrumentError::Device { ref code, .. }) if code == "E01"));
        assert!(matches!(decode("ERR E04 temp out of range"), Err(InstrumentError::Validation { .. })));
        assert!(matches!(decode("HELLO"), Err(InstrumentError::Protocol(_))));
    }
}
