//! A strict JSON (RFC 8259) parser that keeps spans, reports duplicate keys and bounds nesting.

use super::{Key, Node, Parsed, Value, MAX_DEPTH};
use crate::diag::Diagnostic;
use crate::source::{SourceFile, Span};

/// Parses a whole JSON document.
pub fn parse(src: &SourceFile) -> Parsed {
    let mut p = Parser { src, text: src.text.as_bytes(), pos: 0, diagnostics: Vec::new() };
    p.skip_ws();
    let root = match p.value(0) {
        Ok(node) => {
            p.skip_ws();
            if p.pos < p.text.len() {
                p.diagnostics.push(
                    Diagnostic::error(
                        "P0001",
                        Span::new(p.pos, p.pos + 1),
                        "unexpected text after the end of the JSON document",
                    )
                    .with_hint("a file holds exactly one JSON value; remove what follows it"),
                );
            }
            Some(node)
        }
        Err(d) => {
            p.diagnostics.push(*d);
            None
        }
    };
    Parsed { root, diagnostics: p.diagnostics }
}

struct Parser<'a> {
    src: &'a SourceFile,
    text: &'a [u8],
    pos: usize,
    /// Non-fatal problems (duplicate keys, out-of-range numbers); parsing goes on.
    diagnostics: Vec<Diagnostic>,
}

type Res<T> = Result<T, Box<Diagnostic>>;

