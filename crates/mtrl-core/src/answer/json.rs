//! The strict JSON reader of answer blocks.
//!
//! It differs from `serde_json::from_str::<Value>` in three ways, each of which matters when a
//! scorer must not be fooled:
//!
//! - a key repeated in one object is an error (serde keeps the last value, so
//!   `{"k": "a", "k": "b"}` would silently answer `"b"`);
//! - a number is never rounded: integers that fit 64 bits and decimals that an `f64` holds
//!   exactly as written become JSON numbers, and any other number (a 30-digit integer, a decimal
//!   with more digits than an `f64` keeps) is kept as the text that was written, in a JSON
//!   string, which [`values_match`](super::values_match) compares as an exact decimal;
//! - nesting is bounded ([`MAX_NESTING`]) without recursion, so no answer can exhaust the stack.

use serde_json::{Map, Number, Value};

use super::compare::Decimal;

/// The deepest nesting of arrays and objects an answer may have (serde_json's own limit).
pub const MAX_NESTING: usize = 128;

/// Why a text is not a strict JSON value, with its 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonError {
    message: String,
    line: usize,
    column: usize,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.message, self.line, self.column
        )
    }
}

/// Reads `text` as exactly one JSON value (whitespace around it allowed).
pub(crate) fn parse(text: &str) -> Result<Value, JsonError> {
    let mut r = Reader {
        s: text.as_bytes(),
        text,
        i: 0,
    };
    r.ws();
    let v = r.value()?;
    r.ws();
    if r.i != r.s.len() {
        return Err(r.error("trailing characters"));
    }
    Ok(v)
}

/// An array or object being filled, with the key waiting for its value.
enum Open {
    Array(Vec<Value>),
    Object(Map<String, Value>, String),
}

