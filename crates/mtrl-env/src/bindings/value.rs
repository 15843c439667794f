//! The value model of tool bindings: Python values and the numpy scalars pandas hands out, with
//! Python's equality, ordering, truthiness, `str`, `repr` and `json.dumps`.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A Python value as a binding sees it.
#[derive(Debug, Clone)]
pub enum Py {
    /// `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// `int` (bounded to 64 bits here; overflow is an error, see [`PyError`]).
    Int(i64),
    /// `float`.
    Float(f64),
    /// `str`.
    Str(Arc<str>),
    /// `list`.
    List(Vec<Py>),
    /// `tuple`.
    Tuple(Vec<Py>),
    /// `dict`, in insertion order.
    Dict(Vec<(Py, Py)>),
    /// numpy `int64`.
    NpInt(i64),
    /// numpy `float64`.
    NpFloat(f64),
    /// numpy `bool`.
    NpBool(bool),
}

/// An exception raised inside a tool: the Python type name and `str()` of the exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyError {
    /// The exception class, e.g. `ValueError`.
    pub etype: String,
    /// The message.
    pub message: String,
}

impl PyError {
    /// An exception of type `etype` with `message`.
    pub fn new(etype: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            etype: etype.into(),
            message: message.into(),
        }
    }
}

/// The result of evaluating binding code.
pub type PyResult<T> = Result<T, PyError>;

/// A number, for arithmetic and comparisons.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Num {
    I(i64),
    F(f64),
}

impl Num {
    pub(crate) fn f(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }
}

impl Py {
    /// A `str` value.
    pub fn str(s: &str) -> Py {
        Py::Str(Arc::from(s))
    }

    /// Converts a JSON value as `json.loads` would (a number is an `int` when it has no
    /// fraction or exponent). Object keys come in the map's order.
    pub fn from_json(v: &serde_json::Value) -> Py {
        use serde_json::Value as J;
        match v {
            J::Null => Py::None,
            J::Bool(b) => Py::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) if !n.is_f64() => Py::Int(i),
                _ => Py::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Py::str(s),
            J::Array(a) => Py::List(a.iter().map(Py::from_json).collect()),
            J::Object(o) => Py::Dict(
                o.iter()
                    .map(|(k, v)| (Py::str(k), Py::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Whether this is a numpy scalar.
    pub fn is_np(&self) -> bool {
        matches!(self, Py::NpInt(_) | Py::NpFloat(_) | Py::NpBool(_))
    }

    /// The number inside a `bool`, `int`, `float` or numpy scalar.
    pub(crate) fn num(&self) -> Option<Num> {
        Some(match self {
            Py::Bool(b) | Py::NpBool(b) => Num::I(i64::from(*b)),
            Py::Int(i) | Py::NpInt(i) => Num::I(*i),
            Py::Float(f) | Py::NpFloat(f) => Num::F(*f),
            _ => return None,
        })
    }

    /// Whether this is a float NaN (Python or numpy).
    pub fn is_nan(&self) -> bool {
        matches!(self, Py::Float(f) | Py::NpFloat(f) if f.is_nan())
    }

    /// The Python type name, as error messages show it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Py::None => "NoneType",
            Py::Bool(_) => "bool",
            Py::Int(_) => "int",
            Py::Float(_) => "float",
            Py::Str(_) => "str",
            Py::List(_) => "list",
            Py::Tuple(_) => "tuple",
            Py::Dict(_) => "dict",
            Py::NpInt(_) => "numpy.int64",
            Py::NpFloat(_) => "numpy.float64",
            Py::NpBool(_) => "numpy.bool",
        }
    }

    /// Python truthiness (NaN is truthy).
    pub fn truthy(&self) -> bool {
        match self {
            Py::None => false,
            Py::Bool(b) | Py::NpBool(b) => *b,
            Py::Int(i) | Py::NpInt(i) => *i != 0,
            Py::Float(f) | Py::NpFloat(f) => *f != 0.0,
            Py::Str(s) => !s.is_empty(),
            Py::List(v) | Py::Tuple(v) => !v.is_empty(),
            Py::Dict(d) => !d.is_empty(),
        }
    }

    /// Python `==`: numbers by value across kinds, containers deeply, NaN unequal to itself.
    pub fn py_eq(&self, other: &Py) -> bool {
        if let (Some(a), Some(b)) = (self.num(), other.num()) {
            return num_eq(a, b);
        }
        match (self, other) {
            (Py::None, Py::None) => true,
            (Py::Str(a), Py::Str(b)) => a == b,
            (Py::List(a), Py::List(b)) | (Py::Tuple(a), Py::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.py_eq(y))
            }
            (Py::Dict(a), Py::Dict(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, v)| dict_get(b, k).is_some_and(|w| v.py_eq(w)))
            }
            _ => false,
        }
    }

