//! Recorded tools declared as data: the `sop-bench-tool-bindings/1` format.
//!
//! A binding file describes every tool of a domain as steps over a CSV table and constants
//! (guards, variables, row lookups, `try`/`except`, returns) with Python's value semantics, so
//! that a simulated tool answers exactly as the upstream Python code did, errors and text
//! included, without running it. A user adds a tool by writing JSON, not Rust. A plain lookup
//! tool takes a few lines:
//!
//! ```
//! use mtrl_env::bindings::{Bindings, Py};
//! let binding = r#"{
//!   "format": "sop-bench-tool-bindings/1", "domain": "shop",
//!   "upstream": {"manager_class": "ShopManager"},
//!   "dispatch": {"unknown_tool_error": {"type": "ValueError", "message": "Invalid tool_name: {tool}"}},
//!   "table": {"file": "orders.csv", "columns": {"order_id": "str", "status": "str"}},
//!   "tools": [{"name": "getOrder", "params": ["order_id"], "body": [
//!     {"lookup": {"where": [["order_id", ["var", "order_id"]]],
//!                 "none": {"raise": {"type": "ValueError", "message": ["fmt", "No order {}", ["var", "order_id"]]}}}},
//!     {"return": {"order_id": ["var", "order_id"], "status": ["col", "status"]}}]}]
//! }"#;
//! let table = "order_id,status\nA-1,shipped\n";
//! let b = Bindings::parse(binding, |_| Ok(table.to_string()))?;
//! let mut sources = mtrl_env::EpisodeSources::new(0);
//! let args: Py = serde_json::from_str(r#"{"order_id": "A-1"}"#).unwrap();
//! let out = b.call("getOrder", &args, &mut sources);
//! assert_eq!(Bindings::wire(&out), r#"{"order_id": "A-1", "status": "shipped"}"#);
//! let missing: Py = serde_json::from_str(r#"{"order_id": "B-2"}"#).unwrap();
//! assert_eq!(Bindings::wire(&b.call("getOrder", &missing, &mut sources)), "Error: No order B-2");
//! # Ok::<(), mtrl_env::Error>(())
//! ```
//!
//! The format is specified in SOP-Bench's `TOOL_BINDINGS.md`; this module implements all of it
//! except what that document lists as not modelled.

mod compile;
mod eval;
mod literal;
pub mod schema;
pub(crate) mod table;
mod value;

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

pub use eval::BindingSources;
pub use literal::literal_eval;
pub use table::{Dtype, Table};
pub use value::{Py, PyError, PyResult, float_repr, parse_json, parse_json_with_keys};

pub use compile::Uses;
use compile::{Scope, Step};
use eval::Machine;

use crate::error::{Error, Result};

/// The format tag this module reads.
pub const FORMAT: &str = "sop-bench-tool-bindings/1";

/// One tool of a binding.
#[derive(Debug, Clone)]
pub struct BoundTool {
    name: String,
    toolspec: bool,
    implemented: bool,
    params: Vec<(Arc<str>, compile::Sym, Option<Py>)>,
    symbols: Vec<Arc<str>>,
    body: Vec<Step>,
    nondeterministic: Option<String>,
    unordered_paths: Vec<String>,
    upstream_defect: Option<String>,
}

impl BoundTool {
    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the domain's tool specs advertise it.
    pub fn in_toolspec(&self) -> bool {
        self.toolspec
    }

    /// Whether upstream's code dispatches it.
    pub fn implemented(&self) -> bool {
        self.implemented
    }

    /// Why its output depends on randomness, the clock or uuids, if it does.
    pub fn nondeterministic(&self) -> Option<&str> {
        self.nondeterministic.as_deref()
    }

    /// Dotted paths of result dicts whose key order upstream does not define.
    pub fn unordered_paths(&self) -> &[String] {
        &self.unordered_paths
    }

    /// A described upstream defect, if any.
    pub fn upstream_defect(&self) -> Option<&str> {
        self.upstream_defect.as_deref()
    }

    /// Which nondeterministic sources (random, clock, uuid) its body reads.
    pub fn uses(&self) -> Uses {
        Uses::of_steps(&self.body)
    }

    /// The parameter names, in signature order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _, _)| &**n)
    }
}

/// A compiled binding: a domain's tools, its table and constants.
#[derive(Debug, Clone)]
pub struct Bindings {
    domain: String,
    manager_class: String,
    unknown_tool: (String, String),
    table: Option<Arc<Table>>,
    tools: Vec<BoundTool>,
    index: HashMap<String, usize>,
    domain_defects: Vec<String>,
}

