//! A fast JSON Schema check on [`Py`] values, for the subset of keywords tool specs use
//! (`type`, `properties`, `required`, `additionalProperties: bool`, `enum`, `pattern`,
//! `minimum`, `maximum`, `minLength`, `maxLength`, `items`, `minItems`, `maxItems`, and the
//! annotations). A schema with any other keyword is not compiled, and callers use the
//! `jsonschema` crate instead; on a failure, callers also ask `jsonschema` for the messages.
//! A test checks that both agree on every SOP-Bench call.

use std::sync::Arc;

use regex::Regex;
use serde_json::Value;

use super::value::Py;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JType {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
}

/// A compiled schema (see the module docs for the keywords it covers).
#[derive(Debug, Clone, Default)]
pub struct FastSchema {
    types: Option<Vec<JType>>,
    properties: Vec<(Arc<str>, FastSchema)>,
    required: Vec<Arc<str>>,
    closed: bool,
    pattern: Option<(Pattern, String)>,
    choices: Option<Vec<Py>>,
    minimum: Option<(f64, Option<String>)>,
    maximum: Option<(f64, Option<String>)>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    items: Option<Box<FastSchema>>,
    min_items: Option<usize>,
    max_items: Option<usize>,
}

impl FastSchema {
    /// Compiles a schema, or `None` when it uses a keyword this subset does not cover.
    pub fn compile(schema: &Value) -> Option<Self> {
        let obj = schema.as_object()?;
        let mut s = FastSchema::default();
        for (key, v) in obj {
            match key.as_str() {
                "description" | "examples" | "example" | "title" | "default" | "$comment"
                | "format" => {}
                "type" => {
                    let names: Vec<&str> = match v {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(a) => a.iter().map(Value::as_str).collect::<Option<_>>()?,
                        _ => return None,
                    };
                    let types = names
                        .into_iter()
                        .map(|n| {
                            Some(match n {
                                "null" => JType::Null,
                                "boolean" => JType::Boolean,
                                "integer" => JType::Integer,
                                "number" => JType::Number,
                                "string" => JType::String,
                                "array" => JType::Array,
                                "object" => JType::Object,
                                _ => return None,
                            })
                        })
                        .collect::<Option<Vec<_>>>()?;
                    s.types = Some(types);
                }
                "properties" => {
                    for (name, sub) in v.as_object()? {
                        s.properties
                            .push((Arc::from(name.as_str()), FastSchema::compile(sub)?));
                    }
                }
                "required" => {
                    s.required = v
                        .as_array()?
                        .iter()
                        .map(|r| r.as_str().map(Arc::from))
                        .collect::<Option<_>>()?;
                }
                "additionalProperties" => s.closed = !v.as_bool()?,
                "pattern" => {
                    let p = v.as_str()?;
                    s.pattern = Some((Pattern::compile(p)?, p.to_string()));
                }
                "enum" => {
                    s.choices = Some(v.as_array()?.iter().map(Py::from_json).collect());
                }
                "minimum" => s.minimum = Some((v.as_f64()?, v.as_i64().map(|i| i.to_string()))),
                "maximum" => s.maximum = Some((v.as_f64()?, v.as_i64().map(|i| i.to_string()))),
                "minLength" => s.min_length = Some(usize::try_from(v.as_u64()?).ok()?),
                "maxLength" => s.max_length = Some(usize::try_from(v.as_u64()?).ok()?),
                "minItems" => s.min_items = Some(usize::try_from(v.as_u64()?).ok()?),
                "maxItems" => s.max_items = Some(usize::try_from(v.as_u64()?).ok()?),
                "items" if v.is_object() => s.items = Some(Box::new(FastSchema::compile(v)?)),
                _ => return None,
            }
        }
        Some(s)
    }

    /// Whether `v` is valid and, when `v` is an object, has no key the schema does not
    /// declare (strict mode's rule, whatever `additionalProperties` says).
    pub fn is_valid_closed(&self, v: &Py) -> bool {
        self.check(v, !self.properties.is_empty())
    }

