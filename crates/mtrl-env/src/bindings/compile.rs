//! Compiles binding JSON (steps and expressions) into a tree the interpreter runs, checking
//! operator names, arities and column names once, at load time.

use std::cell::RefCell;
use std::sync::Arc;

use regex::Regex;

use super::table::Table;
use super::value::Py;
use crate::error::{Error, Result};

/// An operator applied to evaluated arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Get,
    If,
    And,
    Or,
    Not,
    Bool,
    IsNone,
    IsNa,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Abs,
    Min,
    Max,
    Round,
    Cos,
    Radians,
    Int,
    Float,
    Str,
    Repr,
    Upper,
    Lower,
    Strip,
    Zfill,
    Replace,
    Endswith,
    Slice,
    LiteralEval,
    JsonLoads,
    Len,
    List,
    Tuple,
    Concat,
    Unique,
    Count,
    Sum,
    Random,
    Uuid4Hex,
}

impl Op {
    /// The operator and its (min, max) argument count.
    fn parse(name: &str) -> Option<(Op, usize, usize)> {
        use Op::*;
        const MANY: usize = usize::MAX;
        Some(match name {
            "get" => (Get, 2, 3),
            "if" => (If, 3, 3),
            "and" => (And, 1, MANY),
            "or" => (Or, 1, MANY),
            "not" => (Not, 1, 1),
            "bool" => (Bool, 1, 1),
            "is_none" => (IsNone, 1, 1),
            "is_na" => (IsNa, 1, 1),
            "eq" => (Eq, 2, 2),
            "ne" => (Ne, 2, 2),
            "lt" => (Lt, 2, 2),
            "le" => (Le, 2, 2),
            "gt" => (Gt, 2, 2),
            "ge" => (Ge, 2, 2),
            "in" => (In, 2, 2),
            "add" => (Add, 2, 2),
            "sub" => (Sub, 2, 2),
            "mul" => (Mul, 2, 2),
            "div" => (Div, 2, 2),
            "mod" => (Mod, 2, 2),
            "abs" => (Abs, 1, 1),
            "min" => (Min, 2, 2),
            "max" => (Max, 2, 2),
            "round" => (Round, 1, 2),
            "cos" => (Cos, 1, 1),
            "radians" => (Radians, 1, 1),
            "int" => (Int, 1, 1),
            "float" => (Float, 1, 1),
            "str" => (Str, 1, 1),
            "repr" => (Repr, 1, 1),
            "upper" => (Upper, 1, 1),
            "lower" => (Lower, 1, 1),
            "strip" => (Strip, 1, 1),
            "zfill" => (Zfill, 2, 2),
            "replace" => (Replace, 3, 3),
            "endswith" => (Endswith, 2, 2),
            "slice" => (Slice, 3, 3),
            "literal_eval" => (LiteralEval, 1, 1),
            "json_loads" => (JsonLoads, 1, 1),
            "len" => (Len, 1, 1),
            "list" => (List, 0, MANY),
            "tuple" => (Tuple, 0, MANY),
            "concat" => (Concat, 0, MANY),
            "unique" => (Unique, 1, 1),
            "count" => (Count, 2, 2),
            "sum" => (Sum, 2, 2),
            "random" => (Random, 0, 0),
            "uuid4_hex" => (Uuid4Hex, 0, 0),
            _ => return None,
        })
    }
}

/// Operators that bind a name while they walk a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    Map,
    Any,
    All,
    DictMap,
}

/// The exact Python type `isinstance` tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeTag {
    Str,
    List,
    Dict,
}

/// A variable, as its slot in the tool's symbol table.
pub(crate) type Sym = u16;

/// A compiled expression.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Lit(Py),
    Dict(Vec<(Py, Expr)>),
    Var(Sym),
    Col {
        row: Sym,
        col: usize,
    },
    Op(Op, Vec<Expr>),
    Fmt(Vec<String>, Vec<Expr>),
    Regex(Arc<Regex>, Box<Expr>),
    IsInstance(Box<Expr>, TypeTag),
    Walk {
        kind: Walk,
        list: Box<Expr>,
        name: Sym,
        body: Vec<Expr>,
    },
    Find {
        list: Box<Expr>,
        name: Sym,
        pred: Box<Expr>,
        etype: String,
        message: Box<Expr>,
    },
    Raise(String, Box<Expr>),
    Now {
        iso: bool,
    },
}

/// What a guard, a failed lookup or an `except` does.
#[derive(Debug, Clone)]
pub(crate) enum Then {
    Raise { etype: String, message: Expr },
    Return(Expr),
}