fn field<'v>(obj: &'v [(Py, Py)], key: &str) -> Option<&'v Py> {
    obj.iter()
        .find(|(k, _)| matches!(k, Py::Str(s) if &**s == key))
        .map(|(_, v)| v)
}

fn text(v: Option<&Py>) -> Option<&str> {
    match v {
        Some(Py::Str(s)) => Some(s),
        _ => None,
    }
}

impl Bindings {
    /// Parses and compiles a binding. `read_table` is given the table's file name (relative to
    /// the binding) and returns its CSV text.
    ///
    /// # Errors
    /// [`Error::Binding`] for anything malformed: bad JSON, a wrong format tag, an unknown
    /// operator or step, a wrong arity, an unknown column, a table that does not match its
    /// declared columns.
    pub fn parse(json: &str, read_table: impl FnOnce(&str) -> Result<String>) -> Result<Self> {
        let bad = |what: &str, reason: String| Error::Binding {
            what: what.to_string(),
            reason,
        };
        let root: Py =
            serde_json::from_str(json).map_err(|e| bad("file", format!("not JSON: {e}")))?;
        let Py::Dict(root) = root else {
            return Err(bad("file", "the top level must be an object".into()));
        };
        let format = text(field(&root, "format")).unwrap_or_default();
        if format != FORMAT {
            return Err(bad("file", format!("format {format:?} is not {FORMAT:?}")));
        }
        let domain = text(field(&root, "domain"))
            .unwrap_or("unknown")
            .to_string();
        let upstream = match field(&root, "upstream") {
            Some(Py::Dict(u)) => u.as_slice(),
            _ => &[],
        };
        let manager_class = text(field(upstream, "manager_class"))
            .ok_or_else(|| bad(&domain, "missing upstream.manager_class".into()))?
            .to_string();
        let unknown_tool = match field(&root, "dispatch") {
            Some(Py::Dict(d)) => match field(d, "unknown_tool_error") {
                Some(Py::Dict(e)) => (
                    text(field(e, "type")).unwrap_or("ValueError").to_string(),
                    text(field(e, "message"))
                        .unwrap_or("Invalid tool_name: {tool}")
                        .to_string(),
                ),
                _ => ("ValueError".into(), "Invalid tool_name: {tool}".into()),
            },
            _ => ("ValueError".into(), "Invalid tool_name: {tool}".into()),
        };
        let table = match field(&root, "table") {
            None | Some(Py::None) => None,
            Some(Py::Dict(t)) => {
                let file = text(field(t, "file"))
                    .ok_or_else(|| bad(&domain, "the table has no `file`".into()))?;
                let Some(Py::Dict(cols)) = field(t, "columns") else {
                    return Err(bad(&domain, "the table has no `columns`".into()));
                };
                let mut columns = Vec::with_capacity(cols.len());
                for (name, dtype) in cols {
                    let name = name.py_str();
                    let dtype =
                        text(Some(dtype))
                            .and_then(table::Dtype::parse)
                            .ok_or_else(|| {
                                bad(&domain, format!("column `{name}` has an unknown dtype"))
                            })?;
                    columns.push((name, dtype));
                }
                let csv = read_table(file)?;
                Some(Arc::new(Table::parse(
                    &format!("{domain}/{file}"),
                    &csv,
                    &columns,
                )?))
            }
            Some(_) => return Err(bad(&domain, "`table` must be an object or null".into())),
        };
        let constants: Vec<(Py, Py)> = match field(&root, "constants") {
            Some(Py::Dict(c)) => c.clone(),
            _ => Vec::new(),
        };
        let domain_defects = match field(&root, "domain_defects") {
            Some(Py::List(d)) => d.iter().map(Py::py_str).collect(),
            _ => Vec::new(),
        };
        let Some(Py::List(tool_list)) = field(&root, "tools") else {
            return Err(bad(&domain, "missing `tools`".into()));
        };
        let mut tools = Vec::with_capacity(tool_list.len());
        let mut index = HashMap::default();
        for t in tool_list {
            let Py::Dict(t) = t else {
                return Err(bad(&domain, "a tool must be an object".into()));
            };
            let name = text(field(t, "name"))
                .ok_or_else(|| bad(&domain, "a tool without a name".into()))?
                .to_string();
            let scope = Scope {
                table: table.as_deref(),
                constants: &constants,
                what: format!("{domain}/{name}"),
                symbols: Default::default(),
            };
            let mut params = Vec::new();
            if let Some(Py::List(ps)) = field(t, "params") {
                for p in ps {
                    match p {
                        Py::Str(s) => params.push((s.clone(), scope.sym(s)?, None)),
                        Py::Dict(d) => {
                            let n = text(field(d, "name")).ok_or_else(|| {
                                bad(&scope.what, "a parameter without a name".into())
                            })?;
                            params.push((
                                Arc::from(n),
                                scope.sym(n)?,
                                field(d, "default").cloned(),
                            ));
                        }
                        _ => return Err(bad(&scope.what, "a bad parameter".into())),
                    }
                }
            }
            let body = match field(t, "body") {
                Some(b) => scope.steps(b)?,
                None => Vec::new(),
            };
            let flag = |k: &str| !matches!(field(t, k), Some(Py::Bool(false)));
            let tool = BoundTool {
                toolspec: flag("toolspec"),
                implemented: flag("implemented"),
                params,
                body,
                nondeterministic: field(t, "nondeterministic").map(Py::py_str),
                unordered_paths: match field(t, "unordered_paths") {
                    Some(Py::List(p)) => p.iter().map(Py::py_str).collect(),
                    _ => Vec::new(),
                },
                upstream_defect: field(t, "upstream_defect").map(Py::py_str),
                symbols: scope.symbols.take(),
                name: name.clone(),
            };
            if index.insert(name.clone(), tools.len()).is_some() {
                return Err(bad(
                    &domain,
                    format!("the tool `{name}` is described twice"),
                ));
            }
            tools.push(tool);
        }
        Ok(Self {
            domain,
            manager_class,
            unknown_tool,
            table,
            tools,
            index,
            domain_defects,
        })
    }