    /// Whether `v` is valid.
    pub fn is_valid(&self, v: &Py) -> bool {
        self.check(v, false)
    }

    /// Validates; `closed` refuses undeclared keys of this (top-level) object.
    fn check(&self, v: &Py, closed: bool) -> bool {
        if let Some(types) = &self.types {
            if !types.iter().any(|t| has_type(v, *t)) {
                return false;
            }
        }
        if let Some(choices) = &self.choices {
            if !choices.iter().any(|c| json_eq(c, v)) {
                return false;
            }
        }
        match v {
            Py::Str(s) => {
                if let Some((re, _)) = &self.pattern {
                    if !re.is_match(s) {
                        return false;
                    }
                }
                if self.min_length.is_some() || self.max_length.is_some() {
                    let n = s.chars().count();
                    if self.min_length.is_some_and(|m| n < m)
                        || self.max_length.is_some_and(|m| n > m)
                    {
                        return false;
                    }
                }
            }
            Py::Int(_) | Py::Float(_) => {
                let f = v.num().map(|n| n.f()).unwrap_or(f64::NAN);
                if self.minimum.as_ref().is_some_and(|(m, _)| f < *m)
                    || self.maximum.as_ref().is_some_and(|(m, _)| f > *m)
                {
                    return false;
                }
            }
            Py::List(items) => {
                if self.min_items.is_some_and(|m| items.len() < m)
                    || self.max_items.is_some_and(|m| items.len() > m)
                {
                    return false;
                }
                if let Some(schema) = &self.items {
                    if !items.iter().all(|x| schema.is_valid(x)) {
                        return false;
                    }
                }
            }
            Py::Dict(d) => {
                // Keys parsed with `names()` share these strings, so pointers usually decide.
                let same = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b) || a == b;
                let has = |name: &Arc<str>| {
                    d.iter()
                        .any(|(k, _)| matches!(k, Py::Str(s) if same(s, name)))
                };
                if !self.required.iter().all(has) {
                    return false;
                }
                for (k, value) in d {
                    let Py::Str(k) = k else { return false };
                    match self.properties.iter().find(|(n, _)| same(n, k)) {
                        Some((_, sub)) if !sub.is_valid(value) => return false,
                        Some(_) => {}
                        None if self.closed || closed => return false,
                        None => {}
                    }
                }
            }
            _ => {}
        }
        true
    }
}

impl FastSchema {
    /// The schema of a declared property.
    pub fn property(&self, name: &str) -> Option<&FastSchema> {
        self.properties
            .iter()
            .find(|(n, _)| **n == *name)
            .map(|(_, s)| s)
    }

    /// The required property names.
    pub fn required(&self) -> impl Iterator<Item = &str> {
        self.required.iter().map(|r| &**r)
    }