    /// Python `str()`.
    pub fn py_str(&self) -> String {
        match self {
            Py::Str(s) => s.to_string(),
            Py::None => "None".into(),
            Py::Bool(b) | Py::NpBool(b) => if *b { "True" } else { "False" }.into(),
            Py::Int(i) | Py::NpInt(i) => i.to_string(),
            Py::Float(f) | Py::NpFloat(f) => float_repr(*f),
            _ => self.py_repr(),
        }
    }

    /// Python `repr()` (numpy 2 style for numpy scalars).
    pub fn py_repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out);
        out
    }

    fn write_repr(&self, out: &mut String) {
        match self {
            Py::Str(s) => out.push_str(&str_repr(s)),
            Py::NpInt(i) => {
                let _ = write!(out, "np.int64({i})");
            }
            Py::NpFloat(f) => {
                let _ = write!(out, "np.float64({})", float_repr(*f));
            }
            Py::NpBool(b) => out.push_str(if *b { "np.True_" } else { "np.False_" }),
            Py::List(v) => {
                out.push('[');
                join_repr(v, out);
                out.push(']');
            }
            Py::Tuple(v) => {
                out.push('(');
                join_repr(v, out);
                if v.len() == 1 {
                    out.push(',');
                }
                out.push(')');
            }
            Py::Dict(d) => {
                out.push('{');
                for (i, (k, v)) in d.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_repr(out);
                    out.push_str(": ");
                    v.write_repr(out);
                }
                out.push('}');
            }
            other => out.push_str(&other.py_str()),
        }
    }

    /// `json.dumps(value)` with CPython's defaults (`", "` and `": "` separators, ASCII
    /// escapes, `NaN`/`Infinity` literals).
    ///
    /// # Errors
    /// The `TypeError` CPython raises for numpy `int64`/`bool` values and bad dict keys.
    pub fn json_dumps(&self) -> PyResult<String> {
        let mut out = String::with_capacity(512);
        self.write_json(&mut out, false)?;
        Ok(out)
    }

    /// As [`Py::json_dumps`], but valid JSON: NaN and infinities become `null`.
    ///
    /// # Errors
    /// As [`Py::json_dumps`].
    pub fn json_dumps_strict(&self) -> PyResult<String> {
        let mut out = String::with_capacity(512);
        self.write_json(&mut out, true)?;
        Ok(out)
    }

    fn write_json(&self, out: &mut String, strict: bool) -> PyResult<()> {
        match self {
            Py::None => out.push_str("null"),
            Py::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Py::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Py::Float(f) | Py::NpFloat(f) if strict && !f.is_finite() => out.push_str("null"),
            Py::Float(f) | Py::NpFloat(f) => write_json_float(*f, out),
            Py::Str(s) => json_str(s, out),
            Py::List(v) | Py::Tuple(v) => {
                out.push('[');
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    x.write_json(out, strict)?;
                }
                out.push(']');
            }
            Py::Dict(d) => {
                out.push('{');
                for (i, (k, v)) in d.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let key = match k {
                        Py::Str(s) => s.to_string(),
                        Py::Bool(b) => if *b { "true" } else { "false" }.into(),
                        Py::None => "null".into(),
                        Py::Int(i) => i.to_string(),
                        Py::Float(f) => {
                            let mut key = String::new();
                            write_json_float(*f, &mut key);
                            key
                        }
                        other => {
                            return Err(PyError::new(
                                "TypeError",
                                format!(
                                    "keys must be str, int, float, bool or None, not {}",
                                    other.type_name()
                                ),
                            ));
                        }
                    };
                    json_str(&key, out);
                    out.push_str(": ");
                    v.write_json(out, strict)?;
                }
                out.push('}');
            }
            Py::NpInt(_) => {
                return Err(PyError::new(
                    "TypeError",
                    "Object of type int64 is not JSON serializable",
                ));
            }
            Py::NpBool(_) => {
                return Err(PyError::new(
                    "TypeError",
                    "Object of type bool is not JSON serializable",
                ));
            }
        }
        Ok(())
    }

    /// Strict structural equality: same types (`1` ≠ `1.0` ≠ `True`), same values, dict key
    /// order counts except in the dicts at `unordered` paths (dotted, from the root `""`).
    pub fn same(&self, other: &Py, path: &str, unordered: &[String]) -> bool {
        match (self, other) {
            (Py::None, Py::None) => true,
            (Py::Bool(a), Py::Bool(b)) | (Py::NpBool(a), Py::NpBool(b)) => a == b,
            (Py::Int(a), Py::Int(b)) | (Py::NpInt(a), Py::NpInt(b)) => a == b,
            (Py::Float(a), Py::Float(b)) | (Py::NpFloat(a), Py::NpFloat(b)) => {
                (a.is_nan() && b.is_nan()) || a == b
            }
            (Py::Str(a), Py::Str(b)) => a == b,
            (Py::List(a), Py::List(b)) | (Py::Tuple(a), Py::Tuple(b)) => {
                let p = format!("{path}[]");
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(y, &p, unordered))
            }
            (Py::Dict(a), Py::Dict(b)) => {
                if a.len() != b.len() {
                    return false;
                }
                let key_path = |k: &Py| format!("{path}.{}", k.py_str());
                if unordered.iter().any(|u| u == path.trim_start_matches('.')) {
                    a.iter().all(|(k, v)| {
                        b.iter()
                            .find(|(k2, _)| k.same(k2, "", &[]))
                            .is_some_and(|(_, w)| v.same(w, &key_path(k), unordered))
                    })
                } else {
                    a.iter().zip(b).all(|((k, v), (k2, w))| {
                        k.same(k2, "", &[]) && v.same(w, &key_path(k), unordered)
                    })
                }
            }
            _ => false,
        }
    }
}