impl Parser<'_> {
    fn err(&self, at: usize, msg: impl Into<String>) -> Box<Diagnostic> {
        Box::new(Diagnostic::error("P0001", Span::new(at, at + 1), msg))
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn value(&mut self, depth: usize) -> Res<Node> {
        if depth > MAX_DEPTH {
            return Err(Box::new(
                Diagnostic::error(
                    "P0003",
                    Span::new(self.pos, self.pos + 1),
                    format!("nesting deeper than {MAX_DEPTH} levels"),
                )
                .with_hint("no protocol needs this much nesting; check for a generated or corrupted file"),
            ));
        }
        let start = self.pos;
        match self.peek() {
            None => Err(self.err(start, "unexpected end of file: the JSON document is truncated")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => {
                let s = self.string()?;
                Ok(Node { span: Span::new(start, self.pos), value: Value::String(s) })
            }
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'N') if self.text[start..].starts_with(b"NaN") => Err(self.err(start, "NaN is not a number in JSON")),
            Some(b'I') if self.text[start..].starts_with(b"Infinity") => {
                Err(self.err(start, "Infinity is not a number in JSON"))
            }
            Some(c) => Err(self.err(start, format!("expected a JSON value, found {}", show(c)))),
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Res<Node> {
        let start = self.pos;
        if self.text[start..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(Node { span: Span::new(start, self.pos), value })
        } else {
            Err(self.err(start, format!("expected `{word}`")))
        }
    }

    fn number(&mut self) -> Res<Node> {
        let start = self.pos;
        let t = self.text;
        let mut i = self.pos;
        if t.get(i) == Some(&b'-') {
            i += 1;
        }
        let int_start = i;
        while t.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == int_start {
            return Err(self.err(i, "expected a digit"));
        }
        if t[int_start] == b'0' && i - int_start > 1 {
            return Err(self.err(int_start, "numbers must not have leading zeros"));
        }
        if t.get(i) == Some(&b'.') {
            i += 1;
            let f = i;
            while t.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == f {
                return Err(self.err(i, "expected a digit after the decimal point"));
            }
        }
        if let Some(b'e' | b'E') = t.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = t.get(i) {
                i += 1;
            }
            let e = i;
            while t.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == e {
                return Err(self.err(i, "expected a digit in the exponent"));
            }
        }
        self.pos = i;
        let span = Span::new(start, i);
        let text = std::str::from_utf8(&t[start..i]).unwrap_or("0");
        let n: f64 = text.parse().unwrap_or(f64::INFINITY);
        if !n.is_finite() {
            self.diagnostics.push(
                Diagnostic::error("P0111", span, format!("number {text} is too large"))
                    .with_hint("use a unit that keeps the number small, e.g. mL instead of nL"),
            );
            return Ok(Node { span, value: Value::Null });
        }
        Ok(Node { span, value: Value::Number(n) })
    }

    fn string(&mut self) -> Res<String> {
        let start = self.pos;
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err(start, "unterminated string: the file ends inside it"));
            };
            match c {
                b'"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    let esc = self.text.get(self.pos + 1).copied();
                    self.pos += 2;
                    match esc {
                        Some(b'"') => out.push('"'),
                        Some(b'\\') => out.push('\\'),
                        Some(b'/') => out.push('/'),
                        Some(b'b') => out.push('\u{8}'),
                        Some(b'f') => out.push('\u{c}'),
                        Some(b'n') => out.push('\n'),
                        Some(b'r') => out.push('\r'),
                        Some(b't') => out.push('\t'),
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let ch = if (0xD800..0xDC00).contains(&hi) && self.text[self.pos..].starts_with(b"\\u") {
                                self.pos += 2;
                                let lo = self.hex4()?;
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF))
                            } else {
                                char::from_u32(hi)
                            };
                            out.push(ch.unwrap_or('\u{FFFD}'));
                        }
                        _ => return Err(self.err(self.pos - 2, "invalid escape in string")),
                    }
                }
                0..=0x1F => return Err(self.err(self.pos, "control character inside a string; escape it")),
                _ => {
                    // Copy one UTF-8 character (the source is valid UTF-8).
                    let rest = &self.text[self.pos..];
                    let len = utf8_len(rest[0]);
                    let s = std::str::from_utf8(&rest[..len.min(rest.len())]).unwrap_or("\u{FFFD}");
                    out.push_str(s);
                    self.pos += len;
                }
            }
        }
    }

    fn hex4(&mut self) -> Res<u32> {
        let digits = self.text.get(self.pos..self.pos + 4).ok_or_else(|| self.err(self.pos, "truncated \\u escape"))?;
        let s = std::str::from_utf8(digits).unwrap_or("");
        let v = u32::from_str_radix(s, 16).map_err(|_| self.err(self.pos, "invalid \\u escape"))?;
        self.pos += 4;
        Ok(v)
    }

    fn array(&mut self, depth: usize) -> Res<Node> {
        let start = self.pos;
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Node { span: Span::new(start, self.pos), value: Value::List(items) });
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Node { span: Span::new(start, self.pos), value: Value::List(items) });
                }
                None => return Err(self.err(start, "unterminated list: the file ends before its `]`")),
                Some(c) => return Err(self.err(self.pos, format!("expected `,` or `]` in a list, found {}", show(c)))),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Res<Node> {
        let start = self.pos;
        self.pos += 1;
        let mut entries: Vec<(Key, Node)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Node { span: Span::new(start, self.pos), value: Value::Map(entries) });
        }
        loop {
            self.skip_ws();
            let kstart = self.pos;
            match self.peek() {
                Some(b'"') => {}
                None => return Err(self.err(start, "unterminated object: the file ends before its `}`")),
                Some(c) => return Err(self.err(kstart, format!("expected a quoted key, found {}", show(c)))),
            }
            let name = self.string()?;
            let key = Key { name, span: Span::new(kstart, self.pos) };
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err(self.pos, format!("expected `:` after key \"{}\"", key.name)));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value(depth + 1)?;
            if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == key.name) {
                let lc = self.src.line_col(first.span.start);
                self.diagnostics.push(
                    Diagnostic::error("P0004", key.span, format!("duplicate key \"{}\"", key.name))
                        .with_hint(format!("it is first given at {}:{}; keep one of the two", lc.line, lc.column)),
                );
            } else {
                entries.push((key, value));
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Node { span: Span::new(start, self.pos), value: Value::Map(entries) });
                }
                None => return Err(self.err(start, "unterminated object: the file ends before its `}`")),
                Some(c) => {
                    return Err(self.err(self.pos, format!("expected `,` or `}}` in an object, found {}", show(c))))
                }
            }
        }
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

fn show(c: u8) -> String {
    if c.is_ascii_graphic() {
        format!("`{}`", c as char)
    } else {
        format!("byte 0x{c:02x}")
    }
}