/// A compiled step.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    If {
        cond: Expr,
        then: Then,
    },
    Let {
        name: Sym,
        value: Expr,
    },
    Lookup {
        conditions: Vec<(usize, Expr)>,
        none: Then,
        many: Option<Then>,
        bind: Sym,
    },
    Try {
        body: Vec<Step>,
        except: Then,
        error: Sym,
    },
    Return(Expr),
}

/// What a compiler needs to resolve names: the table's columns and the constants.
pub(crate) struct Scope<'a> {
    pub table: Option<&'a Table>,
    pub constants: &'a [(Py, Py)],
    pub what: String,
    /// The tool's variable names; a variable is its index here.
    pub symbols: RefCell<Vec<Arc<str>>>,
}

impl Scope<'_> {
    /// The slot of a variable name, added on first sight.
    pub(crate) fn sym(&self, name: &str) -> Result<Sym> {
        let mut symbols = self.symbols.borrow_mut();
        if let Some(i) = symbols.iter().position(|s| &**s == name) {
            return Ok(i as Sym);
        }
        let i = Sym::try_from(symbols.len()).map_err(|_| self.bad("too many variables"))?;
        symbols.push(Arc::from(name));
        Ok(i)
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::Binding {
            what: self.what.clone(),
            reason: reason.into(),
        }
    }

    fn get<'v>(&self, obj: &'v [(Py, Py)], key: &str) -> Option<&'v Py> {
        obj.iter()
            .find(|(k, _)| matches!(k, Py::Str(s) if &**s == key))
            .map(|(_, v)| v)
    }

    fn text<'v>(&self, v: &'v Py, what: &str) -> Result<&'v str> {
        match v {
            Py::Str(s) => Ok(s),
            other => Err(self.bad(format!("{what} must be a string, got {}", other.py_repr()))),
        }
    }

    pub(crate) fn steps(&self, v: &Py) -> Result<Vec<Step>> {
        let Py::List(items) = v else {
            return Err(self.bad("a body must be a list of steps"));
        };
        items.iter().map(|s| self.step(s)).collect()
    }

    fn then(&self, v: &Py) -> Result<Then> {
        let Py::Dict(obj) = v else {
            return Err(self.bad(format!(
                "expected {{raise}} or {{return}}, got {}",
                v.py_repr()
            )));
        };
        if let Some(spec) = self.get(obj, "raise") {
            let Py::Dict(spec) = spec else {
                return Err(self.bad("`raise` must be an object"));
            };
            let etype = self.text(
                self.get(spec, "type")
                    .ok_or_else(|| self.bad("`raise` without `type`"))?,
                "an exception type",
            )?;
            let message = self.expr(
                self.get(spec, "message")
                    .ok_or_else(|| self.bad("`raise` without `message`"))?,
            )?;
            Ok(Then::Raise {
                etype: etype.to_string(),
                message,
            })
        } else if let Some(e) = self.get(obj, "return") {
            Ok(Then::Return(self.expr(e)?))
        } else {
            Err(self.bad("expected `raise` or `return`"))
        }
    }

    fn step(&self, v: &Py) -> Result<Step> {
        let Py::Dict(obj) = v else {
            return Err(self.bad(format!("a step must be an object, got {}", v.py_repr())));
        };
        if let Some(cond) = self.get(obj, "if") {
            return Ok(Step::If {
                cond: self.expr(cond)?,
                then: self.then(v)?,
            });
        }
        if let Some(name) = self.get(obj, "let") {
            let value = self
                .get(obj, "value")
                .ok_or_else(|| self.bad("`let` without `value`"))?;
            return Ok(Step::Let {
                name: self.sym(self.text(name, "a variable name")?)?,
                value: self.expr(value)?,
            });
        }
        if let Some(spec) = self.get(obj, "lookup") {
            return self.lookup(spec);
        }
        if let Some(body) = self.get(obj, "try") {
            let except = self
                .get(obj, "except")
                .ok_or_else(|| self.bad("`try` without `except`"))?;
            return Ok(Step::Try {
                body: self.steps(body)?,
                except: self.then(except)?,
                error: self.sym("error")?,
            });
        }
        if let Some(e) = self.get(obj, "return") {
            return Ok(Step::Return(self.expr(e)?));
        }
        Err(self.bad(format!("unknown step {}", v.py_repr())))
    }

    fn lookup(&self, spec: &Py) -> Result<Step> {
        let Py::Dict(spec) = spec else {
            return Err(self.bad("`lookup` must be an object"));
        };
        let table = self
            .table
            .ok_or_else(|| self.bad("a `lookup` in a binding without a table"))?;
        let Some(Py::List(conds)) = self.get(spec, "where") else {
            return Err(self.bad("`lookup` needs a `where` list"));
        };
        let mut conditions = Vec::with_capacity(conds.len());
        for c in conds {
            let Py::List(pair) = c else {
                return Err(self.bad("a `where` entry must be [column, expr]"));
            };
            let [col, e] = pair.as_slice() else {
                return Err(self.bad("a `where` entry must be [column, expr]"));
            };
            let name = self.text(col, "a column name")?;
            let idx = table
                .column(name)
                .ok_or_else(|| self.bad(format!("no column `{name}` in the table")))?;
            conditions.push((idx, self.expr(e)?));
        }
        let none = self.then(
            self.get(spec, "none")
                .ok_or_else(|| self.bad("`lookup` without `none`"))?,
        )?;
        let many = match self.get(spec, "many") {
            None => None,
            Some(Py::Str(s)) if &**s == "first" => None,
            Some(m) => Some(self.then(m)?),
        };
        let bind = match self.get(spec, "as") {
            Some(v) => self.sym(self.text(v, "a row name")?)?,
            None => self.sym("row")?,
        };
        Ok(Step::Lookup {
            conditions,
            none,
            many,
            bind,
        })
    }

    pub(crate) fn expr(&self, v: &Py) -> Result<Expr> {
        match v {
            Py::Dict(obj) => Ok(Expr::Dict(
                obj.iter()
                    .map(|(k, e)| Ok((k.clone(), self.expr(e)?)))
                    .collect::<Result<_>>()?,
            )),
            Py::List(items) => {
                let Some((head, args)) = items.split_first() else {
                    return Err(self.bad("an empty operator application"));
                };
                let op = self.text(head, "an operator")?;
                self.apply(op, args)
            }
            literal => Ok(Expr::Lit(literal.clone())),
        }
    }

    fn name_arg(&self, v: &Py, op: &str) -> Result<Sym> {
        self.sym(self.text(v, &format!("the name of `{op}`"))?)
    }

    fn apply(&self, op: &str, args: &[Py]) -> Result<Expr> {
        let arity = |min: usize, max: usize| {
            if args.len() < min || args.len() > max {
                Err(self.bad(format!(
                    "`{op}` takes {min} to {max} arguments, got {}",
                    args.len()
                )))
            } else {
                Ok(())
            }
        };
        let sub = |i: usize| self.expr(&args[i]).map(Box::new);
        match op {
            "var" => {
                arity(1, 1)?;
                Ok(Expr::Var(self.name_arg(&args[0], op)?))
            }
            "col" => {
                arity(1, 2)?;
                let name = self.text(&args[0], "a column name")?;
                let table = self
                    .table
                    .ok_or_else(|| self.bad("`col` in a binding without a table"))?;
                let col = table
                    .column(name)
                    .ok_or_else(|| self.bad(format!("no column `{name}` in the table")))?;
                let row = match args.get(1) {
                    Some(r) => self.name_arg(r, op)?,
                    None => self.sym("row")?,
                };
                Ok(Expr::Col { row, col })
            }
            "const" => {
                arity(1, 1)?;
                let name = self.text(&args[0], "a constant name")?;
                let value = self
                    .get(self.constants, name)
                    .ok_or_else(|| self.bad(format!("no constant `{name}`")))?;
                Ok(Expr::Lit(value.clone()))
            }
            "fmt" => {
                let template = self.text(
                    args.first()
                        .ok_or_else(|| self.bad("`fmt` needs a template"))?,
                    "a template",
                )?;
                let parts: Vec<String> = template.split("{}").map(str::to_string).collect();
                if parts.len() != args.len() {
                    return Err(self.bad(format!(
                        "`fmt` template {template:?} has {} slots for {} values",
                        parts.len() - 1,
                        args.len() - 1
                    )));
                }
                let values = args[1..]
                    .iter()
                    .map(|a| self.expr(a))
                    .collect::<Result<_>>()?;
                Ok(Expr::Fmt(parts, values))
            }
            "regex_match" => {
                arity(2, 2)?;
                let pattern = self.text(&args[0], "a regex pattern")?;
                let re = python_regex(pattern)
                    .map_err(|e| self.bad(format!("regex {pattern:?}: {e}")))?;
                Ok(Expr::Regex(Arc::new(re), sub(1)?))
            }
            "isinstance" => {
                arity(2, 2)?;
                let tag = match self.text(&args[1], "a type name")? {
                    "str" => TypeTag::Str,
                    "list" => TypeTag::List,
                    "dict" => TypeTag::Dict,
                    other => return Err(self.bad(format!("isinstance of unknown type `{other}`"))),
                };
                Ok(Expr::IsInstance(sub(0)?, tag))
            }
            "map" | "any" | "all" => {
                arity(3, 3)?;
                let kind = match op {
                    "map" => Walk::Map,
                    "any" => Walk::Any,
                    _ => Walk::All,
                };
                Ok(Expr::Walk {
                    kind,
                    list: sub(0)?,
                    name: self.name_arg(&args[1], op)?,
                    body: vec![self.expr(&args[2])?],
                })
            }
            "dict_map" => {
                arity(4, 4)?;
                Ok(Expr::Walk {
                    kind: Walk::DictMap,
                    list: sub(0)?,
                    name: self.name_arg(&args[1], op)?,
                    body: vec![self.expr(&args[2])?, self.expr(&args[3])?],
                })
            }
            "find" => {
                arity(4, 4)?;
                let Py::Dict(missing) = &args[3] else {
                    return Err(self.bad("`find` needs a {type, message} object"));
                };
                let etype = self.text(
                    self.get(missing, "type")
                        .ok_or_else(|| self.bad("`find` error without `type`"))?,
                    "an exception type",
                )?;
                let message = self.expr(
                    self.get(missing, "message")
                        .ok_or_else(|| self.bad("`find` error without `message`"))?,
                )?;
                Ok(Expr::Find {
                    list: sub(0)?,
                    name: self.name_arg(&args[1], op)?,
                    pred: sub(2)?,
                    etype: etype.to_string(),
                    message: Box::new(message),
                })
            }
            "raise" => {
                arity(2, 2)?;
                let etype = self.text(&args[0], "an exception type")?;
                Ok(Expr::Raise(etype.to_string(), sub(1)?))
            }
            "now" => {
                arity(1, 1)?;
                match self.text(&args[0], "a `now` format")? {
                    "iso" => Ok(Expr::Now { iso: true }),
                    "date" => Ok(Expr::Now { iso: false }),
                    other => Err(self.bad(format!("unknown `now` format `{other}`"))),
                }
            }
            _ => {
                let (code, min, max) =
                    Op::parse(op).ok_or_else(|| self.bad(format!("unknown operator `{op}`")))?;
                arity(min, max)?;
                let args = args.iter().map(|a| self.expr(a)).collect::<Result<_>>()?;
                Ok(Expr::Op(code, args))
            }
        }
    }
}