    /// Loads `tool_bindings.json` from a file, reading its table from the directory `data_dir`.
    ///
    /// # Errors
    /// [`Error::Io`] for files that cannot be read, else as [`Bindings::parse`].
    pub fn load(binding: &std::path::Path, data_dir: &std::path::Path) -> Result<Self> {
        let json = std::fs::read_to_string(binding)?;
        Self::parse(&json, |file| {
            Ok(std::fs::read_to_string(data_dir.join(file))?)
        })
    }

    /// The domain name.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The tools, in file order.
    pub fn tools(&self) -> &[BoundTool] {
        &self.tools
    }

    /// One tool by name.
    pub fn tool(&self, name: &str) -> Option<&BoundTool> {
        self.index.get(name).map(|&i| &self.tools[i])
    }

    /// The lookup table, if the binding has one.
    pub fn table(&self) -> Option<&Table> {
        self.table.as_deref()
    }

    /// Upstream defects that affect the whole domain.
    pub fn domain_defects(&self) -> &[String] {
        &self.domain_defects
    }

    /// Calls a tool the way upstream's `process_tool_call(name, **args)` does: dispatch, Python
    /// keyword binding of `args` (which must be a dict), then the body.
    ///
    /// # Errors
    /// The Python exception the call raises, as [`PyError`].
    pub fn call(&self, tool: &str, args: &Py, sources: &mut dyn BindingSources) -> PyResult<Py> {
        self.call_at(self.index.get(tool).copied(), tool, args, sources)
    }

    /// [`Bindings::call`] with the tool's position already looked up.
    fn call_at(
        &self,
        position: Option<usize>,
        tool: &str,
        args: &Py,
        sources: &mut dyn BindingSources,
    ) -> PyResult<Py> {
        let Some(t) = position.map(|i| &self.tools[i]).filter(|t| t.implemented) else {
            let (etype, msg) = &self.unknown_tool;
            return Err(PyError::new(etype, msg.replace("{tool}", tool)));
        };
        let empty = Vec::new();
        let given: &Vec<(Py, Py)> = match args {
            Py::Dict(d) => d,
            Py::None => &empty,
            other => {
                return Err(PyError::new(
                    "TypeError",
                    format!(
                        "{}.{}() argument after ** must be a mapping, not {}",
                        self.manager_class,
                        tool,
                        other.type_name()
                    ),
                ));
            }
        };
        let cls = &self.manager_class;
        // Python's keyword binding: each argument finds its parameter, in the order given.
        let mut bound: smallvec::SmallVec<[Option<&Py>; 8]> =
            smallvec::smallvec![None; t.params.len()];
        for (k, v) in given {
            let slot = match k {
                Py::Str(k) => t
                    .params
                    .iter()
                    .position(|(n, _, _)| Arc::ptr_eq(n, k) || **n == **k),
                _ => None,
            };
            match slot {
                Some(i) => bound[i] = Some(v),
                None => {
                    return Err(PyError::new(
                        "TypeError",
                        format!(
                            "{cls}.{tool}() got an unexpected keyword argument '{}'",
                            k.py_str()
                        ),
                    ));
                }
            }
        }
        let missing: Vec<String> = t
            .params
            .iter()
            .zip(&bound)
            .filter(|((_, _, d), b)| d.is_none() && b.is_none())
            .map(|((n, _, _), _)| format!("'{n}'"))
            .collect();
        if !missing.is_empty() {
            let list = match missing.len() {
                1 => missing[0].clone(),
                2 => format!("{} and {}", missing[0], missing[1]),
                n => format!("{}, and {}", missing[..n - 1].join(", "), missing[n - 1]),
            };
            let s = if missing.len() == 1 { "" } else { "s" };
            return Err(PyError::new(
                "TypeError",
                format!(
                    "{cls}.{tool}() missing {} required positional argument{s}: {list}",
                    missing.len()
                ),
            ));
        }
        let mut m = Machine::new(self.table.as_deref(), sources, &t.symbols);
        for ((_, sym, default), given) in t.params.iter().zip(bound) {
            match given.or(default.as_ref()) {
                Some(v) => m.bind_arg(*sym, v),
                None => m.bind(*sym, Py::None),
            }
        }
        Ok(m.run(&t.body)?.unwrap_or(Py::None))
    }

