//! Line framing shared by every text protocol: bytes in, complete lines out.
//!
//! Sans-IO: the transport pushes whatever the port delivered; the codec pops complete lines.
//! Lines are split on `\n` with any `\r` trimmed; a line longer than the limit is a protocol error
//! (a device spewing garbage must not grow memory without bound).

use crate::error::InstrumentError;

/// Longest line any of our devices sends.
pub const MAX_LINE: usize = 4096;

/// Accumulates bytes and yields complete lines.
#[derive(Debug, Default, Clone)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a complete line.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets everything buffered (resync after a timeout).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// The next complete line without its terminator, or `None` if no line is complete yet.
    /// Bytes that are not printable ASCII make the line a protocol error.
    pub fn next_line(&mut self) -> Option<Result<String, InstrumentError>> {
        let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > MAX_LINE {
                let n = self.buf.len();
                self.buf.clear();
                return Some(Err(InstrumentError::Protocol(format!(
                    "received {n} bytes without a line end (limit {MAX_LINE})"
                ))));
            }
            return None;
        };
        let raw: Vec<u8> = self.buf.drain(..=end).collect();
        let body = &raw[..raw.len() - 1];
        if body.len() > MAX_LINE {
            return Some(Err(InstrumentError::Protocol(format!("line of {} bytes (limit {MAX_LINE})", body.len()))));
        }
        if let Some(bad) = body.iter().find(|&&b| !(b == b'\r' || b == b'\t' || (0x20..0x7f).contains(&b))) {
            return Some(Err(InstrumentError::Protocol(format!(
                "garbage byte 0x{bad:02x} in reply {:?}",
                String::from_utf8_lossy(body)
            ))));
        }
        let text = String::from_utf8_lossy(body).trim_matches(['\r', ' ', '\t']).to_string();
        Some(Ok(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_pushes_and_flags_garbage() {
        let mut b = LineBuffer::new();
        b.push(b"M105 C:2");
        assert!(b.next_line().is_none());
        b.push(b"9.0 T:37.0 OK\r\n\nx\xff\n");
        assert_eq!(b.next_line().unwrap().unwrap(), "M105 C:29.0 T:37.0 OK");
        assert_eq!(b.next_line().unwrap().unwrap(), "");
        assert!(matches!(b.next_line(), Some(Err(InstrumentError::Protocol(_)))));
        assert!(b.next_line().is_none());
        b.push(&[b'a'; MAX_LINE + 2]);
        assert!(matches!(b.next_line(), Some(Err(InstrumentError::Protocol(_)))));
    }
}