    /// The declared property names, as shared strings (parse arguments with them).
    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.properties.iter().map(|(n, _)| n)
    }

    /// Uses `names` (equal strings held elsewhere, such as a binding's parameter names) for the
    /// declared properties, so that comparisons between them compare pointers.
    pub fn share_names(&mut self, names: &[Arc<str>]) {
        let swap = |n: &mut Arc<str>| {
            if let Some(shared) = names.iter().find(|m| **m == *n) {
                *n = shared.clone();
            }
        };
        self.properties.iter_mut().for_each(|(n, _)| swap(n));
        self.required.iter_mut().for_each(swap);
    }

    /// Why `v` fails this (leaf) schema, as `(rank, message)` pairs in the order type, enum,
    /// minLength, maxLength, pattern, minimum, maximum, minItems, maxItems, worded as the
    /// `jsonschema` crate words them. `None` when a failure cannot be worded exactly that way
    /// (floats, objects, several types, failing array items): the caller then asks
    /// `jsonschema`.
    pub fn explain(&self, v: &Py) -> Option<Vec<(u8, String)>> {
        let mut out = Vec::new();
        let inst = || render(v);
        if let Some(types) = &self.types {
            if !types.iter().any(|t| has_type(v, *t)) {
                let [t] = types.as_slice() else { return None };
                out.push((
                    0,
                    format!("{} is not of type \"{}\"", inst()?, type_name(*t)),
                ));
            }
        }
        if let Some(choices) = &self.choices {
            if !choices.iter().any(|c| json_eq(c, v)) {
                let opts: Vec<String> = choices.iter().map(render).collect::<Option<_>>()?;
                let list = match opts.as_slice() {
                    [] => return None,
                    [one] => one.clone(),
                    [first, second, _, _, ..] => {
                        format!("{first}, {second} or {} other candidates", opts.len() - 2)
                    }
                    [init @ .., last] => format!("{} or {last}", init.join(", ")),
                };
                out.push((1, format!("{} is not one of {list}", inst()?)));
            }
        }
        match v {
            Py::Str(s) => {
                let n = s.chars().count();
                let chars = |k: usize| if k == 1 { "character" } else { "characters" };
                if let Some(m) = self.min_length.filter(|m| n < *m) {
                    out.push((2, format!("{} is shorter than {m} {}", inst()?, chars(m))));
                }
                if let Some(m) = self.max_length.filter(|m| n > *m) {
                    out.push((3, format!("{} is longer than {m} {}", inst()?, chars(m))));
                }
                if let Some((re, p)) = &self.pattern {
                    if !re.is_match(s) {
                        out.push((4, format!("{} does not match \"{p}\"", inst()?)));
                    }
                }
            }
            Py::Int(_) | Py::Float(_) => {
                let f = v.num().map(|n| n.f()).unwrap_or(f64::NAN);
                if let Some((m, text)) = &self.minimum {
                    if f < *m {
                        let text = text.as_ref()?;
                        out.push((5, format!("{} is less than the minimum of {text}", inst()?)));
                    }
                }
                if let Some((m, text)) = &self.maximum {
                    if f > *m {
                        let text = text.as_ref()?;
                        out.push((
                            6,
                            format!("{} is greater than the maximum of {text}", inst()?),
                        ));
                    }
                }
            }
            Py::List(items)
                if self
                    .items
                    .as_ref()
                    .is_none_or(|schema| items.iter().all(|x| schema.is_valid(x))) =>
            {
                let word = |k: usize| if k == 1 { "item" } else { "items" };
                if let Some(m) = self.min_items.filter(|m| items.len() < *m) {
                    out.push((7, format!("{} has less than {m} {}", inst()?, word(m))));
                }
                if let Some(m) = self.max_items.filter(|m| items.len() > *m) {
                    out.push((8, format!("{} has more than {m} {}", inst()?, word(m))));
                }
            }
            _ => {}
        }
        // A failure these rules do not cover: let the caller ask jsonschema.
        if out.is_empty() && !self.is_valid(v) {
            return None;
        }
        // Objects with their own properties, and arrays whose items fail, are jsonschema's to
        // explain (their messages carry nested paths).
        match v {
            Py::Dict(_) if !self.properties.is_empty() => return None,
            Py::List(items)
                if self
                    .items
                    .as_ref()
                    .is_some_and(|schema| !items.iter().all(|x| schema.is_valid(x))) =>
            {
                return None;
            }
            _ => {}
        }
        Some(out)
    }
}

fn type_name(t: JType) -> &'static str {
    match t {
        JType::Null => "null",
        JType::Boolean => "boolean",
        JType::Integer => "integer",
        JType::Number => "number",
        JType::String => "string",
        JType::Array => "array",
        JType::Object => "object",
    }
}

/// A value as `jsonschema` writes it in messages, for the kinds written the same way here.
fn render(v: &Py) -> Option<String> {
    match v {
        Py::None => Some("null".into()),
        Py::Bool(b) => Some(b.to_string()),
        Py::Int(i) => Some(i.to_string()),
        Py::Str(s) => serde_json::to_string(&**s).ok(),
        Py::List(items) => {
            let parts: Vec<String> = items.iter().map(render).collect::<Option<_>>()?;
            Some(format!("[{}]", parts.join(",")))
        }
        _ => None,
    }
}