fn join_repr(v: &[Py], out: &mut String) {
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        x.write_repr(out);
    }
}

fn num_eq(a: Num, b: Num) -> bool {
    match (a, b) {
        (Num::I(x), Num::I(y)) => x == y,
        _ => a.f() == b.f(),
    }
}

/// The value under key `k` of a dict, by Python equality.
pub(crate) fn dict_get<'a>(d: &'a [(Py, Py)], k: &Py) -> Option<&'a Py> {
    d.iter().find(|(k2, _)| k2.py_eq(k)).map(|(_, v)| v)
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation for decimal
/// exponents from -5 to 15 and in scientific notation outside.
pub fn float_repr(f: f64) -> String {
    let mut out = String::new();
    write_float_repr(f, &mut out);
    out
}

/// Writes Python's `repr(float)` (see [`float_repr`]).
fn write_float_repr(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("nan");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "inf" } else { "-inf" });
        return;
    }
    // In Python's fixed-notation range, Rust's shortest round-trip `Display` has the same
    // digits; Python adds `.0` to whole numbers.
    let a = f.abs();
    if a == 0.0 || (1e-4..1e16).contains(&a) {
        let start = out.len();
        let _ = write!(out, "{f}");
        if !out[start..].contains('.') {
            out.push_str(".0");
        }
        return;
    }
    // Outside it, scientific notation. Rust's `{:e}` gives the shortest round-trip digits
    // (`-1.2345e-7`); Python writes a signed exponent of at least two digits.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("the exponent is an integer");
    let esign = if exp < 0 { '-' } else { '+' };
    let _ = write!(out, "{mantissa}e{esign}{:02}", exp.abs());
}

