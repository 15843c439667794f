//! The interpreter: runs compiled steps with Python semantics.

use std::sync::Arc;

use smallvec::SmallVec;

use super::compile::{Expr, Op, Step, Sym, Then, TypeTag, Walk};
use super::literal::literal_eval;
use super::table::{Dtype, Table};
use super::value::{Num, Py, PyError, PyResult, dict_get, str_repr};
use crate::sources::EpisodeSources;

/// The random, clock and uuid sources a binding reads (`random`, `now`, `uuid4_hex`).
pub trait BindingSources {
    /// The next `random.random()`.
    fn random(&mut self) -> f64;
    /// `datetime.now().isoformat()`.
    fn now_iso(&mut self) -> String;
    /// `uuid.uuid4().hex`.
    fn uuid4_hex(&mut self) -> String;
}

impl BindingSources for EpisodeSources {
    fn random(&mut self) -> f64 {
        EpisodeSources::random(self)
    }
    fn now_iso(&mut self) -> String {
        EpisodeSources::now_iso(self)
    }
    fn uuid4_hex(&mut self) -> String {
        EpisodeSources::uuid4_hex(self)
    }
}

enum Slot<'a> {
    Unset,
    Val(Py),
    /// An argument of the call, borrowed.
    Arg(&'a Py),
    Row(usize),
}

pub(crate) struct Machine<'a> {
    pub table: Option<&'a Table>,
    pub sources: &'a mut dyn BindingSources,
    slots: SmallVec<[Slot<'a>; 16]>,
    names: &'a [Arc<str>],
}

fn err<T>(etype: &str, message: impl Into<String>) -> PyResult<T> {
    Err(PyError::new(etype, message))
}

impl<'a> Machine<'a> {
    pub(crate) fn new(
        table: Option<&'a Table>,
        sources: &'a mut dyn BindingSources,
        names: &'a [Arc<str>],
    ) -> Self {
        let mut slots = SmallVec::with_capacity(names.len());
        slots.resize_with(names.len(), || Slot::Unset);
        Self {
            table,
            sources,
            slots,
            names,
        }
    }

    pub(crate) fn bind(&mut self, sym: Sym, value: Py) {
        self.slots[usize::from(sym)] = Slot::Val(value);
    }

    /// Binds a parameter to the caller's argument, without copying it.
    pub(crate) fn bind_arg(&mut self, sym: Sym, value: &'a Py) {
        self.slots[usize::from(sym)] = Slot::Arg(value);
    }

    fn name(&self, sym: Sym) -> &str {
        self.names.get(usize::from(sym)).map_or("?", |n| n)
    }

    /// The value of a variable, a cell or a literal, by reference (no clone).
    fn peek<'e>(&'e self, e: &'e Expr) -> Option<&'e Py> {
        match e {
            Expr::Lit(v) => Some(v),
            Expr::Var(sym) => match &self.slots[usize::from(*sym)] {
                Slot::Val(v) => Some(v),
                Slot::Arg(v) => Some(*v),
                _ => None,
            },
            Expr::Col { row, col } => match (&self.slots[usize::from(*row)], self.table) {
                (Slot::Row(i), Some(t)) => Some(&t.rows[*i][*col]),
                _ => None,
            },
            _ => None,
        }
    }