/// Compiles a Python `re.match` pattern: anchored at the start, and `$` also matching before a
/// final newline.
fn python_regex(pattern: &str) -> std::result::Result<Regex, regex::Error> {
    let mut out = String::from("^(?:");
    let mut chars = pattern.chars();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '$' if !in_class => out.push_str(r"(?:\n?\z)"),
            c => out.push(c),
        }
    }
    out.push(')');
    Regex::new(&out)
}

/// Which nondeterministic sources a body reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Uses {
    /// `random`.
    pub random: bool,
    /// `now`.
    pub clock: bool,
    /// `uuid4_hex`.
    pub uuid: bool,
}

impl Uses {
    pub(crate) fn of_steps(steps: &[Step]) -> Uses {
        let mut u = Uses::default();
        for s in steps {
            u.step(s);
        }
        u
    }

    fn then(&mut self, t: &Then) {
        match t {
            Then::Raise { message, .. } => self.expr(message),
            Then::Return(e) => self.expr(e),
        }
    }

    fn step(&mut self, s: &Step) {
        match s {
            Step::If { cond, then } => {
                self.expr(cond);
                self.then(then);
            }
            Step::Let { value, .. } => self.expr(value),
            Step::Lookup {
                conditions,
                none,
                many,
                ..
            } => {
                conditions.iter().for_each(|(_, e)| self.expr(e));
                self.then(none);
                if let Some(m) = many {
                    self.then(m);
                }
            }
            Step::Try { body, except, .. } => {
                body.iter().for_each(|s| self.step(s));
                self.then(except);
            }
            Step::Return(e) => self.expr(e),
        }
    }

    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::Lit(_) | Expr::Var(_) | Expr::Col { .. } => {}
            Expr::Dict(items) => items.iter().for_each(|(_, e)| self.expr(e)),
            Expr::Op(op, args) => {
                self.random |= *op == Op::Random;
                self.uuid |= *op == Op::Uuid4Hex;
                args.iter().for_each(|a| self.expr(a));
            }
            Expr::Fmt(_, args) => args.iter().for_each(|a| self.expr(a)),
            Expr::Regex(_, x) | Expr::IsInstance(x, _) | Expr::Raise(_, x) => self.expr(x),
            Expr::Walk { list, body, .. } => {
                self.expr(list);
                body.iter().for_each(|b| self.expr(b));
            }
            Expr::Find {
                list,
                pred,
                message,
                ..
            } => {
                self.expr(list);
                self.expr(pred);
                self.expr(message);
            }
            Expr::Now { .. } => self.clock = true,
        }
    }
}