/// Writes a float as `json.dumps` does: `NaN` and `Infinity` as bare literals.
fn write_json_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        write_float_repr(f, out);
    }
}

fn json_str(s: &str, out: &mut String) {
    out.push('"');
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(s);
        out.push('"');
        return;
    }
    // Copy runs of plain printable ASCII at once; escape the rest.
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            continue;
        }
        if b >= 0x80 && !s.is_char_boundary(i) {
            continue;
        }
        out.push_str(&s[start..i]);
        if b < 0x80 {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\r' => out.push_str("\\r"),
                b'\t' => out.push_str("\\t"),
                0x08 => out.push_str("\\b"),
                0x0c => out.push_str("\\f"),
                _ => {
                    let _ = write!(out, "\\u{:04x}", b);
                }
            }
            start = i + 1;
        } else {
            let ch = s[i..].chars().next().expect("a char starts here");
            let mut buf = [0u16; 2];
            for unit in ch.encode_utf16(&mut buf) {
                let _ = write!(out, "\\u{unit:04x}");
            }
            start = i + ch.len_utf8();
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Python's `repr(str)`.
pub fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

impl<'de> Deserialize<'de> for Py {
    /// JSON to Python as `json.loads` does it: objects keep their key order, and a number is an
    /// `int` unless its text has a `.`, `e` or `E`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Py;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Py, E> {
                Ok(Py::None)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Py, E> {
                Ok(Py::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Py, E> {
                Ok(Py::Int(i))
            }
            fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<Py, E> {
                i64::try_from(u)
                    .map(Py::Int)
                    .map_err(|_| E::custom("integer out of the 64-bit range"))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Py, E> {
                Ok(Py::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<Py, E> {
                Ok(Py::str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Py, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(Py::List(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Py, A::Error> {
                let mut d: Vec<(Py, Py)> = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some((k, v)) = map.next_entry::<Py, Py>()? {
                    // A repeated key keeps its first position and takes the last value.
                    let same = |k2: &Py| match (k2, &k) {
                        (Py::Str(a), Py::Str(b)) => a == b,
                        (a, b) => a.py_eq(b),
                    };
                    match d.iter_mut().find(|(k2, _)| same(k2)) {
                        Some(slot) => slot.1 = v,
                        None => d.push((k, v)),
                    }
                }
                Ok(Py::Dict(d))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.1, "0.1"),
            (5.0, "5.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e16, "1.5e+16"),
            (123.456, "123.456"),
            (-0.0, "-0.0"),
            (2.5e-7, "2.5e-07"),
            (1e100, "1e+100"),
            (0.30000000000000004, "0.30000000000000004"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "{f:e}");
        }
    }

    #[test]
    fn json_dumps_matches_python() {
        let v: Py =
            serde_json::from_str(r#"{"b": [1, 2.0, "é🦀\n"], "a": null, "c": true}"#).unwrap();
        assert_eq!(
            v.json_dumps().unwrap(),
            r#"{"b": [1, 2.0, "\u00e9\ud83e\udd80\n"], "a": null, "c": true}"#
        );
        assert_eq!(Py::Float(f64::NAN).json_dumps().unwrap(), "NaN");
        assert!(Py::NpInt(3).json_dumps().is_err());
        assert_eq!(Py::NpFloat(0.5).json_dumps().unwrap(), "0.5");
    }

    #[test]
    fn repr_and_str_match_python() {
        assert_eq!(Py::str("it's").py_repr(), "\"it's\"");
        assert_eq!(Py::str("a\"b'c").py_repr(), "'a\"b\\'c'");
        assert_eq!(
            Py::Tuple(vec![Py::Int(150), Py::Int(86), Py::Float(0.84)]).py_str(),
            "(150, 86, 0.84)"
        );
        assert_eq!(Py::Tuple(vec![Py::Int(1)]).py_repr(), "(1,)");
        assert_eq!(Py::NpBool(true).py_repr(), "np.True_");
        assert_eq!(Py::NpFloat(2.0).py_str(), "2.0");
        let d = Py::Dict(vec![(
            Py::str("k"),
            Py::List(vec![Py::None, Py::Bool(false)]),
        )]);
        assert_eq!(d.py_str(), "{'k': [None, False]}");
    }

    #[test]
    fn equality_and_truth() {
        assert!(Py::Bool(true).py_eq(&Py::Int(1)));
        assert!(Py::Int(5).py_eq(&Py::NpFloat(5.0)));
        assert!(!Py::Float(f64::NAN).py_eq(&Py::Float(f64::NAN)));
        assert!(!Py::str("5").py_eq(&Py::Int(5)));
        assert!(Py::Float(f64::NAN).truthy());
        assert!(!Py::Dict(vec![]).truthy());
        assert!(!Py::Int(1).same(&Py::Float(1.0), "", &[]));
    }
}

/// Parses JSON text into a [`Py`] the way `json.loads` reads it (key order kept, a number is an
/// `int` unless its text has a `.`, `e` or `E`), faster than going through serde for the small
/// objects tool calls carry. `None` for anything that is not strict JSON or does not fit the
/// model (an integer beyond 64 bits); the caller then asks `serde_json`, which explains.
pub fn parse_json(text: &str) -> Option<Py> {
    parse_json_with_keys(text, &[])
}

/// As [`parse_json`], taking the keys of the top-level object from `keys` when they are there
/// (shared, not allocated: a tool's argument names).
pub fn parse_json_with_keys(text: &str, keys: &[Arc<str>]) -> Option<Py> {
    let mut p = JsonParser {
        b: text.as_bytes(),
        s: text,
        i: 0,
        keys,
    };
    let v = p.value(0)?;
    p.ws();
    (p.i == p.b.len()).then_some(v)
}

struct JsonParser<'a> {
    b: &'a [u8],
    s: &'a str,
    i: usize,
    keys: &'a [Arc<str>],
}

impl<'a> JsonParser<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    fn value(&mut self, depth: usize) -> Option<Py> {
        if depth > JSON_MAX_NESTING {
            return None;
        }
        self.ws();
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut d: Vec<(Py, Py)> = Vec::with_capacity(4);
                self.ws();
                if self.eat(b'}').is_some() {
                    return Some(Py::Dict(d));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.ws();
                    self.eat(b':')?;
                    let v = self.value(depth + 1)?;
                    // A repeated key keeps its first position and takes the last value.
                    match d
                        .iter_mut()
                        .find(|(k2, _)| matches!(k2, Py::Str(s) if **s == *k))
                    {
                        Some(slot) => slot.1 = v,
                        None => {
                            let known = (depth == 0)
                                .then(|| self.keys.iter().find(|n| ***n == *k))
                                .flatten();
                            let key = match known {
                                Some(n) => n.clone(),
                                None => Arc::from(k.as_ref()),
                            };
                            d.push((Py::Str(key), v));
                        }
                    }
                    self.ws();
                    if self.eat(b',').is_none() {
                        self.eat(b'}')?;
                        return Some(Py::Dict(d));
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat(b']').is_some() {
                    return Some(Py::List(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(b',').is_none() {
                        self.eat(b']')?;
                        return Some(Py::List(items));
                    }
                }
            }
            b'"' => self.string().map(|s| Py::Str(Arc::from(s.as_ref()))),
            b't' => self.word("true", Py::Bool(true)),
            b'f' => self.word("false", Py::Bool(false)),
            b'n' => self.word("null", Py::None),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn word(&mut self, w: &str, v: Py) -> Option<Py> {
        if self.s[self.i..].starts_with(w) {
            self.i += w.len();
            Some(v)
        } else {
            None
        }
    }

    fn number(&mut self) -> Option<Py> {
        let start = self.i;
        self.eat(b'-');
        match self.b.get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                    self.i += 1;
                }
            }
            _ => return None,
        }
        let mut float = false;
        if self.eat(b'.').is_some() {
            float = true;
            let digits = self.i;
            while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            if self.i == digits {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            float = true;
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            let digits = self.i;
            while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            if self.i == digits {
                return None;
            }
        }
        let text = &self.s[start..self.i];
        if float {
            // Rust's parse is correctly rounded, like CPython's.
            text.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Py::Float)
        } else {
            text.parse::<i64>().ok().map(Py::Int)
        }
    }

    /// A string, borrowed when it has no escapes.
    fn string(&mut self) -> Option<std::borrow::Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.i;
        let text: &'a str = self.s;
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    let s = &text[start..self.i];
                    self.i += 1;
                    return Some(std::borrow::Cow::Borrowed(s));
                }
                b'\\' => break,
                0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        let mut out = String::from(&self.s[start..self.i]);
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return Some(std::borrow::Cow::Owned(out));
                }
                b'\\' => {
                    self.i += 1;
                    let e = *self.b.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xd800..0xdc00).contains(&hi) {
                                // A surrogate pair; a lone surrogate is not valid here.
                                if self.s[self.i..].starts_with("\\u") {
                                    self.i += 2;
                                    let lo = self.hex4()?;
                                    if !(0xdc00..0xe000).contains(&lo) {
                                        return None;
                                    }
                                    char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00))?
                                } else {
                                    return None;
                                }
                            } else {
                                char::from_u32(hi)?
                            };
                            out.push(c);
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => {
                    let ch = self.s[self.i..].chars().next()?;
                    out.push(ch);
                    self.i += ch.len_utf8();
                }
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.s.get(self.i..self.i + 4)?;
        self.i += 4;
        u32::from_str_radix(h, 16).ok()
    }
}

/// The deepest nesting of arrays and objects the JSON readers take: serde_json's limit, which
/// the fast reader shares so that both refuse the same texts.
pub const JSON_MAX_NESTING: usize = 128;

/// How deeply JSON text nests arrays and objects, counting brackets outside strings (a cheap
/// scan that never recurses, for texts that are not even valid JSON).
pub(crate) fn json_nesting(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn parse_json_agrees_with_serde() {
        let cases = [
            r#"{"a": 1, "b": 2.0, "c": "x\"y\u00e9\ud83e\udd80", "d": [true, false, null], "e": {}}"#,
            r#"{"z": 1, "a": 2, "z": 3}"#,
            r#"[1e3, -0.5, 0, 12345678901234]"#,
            r#""plain""#,
            r#"  {"k" : [ ] }  "#,
            r#"{"x": "tab\tnewline\n"}"#,
        ];
        for text in cases {
            let ours = parse_json(text).unwrap();
            let serde: Py = serde_json::from_str(text).unwrap();
            assert!(ours.same(&serde, "", &[]), "{text}: {ours:?} vs {serde:?}");
        }
        // As json.loads: `-0` is the int 0 (serde_json reads it as the float -0.0).
        assert!(matches!(parse_json("-0"), Some(Py::Int(0))));
        for bad in [
            "{",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "1.",
            "\"\\x\"",
            "tru",
            "{\"a\":1}}",
            "\"\u{1}\"",
            "99999999999999999999",
            "\"\\ud800\"",
            "1e999",
        ] {
            assert!(parse_json(bad).is_none(), "{bad:?} should be refused");
        }
    }
}