    /// The truthiness of an expression, without building values where it can be avoided.
    fn truth(&mut self, e: &Expr) -> PyResult<bool> {
        if let Some(v) = self.peek(e) {
            return Ok(v.truthy());
        }
        match e {
            Expr::Op(Op::Not, a) => Ok(!self.truth(&a[0])?),
            Expr::Op(Op::Bool, a) => self.truth(&a[0]),
            Expr::Op(Op::Or, a) => {
                for x in a {
                    if self.truth(x)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Expr::Op(Op::And, a) => {
                for x in a {
                    if !self.truth(x)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Expr::Op(Op::IsNone, a) if self.peek(&a[0]).is_some() => {
                Ok(matches!(self.peek(&a[0]), Some(Py::None)))
            }
            Expr::Op(Op::IsNa, a) if self.peek(&a[0]).is_some() => Ok(self
                .peek(&a[0])
                .is_some_and(|v| matches!(v, Py::None) || v.is_nan())),
            _ => Ok(self.eval(e)?.truthy()),
        }
    }

    /// Runs steps; `Some(value)` when one returned.
    pub(crate) fn run(&mut self, steps: &[Step]) -> PyResult<Option<Py>> {
        for step in steps {
            if let Some(v) = self.step(step)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn then(&mut self, then: &Then) -> PyResult<Py> {
        match then {
            Then::Raise { etype, message } => {
                let msg = self.eval(message)?.py_str();
                err(etype, msg)
            }
            Then::Return(e) => self.eval(e),
        }
    }

    fn step(&mut self, step: &Step) -> PyResult<Option<Py>> {
        match step {
            Step::If { cond, then } => {
                if self.truth(cond)? {
                    return self.then(then).map(Some);
                }
            }
            Step::Let { name, value } => {
                let v = self.eval(value)?;
                self.bind(*name, v);
            }
            Step::Return(e) => return self.eval(e).map(Some),
            Step::Try {
                body,
                except,
                error,
            } => {
                match self.run(body) {
                    Ok(r) => return Ok(r),
                    Err(e) => {
                        // Variables bound before the error stay bound, as in Python.
                        self.bind(*error, Py::str(&e.message));
                        return self.then(except).map(Some);
                    }
                }
            }
            Step::Lookup {
                conditions,
                none,
                many,
                bind,
            } => {
                let table = self.table.ok_or_else(|| {
                    PyError::new("RuntimeError", "a lookup in a binding without a table")
                })?;
                // Evaluate every condition first, in order, as pandas does (by reference when
                // they are plain variables, cells or literals).
                let by_reference = conditions.iter().all(|(_, e)| self.peek(e).is_some());
                let hit_rows = match by_reference {
                    true => {
                        let values: SmallVec<[(usize, &Py); 4]> = conditions
                            .iter()
                            .filter_map(|(c, e)| self.peek(e).map(|v| (*c, v)))
                            .collect();
                        match_rows(table, &values)?
                    }
                    false => {
                        let mut owned: SmallVec<[(usize, Py); 4]> = SmallVec::new();
                        for (c, e) in conditions {
                            owned.push((*c, self.eval(e)?));
                        }
                        let values: SmallVec<[(usize, &Py); 4]> =
                            owned.iter().map(|(c, v)| (*c, v)).collect();
                        match_rows(table, &values)?
                    }
                };
                match hit_rows.as_slice() {
                    [] => return self.then(none).map(Some),
                    [_, _, ..] if many.is_some() => {
                        return self.then(many.as_ref().expect("checked")).map(Some);
                    }
                    [first, ..] => self.slots[usize::from(*bind)] = Slot::Row(*first),
                }
            }
        }
        Ok(None)
    }

    fn with<T>(
        &mut self,
        name: &Sym,
        v: Py,
        f: impl FnOnce(&mut Self) -> PyResult<T>,
    ) -> PyResult<T> {
        let i = usize::from(*name);
        let old = std::mem::replace(&mut self.slots[i], Slot::Val(v));
        let r = f(self);
        self.slots[i] = old;
        r
    }

    pub(crate) fn eval(&mut self, e: &Expr) -> PyResult<Py> {
        match e {
            Expr::Lit(v) => Ok(v.clone()),
            Expr::Dict(items) => {
                let mut out: Vec<(Py, Py)> = Vec::with_capacity(items.len());
                for (k, e) in items {
                    let v = self.eval(e)?;
                    out.push((k.clone(), v));
                }
                Ok(Py::Dict(out))
            }
            Expr::Var(sym) => match &self.slots[usize::from(*sym)] {
                Slot::Val(v) => Ok(v.clone()),
                Slot::Arg(v) => Ok((*v).clone()),
                _ => err(
                    "NameError",
                    format!("name '{}' is not defined", self.name(*sym)),
                ),
            },
            Expr::Col { row, col } => match (&self.slots[usize::from(*row)], self.table) {
                (Slot::Row(i), Some(t)) => Ok(t.rows[*i][*col].clone()),
                _ => err(
                    "NameError",
                    format!("no row bound as '{}'", self.name(*row)),
                ),
            },
            Expr::Fmt(parts, values) => {
                let mut out = parts[0].clone();
                for (part, e) in parts[1..].iter().zip(values) {
                    out.push_str(&self.eval(e)?.py_str());
                    out.push_str(part);
                }
                Ok(Py::str(&out))
            }
            Expr::Regex(re, x) => match self.eval(x)? {
                Py::Str(s) => Ok(Py::Bool(re.is_match(&s))),
                other => err(
                    "TypeError",
                    format!(
                        "expected string or bytes-like object, got '{}'",
                        other.type_name()
                    ),
                ),
            },
            Expr::IsInstance(x, tag) => {
                let v = self.eval(x)?;
                Ok(Py::Bool(matches!(
                    (tag, &v),
                    (TypeTag::Str, Py::Str(_))
                        | (TypeTag::List, Py::List(_))
                        | (TypeTag::Dict, Py::Dict(_))
                )))
            }
            Expr::Walk {
                kind,
                list,
                name,
                body,
            } => {
                let items = iterate(&self.eval(list)?)?;
                match kind {
                    Walk::Map => {
                        let mut out = Vec::with_capacity(items.len());
                        for v in items {
                            out.push(self.with(name, v, |m| m.eval(&body[0]))?);
                        }
                        Ok(Py::List(out))
                    }
                    Walk::Any | Walk::All => {
                        let want = *kind == Walk::Any;
                        for v in items {
                            if self.with(name, v, |m| m.eval(&body[0]))?.truthy() == want {
                                return Ok(Py::Bool(want));
                            }
                        }
                        Ok(Py::Bool(!want))
                    }
                    Walk::DictMap => {
                        let mut out: Vec<(Py, Py)> = Vec::new();
                        for v in items {
                            let (k, val) = self.with(name, v, |m| {
                                Ok((unnp(m.eval(&body[0])?), m.eval(&body[1])?))
                            })?;
                            hashable(&k)?;
                            match out.iter_mut().find(|(k2, _)| k2.py_eq(&k)) {
                                Some(slot) => slot.1 = val,
                                None => out.push((k, val)),
                            }
                        }
                        Ok(Py::Dict(out))
                    }
                }
            }
            Expr::Find {
                list,
                name,
                pred,
                etype,
                message,
            } => {
                for v in iterate(&self.eval(list)?)? {
                    if self.with(name, v.clone(), |m| m.eval(pred))?.truthy() {
                        return Ok(v);
                    }
                }
                let msg = self.eval(message)?.py_str();
                err(etype, msg)
            }
            Expr::Raise(etype, message) => {
                let msg = self.eval(message)?.py_str();
                err(etype, msg)
            }
            Expr::Now { iso } => {
                let now = self.sources.now_iso();
                Ok(Py::str(if *iso {
                    &now
                } else {
                    now.get(..10).unwrap_or(&now)
                }))
            }
            Expr::Op(Op::And | Op::Or | Op::Not | Op::Bool, _) => Ok(Py::Bool(self.truth(e)?)),
            Expr::Op(Op::IsNone | Op::IsNa, a) if self.peek(&a[0]).is_some() => {
                Ok(Py::Bool(self.truth(e)?))
            }
            Expr::Op(op, args) => self.op(*op, args),
        }
    }

    fn op(&mut self, op: Op, a: &[Expr]) -> PyResult<Py> {
        use Op::*;
        // Lazy operators first.
        match op {
            If => {
                return if self.truth(&a[0])? {
                    self.eval(&a[1])
                } else {
                    self.eval(&a[2])
                };
            }
            Random => return Ok(Py::Float(self.sources.random())),
            Uuid4Hex => return Ok(Py::str(&self.sources.uuid4_hex())),
            _ => {}
        }
        let mut v: SmallVec<[Py; 4]> = SmallVec::with_capacity(a.len());
        for x in a {
            v.push(self.eval(x)?);
        }
        match op {
            Get => get(&v[0], &v[1], v.get(2)),

            IsNone => Ok(Py::Bool(matches!(v[0], Py::None))),
            IsNa => Ok(Py::Bool(matches!(v[0], Py::None) || v[0].is_nan())),
            Eq | Ne => {
                let r = v[0].py_eq(&v[1]) == (op == Eq);
                Ok(np_bool(&v[0], &v[1], r))
            }
            Lt | Le | Gt | Ge => compare(op, &v[0], &v[1]),
            In => contains(&v[0], &v[1]),
            Add | Sub | Mul | Div | Mod => arith(op, &v[0], &v[1]),
            Abs => match &v[0] {
                Py::NpInt(i) => Ok(Py::NpInt(checked(i.checked_abs())?)),
                Py::NpFloat(f) => Ok(Py::NpFloat(f.abs())),
                Py::NpBool(b) => Ok(Py::NpBool(*b)),
                Py::Float(f) => Ok(Py::Float(f.abs())),
                Py::Int(i) => Ok(Py::Int(checked(i.checked_abs())?)),
                Py::Bool(b) => Ok(Py::Int(i64::from(*b))),
                other => err(
                    "TypeError",
                    format!("bad operand type for abs(): '{}'", other.type_name()),
                ),
            },
            Min => Ok(if compare(Lt, &v[1], &v[0])?.truthy() {
                v[1].clone()
            } else {
                v[0].clone()
            }),
            Max => Ok(if compare(Gt, &v[1], &v[0])?.truthy() {
                v[1].clone()
            } else {
                v[0].clone()
            }),
            Round => round(&v[0], v.get(1)),
            Cos | Radians => match v[0].num() {
                Some(n) => Ok(Py::Float(if op == Cos {
                    n.f().cos()
                } else {
                    n.f().to_radians()
                })),
                None => err(
                    "TypeError",
                    format!("must be real number, not {}", v[0].type_name()),
                ),
            },
            Int => to_int(&v[0]),
            Float => to_float(&v[0]),
            Str => Ok(Py::str(&v[0].py_str())),
            Repr => Ok(Py::str(&v[0].py_repr())),
            Upper | Lower | Strip | Zfill | Replace | Endswith => string_method(op, &v),
            Slice => slice(&v[0], &v[1], &v[2]),
            LiteralEval => match &v[0] {
                Py::Str(s) => literal_eval(s),
                other => err(
                    "ValueError",
                    format!("malformed node or string: {}", other.py_repr()),
                ),
            },
            JsonLoads => match &v[0] {
                // CPython's decoder recurses once per level and raises RecursionError past
                // its limit; this reader stops at serde_json's, with the same exception.
                Py::Str(s) if super::value::json_nesting(s) > super::value::JSON_MAX_NESTING => {
                    err(
                        "RecursionError",
                        "maximum recursion depth exceeded while decoding a JSON array from a \
                         unicode string",
                    )
                }
                Py::Str(s) => super::value::parse_json(s)
                    .map(Ok)
                    .unwrap_or_else(|| serde_json::from_str::<Py>(s))
                    .map_err(|e| {
                        PyError::new(
                            "JSONDecodeError",
                            format!("{e} (char {})", char_offset(s, &e)),
                        )
                    }),
                other => err(
                    "TypeError",
                    format!(
                        "the JSON object must be str, bytes or bytearray, not {}",
                        other.type_name()
                    ),
                ),
            },
            Len => match &v[0] {
                Py::Str(s) => Ok(Py::Int(s.chars().count() as i64)),
                Py::List(x) | Py::Tuple(x) => Ok(Py::Int(x.len() as i64)),
                Py::Dict(d) => Ok(Py::Int(d.len() as i64)),
                other => err(
                    "TypeError",
                    format!("object of type '{}' has no len()", other.type_name()),
                ),
            },
            List => Ok(Py::List(v.into_vec())),
            Tuple => Ok(Py::Tuple(v.into_vec())),
            Concat => {
                let mut out = Vec::new();
                for x in &v {
                    out.extend(iterate(x)?);
                }
                Ok(Py::List(out))
            }
            Unique => {
                let mut out: Vec<Py> = Vec::new();
                for x in iterate(&v[0])? {
                    hashable(&x)?;
                    let ux = unnp(x.clone());
                    if !out.iter().any(|o| {
                        o.py_eq(&x)
                            && std::mem::discriminant(&unnp(o.clone()))
                                == std::mem::discriminant(&ux)
                    }) {
                        out.push(x);
                    }
                }
                Ok(Py::List(out))
            }
            Count => Ok(Py::Int(
                iterate(&v[0])?.iter().filter(|e| e.py_eq(&v[1])).count() as i64,
            )),
            Sum => {
                let mut acc = v[1].clone();
                for x in iterate(&v[0])? {
                    acc = arith(Add, &acc, &x)?;
                }
                Ok(acc)
            }
            // `eval` sends And/Or/Not/Bool through `truth`; the others returned above.
            If | And | Or | Not | Bool | Random | Uuid4Hex => unreachable!("handled before"),
        }
    }
}

/// The rows where every `column == value` holds under pandas' rules, in file order.
fn match_rows(table: &Table, values: &[(usize, &Py)]) -> PyResult<SmallVec<[usize; 4]>> {
    let n = table.rows.len();
    for (col, v) in values {
        match v {
            Py::List(items) | Py::Tuple(items) => {
                if items.len() != n {
                    return err(
                        "ValueError",
                        format!(
                            "('Lengths must match to compare', ({n},), ({},))",
                            items.len()
                        ),
                    );
                }
                return err(
                    "NotImplementedError",
                    "element-wise comparison of a list argument with a column is not modelled",
                );
            }
            Py::Dict(d) if table.columns[*col].1 == Dtype::Str => {
                return err(
                    "ValueError",
                    format!("Lengths of operands do not match: {n} != {}", d.len()),
                );
            }
            _ => {}
        }
    }
    let Some(((col, v), rest)) = values.split_first() else {
        return Ok((0..n).collect());
    };
    // The first condition's index gives the candidates; the rest filter them.
    Ok(table
        .candidates(*col, v)
        .iter()
        .map(|&r| r as usize)
        .filter(|&r| {
            let row = &table.rows[r];
            pandas_eq(&row[*col], v, table.columns[*col].1)
                && rest
                    .iter()
                    .all(|(c, v)| pandas_eq(&row[*c], v, table.columns[*c].1))
        })
        .collect())
}

fn char_offset(s: &str, e: &serde_json::Error) -> usize {
    // serde reports line/column; CPython reports the character offset as well.
    let mut line = 1;
    let mut col = 0;
    for (i, c) in s.chars().enumerate() {
        if line == e.line() && col + 1 >= e.column() {
            return i;
        }
        if c == '\n' {
            line += 1;
            col = 0;
        } else {
            col += 1;
        }
    }
    s.chars().count()
}

fn checked<T>(v: Option<T>) -> PyResult<T> {
    v.ok_or_else(|| {
        PyError::new(
            "OverflowError",
            "integer overflow beyond 64 bits (not modelled)",
        )
    })
}

/// numpy scalars become their Python value.
fn unnp(v: Py) -> Py {
    match v {
        Py::NpInt(i) => Py::Int(i),
        Py::NpFloat(f) => Py::Float(f),
        Py::NpBool(b) => Py::Bool(b),
        other => other,
    }
}

fn np_bool(a: &Py, b: &Py, r: bool) -> Py {
    if a.is_np() || b.is_np() {
        Py::NpBool(r)
    } else {
        Py::Bool(r)
    }
}

fn hashable(v: &Py) -> PyResult<()> {
    match v {
        Py::List(_) | Py::Dict(_) => {
            err("TypeError", format!("unhashable type: '{}'", v.type_name()))
        }
        _ => Ok(()),
    }
}

/// The elements of an iterable (a str yields its characters, a dict its keys).
fn iterate(v: &Py) -> PyResult<Vec<Py>> {
    match v {
        Py::List(x) | Py::Tuple(x) => Ok(x.clone()),
        Py::Str(s) => Ok(s
            .chars()
            .map(|c| Py::str(c.encode_utf8(&mut [0; 4])))
            .collect()),
        Py::Dict(d) => Ok(d.iter().map(|(k, _)| k.clone()).collect()),
        other => err(
            "TypeError",
            format!("'{}' object is not iterable", other.type_name()),
        ),
    }
}

/// One cell of `df[col] == value` under pandas' rules.
fn pandas_eq(cell: &Py, value: &Py, dtype: Dtype) -> bool {
    if cell.is_nan() {
        return false;
    }
    match dtype {
        Dtype::Str => matches!((cell, value), (Py::Str(a), Py::Str(b)) if a == b),
        Dtype::Int64 | Dtype::Float64 | Dtype::Bool | Dtype::BoolOrNan => {
            match (cell.num(), value.num()) {
                (Some(a), Some(b)) => match (a, b) {
                    (Num::I(x), Num::I(y)) => x == y,
                    _ => a.f() == b.f(),
                },
                _ => false,
            }
        }
    }
}

fn get(c: &Py, k: &Py, default: Option<&Py>) -> PyResult<Py> {
    let uk = unnp(k.clone());
    if let Some(default) = default {
        let Py::Dict(d) = c else {
            return err(
                "AttributeError",
                format!("'{}' object has no attribute 'get'", c.type_name()),
            );
        };
        hashable(&uk)?;
        return Ok(dict_get(d, &uk).cloned().unwrap_or_else(|| default.clone()));
    }
    match c {
        Py::Dict(d) => {
            hashable(&uk)?;
            dict_get(d, &uk)
                .cloned()
                .ok_or_else(|| PyError::new("KeyError", uk.py_repr()))
        }
        Py::List(_) | Py::Tuple(_) | Py::Str(_) => {
            let Py::Int(i) = uk else {
                return err(
                    "TypeError",
                    format!(
                        "{} indices must be integers or slices, not {}",
                        c.type_name(),
                        k.type_name()
                    ),
                );
            };
            let items = iterate(c)?;
            let n = items.len() as i64;
            if !(-n..n).contains(&i) {
                return err(
                    "IndexError",
                    format!("{} index out of range", c.type_name()),
                );
            }
            Ok(items[(if i < 0 { i + n } else { i }) as usize].clone())
        }
        other => err(
            "TypeError",
            format!("'{}' object is not subscriptable", other.type_name()),
        ),
    }
}

fn compare(op: Op, a: &Py, b: &Py) -> PyResult<Py> {
    let ord = match (a, b, a.num(), b.num()) {
        (_, _, Some(x), Some(y)) => match (x, y) {
            (Num::I(x), Num::I(y)) => Some(x.cmp(&y)),
            _ => x.f().partial_cmp(&y.f()),
        },
        (Py::Str(x), Py::Str(y), _, _) => Some(x.cmp(y)),
        _ => {
            let sym = match op {
                Op::Lt => "<",
                Op::Le => "<=",
                Op::Gt => ">",
                _ => ">=",
            };
            return err(
                "TypeError",
                format!(
                    "'{sym}' not supported between instances of '{}' and '{}'",
                    a.type_name(),
                    b.type_name()
                ),
            );
        }
    };
    use std::cmp::Ordering::*;
    let r = match (op, ord) {
        (_, None) => false, // NaN compares false
        (Op::Lt, Some(o)) => o == Less,
        (Op::Le, Some(o)) => o != Greater,
        (Op::Gt, Some(o)) => o == Greater,
        (_, Some(o)) => o != Less,
    };
    Ok(np_bool(a, b, r))
}

fn contains(x: &Py, c: &Py) -> PyResult<Py> {
    match c {
        Py::Str(s) => match x {
            Py::Str(sub) => Ok(Py::Bool(s.contains(&**sub))),
            other => err(
                "TypeError",
                format!(
                    "'in <string>' requires string as left operand, not {}",
                    other.type_name()
                ),
            ),
        },
        Py::Dict(d) => {
            let k = unnp(x.clone());
            hashable(&k)?;
            Ok(Py::Bool(dict_get(d, &k).is_some()))
        }
        Py::List(items) | Py::Tuple(items) => Ok(Py::Bool(items.iter().any(|e| x.py_eq(e)))),
        other => err(
            "TypeError",
            format!("argument of type '{}' is not iterable", other.type_name()),
        ),
    }
}

fn arith(op: Op, a: &Py, b: &Py) -> PyResult<Py> {
    if let (Op::Add, Py::Str(x), Py::Str(y)) = (op, a, b) {
        return Ok(Py::str(&format!("{x}{y}")));
    }
    let sym = match op {
        Op::Add => "+",
        Op::Sub => "-",
        Op::Mul => "*",
        Op::Div => "/",
        _ => "%",
    };
    let (Some(x), Some(y)) = (a.num(), b.num()) else {
        return err(
            "TypeError",
            format!(
                "unsupported operand type(s) for {sym}: '{}' and '{}'",
                a.type_name(),
                b.type_name()
            ),
        );
    };
    let np = a.is_np() || b.is_np();
    if matches!(op, Op::Div | Op::Mod) && y.f() == 0.0 {
        if np {
            let xf = x.f();
            return Ok(Py::NpFloat(if op == Op::Div && xf != 0.0 && !xf.is_nan() {
                f64::INFINITY.copysign(xf)
            } else {
                f64::NAN
            }));
        }
        let msg = match (op, x, y) {
            (Op::Div, ..) => "division by zero",
            (_, Num::I(_), Num::I(_)) => "integer modulo by zero",
            _ => "float modulo",
        };
        return err("ZeroDivisionError", msg);
    }
    let r = match (op, x, y) {
        (Op::Div, ..) => Num::F(x.f() / y.f()),
        (_, Num::I(p), Num::I(q)) => Num::I(checked(match op {
            Op::Add => p.checked_add(q),
            Op::Sub => p.checked_sub(q),
            Op::Mul => p.checked_mul(q),
            _ => p
                .checked_rem_euclid(q)
                .map(|r| if r != 0 && q < 0 { r + q } else { r }),
        })?),
        _ => {
            let (p, q) = (x.f(), y.f());
            Num::F(match op {
                Op::Add => p + q,
                Op::Sub => p - q,
                Op::Mul => p * q,
                _ => {
                    let r = p % q;
                    if r != 0.0 && (r < 0.0) != (q < 0.0) {
                        r + q
                    } else if r == 0.0 {
                        0.0f64.copysign(q)
                    } else {
                        r
                    }
                }
            })
        }
    };
    Ok(match (r, np) {
        (Num::I(i), false) => Py::Int(i),
        (Num::F(f), false) => Py::Float(f),
        (Num::I(i), true) => Py::NpInt(i),
        (Num::F(f), true) => Py::NpFloat(f),
    })
}

fn round(x: &Py, nd: Option<&Py>) -> PyResult<Py> {
    let Some(n) = x.num() else {
        return err(
            "TypeError",
            format!("type {} doesn't define __round__ method", x.type_name()),
        );
    };
    let nd = match nd {
        None | Some(Py::None) => None,
        Some(v) => match unnp(v.clone()) {
            Py::Int(i) => Some(i),
            other => {
                return err(
                    "TypeError",
                    format!(
                        "'{}' object cannot be interpreted as an integer",
                        other.type_name()
                    ),
                );
            }
        },
    };
    let Some(nd) = nd else {
        return match n {
            Num::I(i) => Ok(Py::Int(i)),
            Num::F(f) if f.is_nan() => err("ValueError", "cannot convert float NaN to integer"),
            Num::F(f) if f.is_infinite() => {
                err("ValueError", "cannot convert float infinity to integer")
            }
            Num::F(f) => {
                let r = f.round_ties_even();
                if r.abs() >= 9.2e18 {
                    return checked(None);
                }
                Ok(Py::Int(r as i64))
            }
        };
    };
    let r = match n {
        Num::I(i) if nd >= 0 => Num::I(i),
        Num::I(i) => {
            let p = 10i64.checked_pow((-nd) as u32);
            let p = checked(p)?;
            let q = i.div_euclid(p);
            let rem = i.rem_euclid(p);
            let up = rem * 2 > p || (rem * 2 == p && q % 2 != 0);
            Num::I(checked((q + i64::from(up)).checked_mul(p))?)
        }
        Num::F(f) if !f.is_finite() => Num::F(f),
        Num::F(f) if nd >= 0 => {
            // Rust's exact formatting rounds the binary value half-to-even, as CPython does.
            let digits = usize::try_from(nd.min(400)).unwrap_or(400);
            Num::F(format!("{f:.digits$}").parse().unwrap_or(f))
        }
        Num::F(f) => {
            let p = 10f64.powi((-nd) as i32);
            Num::F((f / p).round_ties_even() * p)
        }
    };
    Ok(match (x, r) {
        (Py::NpFloat(_), Num::F(f)) => Py::NpFloat(f),
        (Py::NpInt(_) | Py::NpBool(_), Num::I(i)) => Py::NpInt(i),
        (_, Num::I(i)) => Py::Int(i),
        (_, Num::F(f)) => Py::Float(f),
    })
}

fn to_int(x: &Py) -> PyResult<Py> {
    match x {
        Py::Bool(b) | Py::NpBool(b) => Ok(Py::Int(i64::from(*b))),
        Py::Int(i) | Py::NpInt(i) => Ok(Py::Int(*i)),
        Py::Float(f) | Py::NpFloat(f) => {
            if f.is_nan() {
                err("ValueError", "cannot convert float NaN to integer")
            } else if f.is_infinite() {
                err("OverflowError", "cannot convert float infinity to integer")
            } else if f.abs() >= 9.2e18 {
                checked(None)
            } else {
                Ok(Py::Int(f.trunc() as i64))
            }
        }
        Py::Str(s) => parse_py_int(s).map(Py::Int).ok_or_else(|| {
            PyError::new(
                "ValueError",
                format!("invalid literal for int() with base 10: {}", str_repr(s)),
            )
        }),
        other => err(
            "TypeError",
            format!(
                "int() argument must be a string, a bytes-like object or a real number, not '{}'",
                other.type_name()
            ),
        ),
    }
}

/// Python's `int(str)`: surrounding whitespace, a sign, and single `_` between digits.
fn parse_py_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|c| c.is_ascii_digit() || c == b'_')
    {
        return None;
    }
    let v: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -v } else { v })
}

fn to_float(x: &Py) -> PyResult<Py> {
    if let Some(n) = x.num() {
        return Ok(Py::Float(n.f()));
    }
    match x {
        Py::Str(s) => parse_py_float(s).map(Py::Float).ok_or_else(|| {
            PyError::new(
                "ValueError",
                format!("could not convert string to float: {}", str_repr(s)),
            )
        }),
        other => err(
            "TypeError",
            format!(
                "float() argument must be a string or a real number, not '{}'",
                other.type_name()
            ),
        ),
    }
}

/// Python's `float(str)`.
fn parse_py_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let (sign, body) = match t.as_bytes().first()? {
        b'-' => (-1.0, &t[1..]),
        b'+' => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    let lower = body.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity") {
        return Some(sign * f64::INFINITY);
    }
    if lower == "nan" {
        return Some(f64::NAN);
    }
    if body.is_empty()
        || !body
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'_' | b'+' | b'-'))
        || body.contains("__")
    {
        return None;
    }
    let v: f64 = body.replace('_', "").parse().ok()?;
    Some(sign * v)
}

