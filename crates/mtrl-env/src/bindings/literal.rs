//! Python's `ast.literal_eval` for the literals bindings read from table cells: strings,
//! numbers, `True`/`False`/`None`, lists, tuples and dicts.

use super::value::{Py, PyError, PyResult};

/// The deepest bracket nesting the reader accepts: CPython's tokenizer refuses more than 200
/// open brackets with `SyntaxError: too many nested parentheses`, and so does this reader,
/// which keeps its recursion (and the stack of the thread it runs on) bounded whatever the
/// text holds.
pub const MAX_NESTING: usize = 200;

/// Evaluates a Python literal.
///
/// # Errors
/// `SyntaxError` for text that does not parse, `ValueError` for a parse that is not a literal
/// this model holds (a set, a call, a name).
pub fn literal_eval(text: &str) -> PyResult<Py> {
    let mut p = Parser {
        s: text.as_bytes(),
        src: text,
        i: 0,
        depth: 0,
    };
    p.ws();
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.syntax("unexpected trailing text"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
    /// Brackets open at the reading position.
    depth: usize,
}

impl Parser<'_> {
    fn syntax(&self, what: &str) -> PyError {
        PyError::new(
            "SyntaxError",
            format!(
                "invalid syntax: {what} (<unknown>, line 1, offset {})",
                self.i + 1
            ),
        )
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Steps into a bracket, refusing to nest deeper than [`MAX_NESTING`].
    fn open(&mut self) -> PyResult<()> {
        if self.depth >= MAX_NESTING {
            // CPython's text, `str()` of the exception.
            return Err(PyError::new(
                "SyntaxError",
                "too many nested parentheses (<unknown>, line 1)",
            ));
        }
        self.depth += 1;
        self.i += 1;
        Ok(())
    }

    fn value(&mut self) -> PyResult<Py> {
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                // The common case first: one literal without escapes, read in place.
                let body = &self.s[self.i + 1..];
                if let Some(end) = body
                    .iter()
                    .position(|&c| c == q || c == b'\\' || c == b'\n')
                {
                    if body[end] == q {
                        let after = self.i + 1 + end + 1;
                        let mut j = after;
                        while matches!(self.s.get(j), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                            j += 1;
                        }
                        if !matches!(self.s.get(j), Some(b'\'' | b'"')) {
                            let text = &self.src[self.i + 1..self.i + 1 + end];
                            self.i = after;
                            return Ok(Py::str(text));
                        }
                    }
                }
                // Adjacent string literals concatenate.
                let mut out = self.string()?;
                loop {
                    let save = self.i;
                    self.ws();
                    if matches!(self.peek(), Some(b'\'' | b'"')) {
                        out.push_str(&self.string()?);
                    } else {
                        self.i = save;
                        break;
                    }
                }
                Ok(Py::str(&out))
            }
            Some(b'[') => {
                self.open()?;
                let items = self.items(b']')?;
                self.depth -= 1;
                Ok(Py::List(items))
            }
            Some(b'(') => {
                self.open()?;
                let start = self.i;
                let items = self.items(b')')?;
                self.depth -= 1;
                // `(x)` is x; `(x,)` and `()` are tuples.
                let had_comma = self.src[start..self.i]
                    .trim_end()
                    .trim_end_matches(')')
                    .trim_end()
                    .ends_with(',');
                if items.len() == 1 && !had_comma {
                    Ok(items.into_iter().next().expect("one item"))
                } else {
                    Ok(Py::Tuple(items))
                }
            }
            Some(b'{') => {
                self.open()?;
                let dict = self.dict()?;
                self.depth -= 1;
                Ok(dict)
            }
            Some(b'-' | b'+' | b'0'..=b'9' | b'.') => self.number(),
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
                {
                    self.i += 1;
                }
                let end = self.i;
                self.ws();
                if self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
                {
                    return Err(self.syntax("two names side by side"));
                }
                match &self.src[start..end] {
                    "True" => Ok(Py::Bool(true)),
                    "False" => Ok(Py::Bool(false)),
                    "None" => Ok(Py::None),
                    name => Err(PyError::new(
                        "ValueError",
                        format!("malformed node or string: Name(id='{name}')"),
                    )),
                }
            }
            _ => Err(self.syntax("expected a literal")),
        }
    }

    fn items(&mut self, close: u8) -> PyResult<Vec<Py>> {
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(out);
            }
            out.push(self.value()?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => return Err(self.syntax("expected ',' or a closing bracket")),
            }
        }
    }

    fn dict(&mut self) -> PyResult<Py> {
        let mut out: Vec<(Py, Py)> = Vec::new();
        loop {
            self.ws();
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(Py::Dict(out));
            }
            let k = self.value()?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(PyError::new(
                    "ValueError",
                    "malformed node or string: sets are not supported",
                ));
            }
            self.i += 1;
            self.ws();
            let v = self.value()?;
            if matches!(k, Py::List(_) | Py::Dict(_)) {
                return Err(PyError::new(
                    "TypeError",
                    format!("unhashable type: '{}'", k.type_name()),
                ));
            }
            match out.iter_mut().find(|(k2, _)| k2.py_eq(&k)) {
                Some(slot) => slot.1 = v,
                None => out.push((k, v)),
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Py::Dict(out));
                }
                _ => return Err(self.syntax("expected ',' or '}'")),
            }
        }
    }

    fn number(&mut self) -> PyResult<Py> {
        let start = self.i;
        let mut negative = false;
        while let Some(c @ (b'-' | b'+')) = self.peek() {
            negative ^= c == b'-';
            self.i += 1;
            self.ws();
        }
        let body_start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_'))
            || (matches!(self.peek(), Some(b'+' | b'-'))
                && matches!(self.s.get(self.i - 1), Some(b'e' | b'E')))
        {
            self.i += 1;
        }
        let raw = &self.src[body_start..self.i];
        let body: std::borrow::Cow<'_, str> = if raw.contains('_') {
            raw.replace('_', "").into()
        } else {
            raw.into()
        };
        if body.is_empty() {
            self.i = start;
            return Err(self.syntax("expected a number"));
        }
        let is_float = body.contains(['.', 'e', 'E']);
        if !is_float {
            if let Ok(v) = body.parse::<i64>() {
                return Ok(Py::Int(if negative { -v } else { v }));
            }
        }
        match body.parse::<f64>() {
            Ok(v)
                if body.bytes().all(|c| {
                    c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-')
                }) =>
            {
                Ok(Py::Float(if negative { -v } else { v }))
            }
            _ => Err(self.syntax("invalid number")),
        }
    }

    fn string(&mut self) -> PyResult<String> {
        let quote = self.s[self.i];
        self.i += 1;
        let mut out = String::new();
        let rest = &self.src[self.i..];
        let mut chars = rest.char_indices();
        while let Some((off, c)) = chars.next() {
            if c as u32 == u32::from(quote) {
                self.i += off + 1;
                return Ok(out);
            }
            if c == '\n' {
                break;
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some((_, e)) = chars.next() else { break };
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                'a' => out.push('\u{7}'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'v' => out.push('\u{b}'),
                '\n' => {}
                'x' | 'u' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = (0..n)
                        .filter_map(|_| chars.next().map(|(_, h)| h))
                        .collect();
                    let ch = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                    match ch {
                        Some(ch) if hex.len() == n => out.push(ch),
                        _ => return Err(self.syntax("bad escape in a string")),
                    }
                }
                '\\' | '\'' | '"' => out.push(e),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
        }
        Err(self.syntax("unterminated string literal"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        let v = literal_eval("['Slow speeds', \"it's\", 3, -2.5, (1,), (), None, {'a': True}]")
            .unwrap();
        assert_eq!(
            v.py_repr(),
            "['Slow speeds', \"it's\", 3, -2.5, (1,), (), None, {'a': True}]"
        );
        assert_eq!(literal_eval("(5)").unwrap().py_repr(), "5");
        assert_eq!(literal_eval("'a' 'b'").unwrap().py_repr(), "'ab'");
        assert_eq!(literal_eval("1e3").unwrap().py_repr(), "1000.0");
        assert_eq!(literal_eval(" 'x\\n' ").unwrap().py_str(), "x\n");
    }

    #[test]
    fn bad_literals() {
        assert_eq!(literal_eval("[1, 2").unwrap_err().etype, "SyntaxError");
        assert_eq!(
            literal_eval("Slow speeds").unwrap_err().etype,
            "SyntaxError"
        );
        assert_eq!(literal_eval("foo").unwrap_err().etype, "ValueError");
        assert_eq!(literal_eval("{1, 2}").unwrap_err().etype, "ValueError");
        assert_eq!(literal_eval("'open").unwrap_err().etype, "SyntaxError");
    }

    #[test]
    fn nesting_is_bounded_like_cpython() {
        let nested = |n: usize, open: &str, close: &str| open.repeat(n) + &close.repeat(n);
        // 200 levels parse (CPython 3.11 accepts them too)…
        let ok = literal_eval(&nested(MAX_NESTING, "[", "]")).unwrap();
        assert_eq!(ok.py_repr().len(), 2 * MAX_NESTING);
        // …one more is CPython's tokenizer error, whatever the bracket, and far deeper text
        // is refused the same way instead of overflowing the stack.
        for (open, close) in [("[", "]"), ("(", ")"), ("{1: ", "}")] {
            for n in [MAX_NESTING + 1, 10_000, 1_000_000] {
                let e = literal_eval(&nested(n, open, close)).unwrap_err();
                assert_eq!(e.etype, "SyntaxError", "{open} × {n}");
                assert!(
                    e.message.starts_with("too many nested parentheses"),
                    "{e:?}"
                );
            }
        }
        // Unclosed deep text is refused at the same depth.
        let e = literal_eval(&"[".repeat(50_000)).unwrap_err();
        assert!(e.message.starts_with("too many nested parentheses"));
    }
}
