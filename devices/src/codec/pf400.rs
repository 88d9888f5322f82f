//! PF400-style TCS text protocol (Precise Automation PreciseFlex), host side: one command line
//! in, one `<code>[ <data>]` line out. Code 0 is success, 1 a warning (done, with an anomaly),
//! negative an error whose class decides what the executor may do (PROTOCOLS.md §2.4).

use crate::codec::lines::LineBuffer;
use crate::error::InstrumentError;

/// Frames one command.
pub fn encode(command: &str) -> Vec<u8> {
    format!("{command}\n").into_bytes()
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// 0 or 1 (warning).
    pub code: i32,
    pub data: String,
}

impl Reply {
    /// The data as whitespace-separated numbers (`wherej`).
    pub fn numbers(&self) -> Result<Vec<f64>, InstrumentError> {
        self.data
            .split_whitespace()
            .map(|t| t.parse::<f64>().ok().filter(|v| v.is_finite()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| InstrumentError::Protocol(format!("expected numbers, got {:?}", self.data)))
    }
}

/// Reads one reply line.
pub fn poll(lines: &mut LineBuffer) -> Option<Result<Reply, InstrumentError>> {
    let line = match lines.next_line()? {
        Ok(l) => l,
        Err(e) => return Some(Err(e)),
    };
    Some(decode(&line))
}

/// Decodes one reply line.
pub fn decode(line: &str) -> Result<Reply, InstrumentError> {
    if line.is_empty() {
        return Err(InstrumentError::Protocol("empty reply line".into()));
    }
    let (code, data) = line.split_once(' ').unwrap_or((line, ""));
    let code: i32 = code
        .parse()
        .map_err(|_| InstrumentError::Protocol(format!("reply {line:?} does not start with a reply code")))?;
    let data = data.trim().to_string();
    if code >= 0 {
        return Ok(Reply { code, data });
    }
    Err(classify(code, data))
}

/// Maps a negative reply code to the classified error.
pub fn classify(code: i32, message: String) -> InstrumentError {
    match code {
        // Bad request: do not retry.
        -202 | -205 | -1033 => {
            InstrumentError::Validation { parameter: "command".into(), message: format!("{code}: {message}") }
        }
        // Another client holds the robot.
        -1006 => InstrumentError::Busy(format!("{code}: {message}")),
        // E-stop/power (operator action), collision (labware position unknown), limits, not
        // ready, faults: all device errors; the code tells the technician which.
        _ => InstrumentError::Device { code: code.to_string(), message },
    }
}

/// Whether a device error means the arm hit something (the plate's position is now unknown).
pub fn is_collision(code: &str) -> bool {
    matches!(code, "-3100" | "-3122" | "-3101" | "-3105")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_are_classified() {
        assert_eq!(decode("0 1.5 2 3").unwrap().numbers().unwrap(), vec![1.5, 2.0, 3.0]);
        assert_eq!(decode("1 soft limit near").unwrap().code, 1);
        assert!(matches!(decode("-205 Missing argument"), Err(InstrumentError::Validation { .. })));
        assert!(
            matches!(decode("-3122 Soft envelope error"), Err(InstrumentError::Device { ref code, .. }) if is_collision(code))
        );
        assert!(matches!(decode(""), Err(InstrumentError::Protocol(_))));
        assert!(matches!(decode("OK"), Err(InstrumentError::Protocol(_))));
    }
}