fn string_method(op: Op, v: &[Py]) -> PyResult<Py> {
    let name = match op {
        Op::Upper => "upper",
        Op::Lower => "lower",
        Op::Strip => "strip",
        Op::Zfill => "zfill",
        Op::Replace => "replace",
        _ => "endswith",
    };
    let Py::Str(s) = &v[0] else {
        return err(
            "AttributeError",
            format!("'{}' object has no attribute '{name}'", v[0].type_name()),
        );
    };
    let text = |i: usize| match &v[i] {
        Py::Str(t) => Ok(t.clone()),
        other => err(
            "TypeError",
            format!("must be str, not {}", other.type_name()),
        ),
    };
    Ok(match op {
        Op::Upper => Py::str(&s.to_uppercase()),
        Op::Lower => Py::str(&s.to_lowercase()),
        Op::Strip => Py::str(s.trim()),
        Op::Replace => Py::str(&s.replace(&*text(1)?, &text(2)?)),
        Op::Endswith => Py::Bool(s.ends_with(&*text(1)?)),
        _ => {
            let width = match unnp(v[1].clone()) {
                Py::Int(w) => w.max(0) as usize,
                other => {
                    return err(
                        "TypeError",
                        format!(
                            "'{}' object cannot be interpreted as an integer",
                            other.type_name()
                        ),
                    );
                }
            };
            let len = s.chars().count();
            if len >= width {
                Py::Str(s.clone())
            } else {
                let (sign, rest) = match s.chars().next() {
                    Some(c @ ('+' | '-')) => (c.to_string(), &s[1..]),
                    _ => (String::new(), &s[..]),
                };
                Py::str(&format!("{sign}{}{rest}", "0".repeat(width - len)))
            }
        }
    })
}

fn slice(x: &Py, start: &Py, stop: &Py) -> PyResult<Py> {
    let items = match x {
        Py::Str(_) | Py::List(_) | Py::Tuple(_) => iterate(x)?,
        other => {
            return err(
                "TypeError",
                format!("'{}' object is not subscriptable", other.type_name()),
            );
        }
    };
    let n = items.len() as i64;
    let bound = |v: &Py, default: i64| -> PyResult<i64> {
        match unnp(v.clone()) {
            Py::None => Ok(default),
            Py::Int(i) => Ok(if i < 0 { (i + n).max(0) } else { i.min(n) }),
            other => err(
                "TypeError",
                format!(
                    "slice indices must be integers or None or have an __index__ method, not {}",
                    other.type_name()
                ),
            ),
        }
    };
    let (a, b) = (bound(start, 0)?, bound(stop, n)?);
    let part: Vec<Py> = if a < b {
        items[a as usize..b as usize].to_vec()
    } else {
        Vec::new()
    };
    Ok(match x {
        Py::Str(_) => Py::str(&part.iter().map(Py::py_str).collect::<String>()),
        Py::Tuple(_) => Py::Tuple(part),
        _ => Py::List(part),
    })
}