fn has_type(v: &Py, t: JType) -> bool {
    match (t, v) {
        (JType::Null, Py::None) | (JType::Boolean, Py::Bool(_)) | (JType::String, Py::Str(_)) => {
            true
        }
        (JType::Array, Py::List(_)) | (JType::Object, Py::Dict(_)) => true,
        (JType::Number, Py::Int(_) | Py::Float(_)) => true,
        (JType::Integer, Py::Int(_)) => true,
        (JType::Integer, Py::Float(f)) => f.is_finite() && f.fract() == 0.0,
        _ => false,
    }
}

/// JSON equality: booleans are not numbers; numbers compare by value.
fn json_eq(a: &Py, b: &Py) -> bool {
    match (a, b) {
        (Py::Bool(x), Py::Bool(y)) => x == y,
        (Py::Bool(_), _) | (_, Py::Bool(_)) => false,
        (Py::List(x), Py::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Py::Dict(x), Py::Dict(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.iter()
                        .find(|(k2, _)| k2.py_eq(k))
                        .is_some_and(|(_, w)| json_eq(v, w))
                })
        }
        _ => a.py_eq(b),
    }
}

/// A `pattern`: the common shape `^` + a run of fixed-count ASCII classes + `$` (for instance
/// `^[A-Z]{3}-[0-9]{5}$`) is matched directly; anything else goes to the `regex` crate.
#[derive(Debug, Clone)]
enum Pattern {
    /// Each atom: the bytes it accepts (a 128-bit set), and its minimum and maximum count.
    /// Only the last atom may have a range.
    Simple(Vec<(u128, usize, usize)>),
    Regex(Regex),
}

impl Pattern {
    fn compile(p: &str) -> Option<Pattern> {
        if let Some(simple) = Self::simple(p) {
            return Some(Pattern::Simple(simple));
        }
        Regex::new(&ascii_classes(p)?).ok().map(Pattern::Regex)
    }

    fn simple(p: &str) -> Option<Vec<(u128, usize, usize)>> {
        let body = p.strip_prefix('^')?.strip_suffix('$')?;
        if body.ends_with('\\') {
            return None;
        }
        let b = body.as_bytes();
        let mut atoms: Vec<(u128, usize, usize)> = Vec::new();
        let mut i = 0;
        let bit = |c: u8| 1u128 << c;
        while i < b.len() {
            let set = match b[i] {
                b'[' => {
                    let end = i + b[i..].iter().position(|&c| c == b']')?;
                    let class = &b[i + 1..end];
                    if class.is_empty() || class[0] == b'^' || class.contains(&b'\\') {
                        return None;
                    }
                    let mut set = 0u128;
                    let mut j = 0;
                    while j < class.len() {
                        if j + 2 < class.len() && class[j + 1] == b'-' {
                            let (lo, hi) = (class[j], class[j + 2]);
                            if lo > hi || hi >= 128 {
                                return None;
                            }
                            for c in lo..=hi {
                                set |= bit(c);
                            }
                            j += 3;
                        } else {
                            if class[j] >= 128 {
                                return None;
                            }
                            set |= bit(class[j]);
                            j += 1;
                        }
                    }
                    i = end + 1;
                    set
                }
                b'\\' => {
                    let c = *b.get(i + 1)?;
                    i += 2;
                    match c {
                        b'd' => (b'0'..=b'9').fold(0, |s, c| s | bit(c)),
                        b'.' | b'-' | b'_' | b'/' => bit(c),
                        _ => return None,
                    }
                }
                c if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'/' | b':' | b'@') => {
                    i += 1;
                    bit(c)
                }
                _ => return None,
            };
            let (min, max) = match b.get(i) {
                Some(b'{') => {
                    let end = i + b[i..].iter().position(|&c| c == b'}')?;
                    let inner = std::str::from_utf8(&b[i + 1..end]).ok()?;
                    i = end + 1;
                    match inner.split_once(',') {
                        None => {
                            let n = inner.parse().ok()?;
                            (n, n)
                        }
                        Some((lo, "")) => (lo.parse().ok()?, usize::MAX),
                        Some((lo, hi)) => (lo.parse().ok()?, hi.parse().ok()?),
                    }
                }
                Some(b'+') => {
                    i += 1;
                    (1, usize::MAX)
                }
                Some(b'*') => {
                    i += 1;
                    (0, usize::MAX)
                }
                Some(b'?') => {
                    i += 1;
                    (0, 1)
                }
                _ => (1, 1),
            };
            if min > max {
                return None;
            }
            // A range before the end would need backtracking.
            if atoms.last().is_some_and(|(_, lo, hi)| lo != hi) {
                return None;
            }
            atoms.push((set, min, max));
        }
        Some(atoms)
    }

    fn is_match(&self, s: &str) -> bool {
        match self {
            Pattern::Regex(re) => re.is_match(s),
            Pattern::Simple(atoms) => {
                let b = s.as_bytes();
                let mut i = 0;
                for &(set, min, max) in atoms {
                    let mut n = 0;
                    while n < max && i < b.len() && b[i] < 128 && set & (1u128 << b[i]) != 0 {
                        i += 1;
                        n += 1;
                    }
                    if n < min {
                        return false;
                    }
                }
                i == b.len()
            }
        }
    }
}