struct Reader<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Reader<'_> {
    fn error(&self, message: impl Into<String>) -> JsonError {
        let before = &self.s[..self.i.min(self.s.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
        JsonError {
            message: message.into(),
            line,
            column,
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8, what: &str) -> Result<(), JsonError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else if self.peek().is_none() {
            Err(self.error("EOF while parsing a value"))
        } else {
            Err(self.error(format!("expected {what}")))
        }
    }

    /// One value, arrays and objects kept on an explicit stack instead of the call stack.
    fn value(&mut self) -> Result<Value, JsonError> {
        let mut stack: Vec<Open> = Vec::new();
        loop {
            // Read a scalar, or open a container (and read its first element next).
            self.ws();
            let mut done = match self.peek() {
                Some(b'[') | Some(b'{') if stack.len() >= MAX_NESTING => {
                    return Err(self.error(format!(
                        "nesting deeper than {MAX_NESTING} arrays or objects"
                    )));
                }
                Some(b'[') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        Value::Array(Vec::new())
                    } else {
                        stack.push(Open::Array(Vec::new()));
                        continue;
                    }
                }
                Some(b'{') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        Value::Object(Map::new())
                    } else {
                        let key = self.key()?;
                        stack.push(Open::Object(Map::new(), key));
                        continue;
                    }
                }
                _ => self.scalar()?,
            };
            // Hand the finished value to its container, closing every container that ends.
            loop {
                let Some(top) = stack.last_mut() else {
                    return Ok(done);
                };
                self.ws();
                match top {
                    Open::Array(items) => {
                        items.push(done);
                        match self.peek() {
                            Some(b',') => {
                                self.i += 1;
                                break;
                            }
                            Some(b']') => self.i += 1,
                            None => return Err(self.error("EOF while parsing a list")),
                            Some(_) => return Err(self.error("expected `,` or `]`")),
                        }
                    }
                    Open::Object(map, key) => {
                        if map.contains_key(key.as_str()) {
                            return Err(self.error(format!(
                                "duplicate key {}",
                                Value::String(std::mem::take(key))
                            )));
                        }
                        map.insert(std::mem::take(key), done);
                        match self.peek() {
                            Some(b',') => {
                                self.i += 1;
                                self.ws();
                                *key = self.key()?;
                                break;
                            }
                            Some(b'}') => self.i += 1,
                            None => return Err(self.error("EOF while parsing an object")),
                            Some(_) => return Err(self.error("expected `,` or `}`")),
                        }
                    }
                }
                done = match stack.pop() {
                    Some(Open::Array(items)) => Value::Array(items),
                    Some(Open::Object(map, _)) => Value::Object(map),
                    None => unreachable!("the stack had a top"),
                };
            }
        }
    }

    /// An object key and its colon.
    fn key(&mut self) -> Result<String, JsonError> {
        if self.peek() != Some(b'"') {
            return Err(self.error("key must be a string"));
        }
        let key = self.string()?;
        self.ws();
        self.expect(b':', "`:`")?;
        Ok(key)
    }

    fn scalar(&mut self) -> Result<Value, JsonError> {
        match self.peek() {
            None => Err(self.error("EOF while parsing a value")),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.word("true", Value::Bool(true)),
            Some(b'f') => self.word("false", Value::Bool(false)),
            Some(b'n') => self.word("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected value")),
        }
    }

    fn word(&mut self, w: &str, v: Value) -> Result<Value, JsonError> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(self.error("expected value"))
        }
    }

    /// A number by RFC 8259's grammar, kept exact (see the module documentation).
    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.i;
        let digits = |r: &mut Self| {
            let from = r.i;
            while r.peek().is_some_and(|c| c.is_ascii_digit()) {
                r.i += 1;
            }
            r.i - from
        };
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    return Err(self.error("invalid number: leading zero"));
                }
            }
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.error("invalid number")),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            integer = false;
            if digits(self) == 0 {
                return Err(self.error("invalid number: no digit after the point"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(self.error("invalid number: no digit in the exponent"));
            }
        }
        let text = &self.text[start..self.i];
        if integer {
            if let Ok(n) = text.parse::<i64>() {
                return Ok(Value::Number(n.into()));
            }
            if let Ok(n) = text.parse::<u64>() {
                return Ok(Value::Number(n.into()));
            }
        } else if let Some(n) = text
            .parse::<f64>()
            .ok()
            .filter(|f| exact_f64(text, *f))
            .and_then(Number::from_f64)
        {
            return Ok(Value::Number(n));
        }
        Ok(Value::String(text.to_string()))
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.i += 1; // the opening quote
        let mut out = String::new();
        loop {
            let run = self.i;
            while self
                .peek()
                .is_some_and(|c| c != b'"' && c != b'\\' && c >= 0x20)
            {
                self.i += 1;
            }
            out.push_str(&self.text[run..self.i]);
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.i += 1;
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return Err(self.error("lone leading surrogate in hex escape"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.error("invalid surrogate pair in hex escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            let c = char::from_u32(code)
                                .ok_or_else(|| self.error("lone surrogate in hex escape"))?;
                            out.push(c);
                            continue;
                        }
                        _ => return Err(self.error("invalid escape")),
                    };
                    self.i += 1;
                    out.push(c);
                }
                None => return Err(self.error("EOF while parsing a string")),
                Some(_) => return Err(self.error("control character in a string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .ok_or_else(|| self.error("invalid hex escape"))?;
        self.i += 4;
        // Four ASCII hex digits: always a valid number.
        Ok(h.iter().fold(0, |n, &d| {
            n * 16 + char::from(d).to_digit(16).unwrap_or_default()
        }))
    }
}

/// Whether `f`, read from the decimal `text`, is exactly the number written.
fn exact_f64(text: &str, f: f64) -> bool {
    if !f.is_finite() {
        return false;
    }
    // An f64 is an exact binary fraction; its shortest round-trip text is the decimal it was
    // read from exactly when that decimal had no more digits than the f64 keeps.
    match (Decimal::parse(text), Decimal::parse(&format!("{f:e}"))) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn agrees_with_serde_on_ordinary_json() {
        for text in [
            r#"{"a": 1, "b": [true, false, null], "c": {"d": "e\n\u00e9\ud83d\ude00"}}"#,
            "[]",
            "{}",
            " -5 ",
            "1.5",
            "-12e-3",
            r#""a\"b\\c\/""#,
            "[[[[1]]], {}]",
            "18446744073709551615",
            "-9223372036854775808",
        ] {
            let ours = parse(text).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn refuses_what_serde_refuses() {
        for text in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "{'a': 1}",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "NaN",
            "[1] 2",
            "\"\t\"",
            "\"\\x\"",
            "\"\\ud800\"",
            "tru",
            "{\"a\":1,}",
            "[1 2]",
        ] {
            assert!(parse(text).is_err(), "{text:?} should be refused");
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_every_depth() {
        let e = parse(r#"{"k": "a", "k": "b"}"#).unwrap_err();
        assert!(e.to_string().starts_with("duplicate key \"k\""), "{e}");
        assert!(parse(r#"{"k": {"x": 1, "x": 1}}"#).is_err());
        assert!(parse(r#"[{"x": 1}, {"x": 2}]"#).is_ok());
    }

    #[test]
    fn numbers_are_never_rounded() {
        assert_eq!(
            parse("9007199254740993").unwrap(),
            json!(9007199254740993u64)
        );
        assert_eq!(parse("0.1").unwrap(), json!(0.1));
        assert_eq!(parse("1e3").unwrap(), json!(1000.0));
        // Beyond 64 bits, or more digits than an f64 keeps: the text as written.
        assert_eq!(
            parse("123456789012345678901234567890").unwrap(),
            json!("123456789012345678901234567890")
        );
        assert_eq!(
            parse("0.10000000000000000000001").unwrap(),
            json!("0.10000000000000000000001")
        );
        assert_eq!(parse("1e400").unwrap(), json!("1e400"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let ok = "[".repeat(MAX_NESTING) + &"]".repeat(MAX_NESTING);
        assert!(parse(&ok).is_ok());
        for n in [MAX_NESTING + 1, 100_000] {
            let deep = "[".repeat(n) + &"]".repeat(n);
            let e = parse(&deep).unwrap_err();
            assert!(e.to_string().contains("nesting deeper than"), "{e}");
            let deep = "{\"a\":".repeat(n) + "1" + &"}".repeat(n);
            assert!(parse(&deep).is_err());
        }
    }
}