    /// The text upstream's ReAct agent shows the model for a call's outcome: `json.dumps` of
    /// the result, or `Error: <message>`.
    pub fn wire(outcome: &PyResult<Py>) -> String {
        Self::wire_as(outcome, WireStyle::Upstream)
    }

    /// The text for a call's outcome in the given style.
    pub fn wire_as(outcome: &PyResult<Py>, style: WireStyle) -> String {
        let dumped = match (outcome, style) {
            (Ok(v), WireStyle::Upstream) => v.json_dumps(),
            (Ok(v), WireStyle::StrictJson) => v.json_dumps_strict(),
            (Err(e), _) => Err(e.clone()),
        };
        dumped.unwrap_or_else(|e| format!("Error: {}", e.message))
    }
}

/// How a binding tool's results are written for the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireStyle {
    /// Exactly as upstream: CPython `json.dumps`, bare `NaN` and `Infinity` included.
    Upstream,
    /// As upstream, but valid JSON: NaN and infinities are written `null`. The default, since
    /// a strict JSON reader (and a model trained on JSON) rejects `NaN`.
    #[default]
    StrictJson,
}

/// One tool of a [`Bindings`], served as a [`Tool`](crate::Tool) with the spec advertised for it.
///
/// Success is the binding's result written in the chosen [`WireStyle`]; an exception is the
/// text `Error: <message>` (as upstream), reported as an error of kind `<ExceptionType>`.
#[derive(Debug, Clone)]
pub struct BindingTool {
    bindings: Arc<Bindings>,
    spec: mtrl_core::ToolSpec,
    style: WireStyle,
    position: Option<usize>,
}

impl BindingTool {
    /// Serves the binding's tool named like `spec`.
    pub fn new(bindings: Arc<Bindings>, spec: mtrl_core::ToolSpec, style: WireStyle) -> Self {
        let position = bindings.index.get(spec.name()).copied();
        Self {
            bindings,
            spec,
            style,
            position,
        }
    }

    /// Whether the binding implements this tool; an unimplemented one answers every call with
    /// an error.
    pub fn implemented(&self) -> bool {
        self.position
            .is_some_and(|i| self.bindings.tools[i].implemented)
    }

    /// The parameter names of the bound tool, as shared strings.
    pub fn param_names(&self) -> Vec<Arc<str>> {
        self.position
            .map(|i| {
                self.bindings.tools[i]
                    .params
                    .iter()
                    .map(|(n, _, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs the call on already-parsed arguments.
    pub fn run(&self, args: &Py, sources: &mut dyn BindingSources) -> crate::ToolOutput {
        let outcome = self
            .bindings
            .call_at(self.position, self.spec.name(), args, sources);
        let text = Bindings::wire_as(&outcome, self.style);
        match outcome {
            Ok(_) if !text.starts_with("Error: ") => crate::ToolOutput::text(text),
            Ok(_) => crate::ToolOutput::error_text("TypeError", text),
            Err(e) => crate::ToolOutput::error_text(e.etype, text),
        }
    }
}

impl<S> crate::Tool<S> for BindingTool {
    fn spec(&self) -> &mtrl_core::ToolSpec {
        &self.spec
    }

    fn call(
        &self,
        args: &serde_json::Map<String, serde_json::Value>,
        cx: &mut crate::ToolContext<'_, S>,
    ) -> crate::ToolOutput {
        let args = Py::Dict(
            args.iter()
                .map(|(k, v)| (Py::str(k), Py::from_json(v)))
                .collect(),
        );
        self.run(&args, cx.sources)
    }
}