/// ECMA-262 `\d` and `\w` are ASCII-only; the `regex` crate's are Unicode. Translates them,
/// and gives up (`None`) on the other escapes whose meaning differs.
fn ascii_classes(pattern: &str) -> Option<String> {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'd' if in_class => out.push_str("0-9"),
                'd' => out.push_str("[0-9]"),
                'w' if in_class => out.push_str("A-Za-z0-9_"),
                'w' => out.push_str("[A-Za-z0-9_]"),
                'D' | 'W' | 's' | 'S' | 'b' | 'B' | 'u' | 'c' | 'p' | 'P' | 'k' => return None,
                other => {
                    out.push('\\');
                    out.push(other);
                }
            },
            '[' if !in_class => {
                in_class = true;
                out.push(c);
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '(' if chars.as_str().starts_with('?') => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_patterns_agree_with_regex() {
        let patterns = [
            "^[A-Z]{3}-[0-9]{5}$",
            "^vid_\\d{5}$",
            "^biz_[0-9]{3,}$",
            "^u[0-9]+$",
            "^\\d{4}-\\d{2}-\\d{2}$",
            "^INS[0-9]{6,}$",
            "^[A-Z0-9]{10}$",
            "^abc?$",
        ];
        let inputs = [
            "",
            "ABC-12345",
            "ABC-1234",
            "abc-12345",
            "ABC-123456",
            "ABC--12345",
            "vid_00001",
            "vid_0001",
            "vid_000012",
            "biz_12",
            "biz_123",
            "biz_123456",
            "u",
            "u1",
            "u12a",
            "2025-01-02",
            "2025-1-02",
            "INS123456",
            "INS12345",
            "INS1234567",
            "ABCDE12345",
            "ABCDE1234\n",
            "ac",
            "abc",
            "abbc",
            "ABC-12345\n",
            "é",
            "ＡBC-12345",
        ];
        for p in patterns {
            let Some(Pattern::Simple(_)) = Pattern::compile(p) else {
                panic!("{p} should compile to the simple matcher");
            };
            let fast = Pattern::compile(p).unwrap();
            let slow = Regex::new(&ascii_classes(p).unwrap()).unwrap();
            for s in inputs {
                assert_eq!(fast.is_match(s), slow.is_match(s), "{p} on {s:?}");
            }
        }
        assert!(matches!(
            Pattern::compile("^/data/videos/.*\\.(json|xml)$"),
            Some(Pattern::Regex(_))
        ));
        // A range before the end needs backtracking: the regex crate's job.
        assert!(matches!(
            Pattern::compile("^[0-9]+0$"),
            Some(Pattern::Regex(_))
        ));
        assert!(matches!(
            Pattern::compile("^ab?c$"),
            Some(Pattern::Regex(_))
        ));
    }
}
