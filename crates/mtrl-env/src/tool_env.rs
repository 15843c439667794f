//! [`ToolEnvironment`]: an [`Environment`] over a registry of simulated tools.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap as HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use mtrl_core::{
    Environment, EnvironmentFactory, Episode, Message, Reset, Step, Task, ToolCall, ToolResult,
    ToolSpec, async_trait,
};
use serde_json::{Map, Value};

use crate::bindings::schema::FastSchema;
use crate::bindings::{BindingTool, Py, parse_json_with_keys};
use crate::error::{Error, Result};
use crate::sources::EpisodeSources;
use crate::tool::{Tool, ToolContext, ToolOutput};

/// How arguments are checked before a tool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Validation {
    /// Validate against the tool's JSON Schema, and refuse arguments the schema does not
    /// declare. The default, and the mode training uses.
    #[default]
    Strict,
    /// Only require a JSON object; the tool sees whatever the model sent.
    Lenient,
}

type PromptFn = dyn Fn(&Task, &[ToolSpec]) -> mtrl_core::Result<Vec<Message>> + Send + Sync;
type StateFn<S> = dyn Fn(&Task, &mut EpisodeSources) -> mtrl_core::Result<S> + Send + Sync;
type TeardownFn<S> = dyn Fn(S) + Send + Sync;
type OutcomeFn<S> = dyn Fn(&Task, &S) -> mtrl_core::Result<Value> + Send + Sync;

/// How a tool runs.
enum Backend<S> {
    /// Any [`Tool`]: arguments arrive as a JSON map.
    Tool(Arc<dyn Tool<S>>),
    /// A binding: arguments are parsed once, in order, as Python-style values.
    Binding(BindingTool),
}

impl<S> Backend<S> {
    fn spec(&self) -> &ToolSpec {
        match self {
            Backend::Tool(t) => t.spec(),
            Backend::Binding(b) => <BindingTool as Tool<S>>::spec(b),
        }
    }
}

struct Entry<S> {
    backend: Backend<S>,
    validator: jsonschema::Validator,
    /// The same schema on binding values, when it uses only the common keywords.
    fast: Option<FastSchema>,
    /// The declared argument names; `None` when the schema declares none.
    declared: Option<BTreeSet<String>>,
    /// The same names, shared by every parsed call.
    names: Vec<Arc<str>>,
}

struct Shared<S> {
    entries: Vec<Entry<S>>,
    index: HashMap<String, usize>,
    advertised: Vec<ToolSpec>,
    validation: Validation,
    prompt: Box<PromptFn>,
    state: Box<StateFn<S>>,
    teardown: Option<Box<TeardownFn<S>>>,
    outcome: Option<Box<OutcomeFn<S>>>,
}

/// Builds a [`ToolEnvironmentFactory`]: the tools, the validation mode, the opening prompt and,
/// for stateful tools, how each episode's state is made and torn down.
pub struct ToolEnvironmentBuilder<S = ()> {
    tools: Vec<(Backend<S>, bool)>,
    validation: Validation,
    prompt: Box<PromptFn>,
    state: Box<StateFn<S>>,
    teardown: Option<Box<TeardownFn<S>>>,
    outcome: Option<Box<OutcomeFn<S>>>,
}

impl Default for ToolEnvironmentBuilder<()> {
    fn default() -> Self {
        Self::with_state(|_, _| Ok(()))
    }
}

impl ToolEnvironmentBuilder<()> {
    /// A builder for stateless tools.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S: Send + 'static> ToolEnvironmentBuilder<S> {
    /// A builder for tools that work on per-episode state `S`, made by `make` at every reset
    /// from the task and the episode's seeded sources. Each episode has its own state; nothing
    /// is shared between episodes.
    pub fn with_state<F>(make: F) -> Self
    where
        F: Fn(&Task, &mut EpisodeSources) -> mtrl_core::Result<S> + Send + Sync + 'static,
    {
        Self {
            tools: Vec::new(),
            validation: Validation::Strict,
            prompt: Box::new(default_prompt),
            state: Box::new(make),
            teardown: None,
            outcome: None,
        }
    }

    /// Reports the episode's outcome when it ends ([`Environment::outcome`]): `snapshot`
    /// reads the task and the episode's final state (the orders as the tools left them) and
    /// returns it as JSON, for rewards and evaluators to check what the agent did. The agent
    /// never sees it.
    #[must_use]
    pub fn outcome<F>(mut self, snapshot: F) -> Self
    where
        F: Fn(&Task, &S) -> mtrl_core::Result<Value> + Send + Sync + 'static,
    {
        self.outcome = Some(Box::new(snapshot));
        self
    }

    /// Runs `teardown` on the state when the episode ends: at close, or when the environment is
    /// dropped without being closed (a failed or cancelled episode).
    #[must_use]
    pub fn teardown<F>(mut self, teardown: F) -> Self
    where
        F: Fn(S) + Send + Sync + 'static,
    {
        self.teardown = Some(Box::new(teardown));
        self
    }

    /// Adds an advertised tool.
    #[must_use]
    pub fn tool(mut self, tool: impl Tool<S> + 'static) -> Self {
        self.tools.push((Backend::Tool(Arc::new(tool)), true));
        self
    }

    /// Adds an advertised tool served by a binding. It behaves as [`ToolEnvironmentBuilder::tool`]
    /// would, but the arguments are parsed once, keeping their order, which is faster and
    /// faithful to Python's keyword binding.
    #[must_use]
    pub fn binding_tool(mut self, tool: BindingTool) -> Self {
        self.tools.push((Backend::Binding(tool), true));
        self
    }

    /// Adds a tool that is served but not advertised to the agent (to model an upstream that
    /// serves more than it documents; the audit reports it).
    #[must_use]
    pub fn hidden_tool(mut self, tool: impl Tool<S> + 'static) -> Self {
        self.tools.push((Backend::Tool(Arc::new(tool)), false));
        self
    }

    /// Sets the validation mode (strict by default).
    #[must_use]
    pub fn validation(mut self, validation: Validation) -> Self {
        self.validation = validation;
        self
    }

    /// Sets how the opening messages are made from the task and the advertised tools. The
    /// default is a short system message and the task inputs as JSON in a user message.
    #[must_use]
    pub fn prompt<F>(mut self, prompt: F) -> Self
    where
        F: Fn(&Task, &[ToolSpec]) -> mtrl_core::Result<Vec<Message>> + Send + Sync + 'static,
    {
        self.prompt = Box::new(prompt);
        self
    }

    /// Compiles every tool's schema and checks that names are unique.
    ///
    /// # Errors
    /// [`Error::InvalidSchema`] for a schema that does not compile, [`Error::DuplicateTool`]
    /// for a repeated name.
    pub fn build(self) -> Result<ToolEnvironmentFactory<S>> {
        let mut entries = Vec::with_capacity(self.tools.len());
        let mut index = HashMap::default();
        let mut advertised = Vec::new();
        for (backend, is_advertised) in self.tools {
            let spec = backend.spec().clone();
            let name = spec.name().to_string();
            if index.insert(name.clone(), entries.len()).is_some() {
                return Err(Error::DuplicateTool(name));
            }
            let validator =
                jsonschema::validator_for(spec.parameters()).map_err(|e| Error::InvalidSchema {
                    tool: name.clone(),
                    reason: e.to_string(),
                })?;
            let declared = spec
                .parameters()
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect());
            let mut fast = FastSchema::compile(spec.parameters());
            if let (Some(f), Backend::Binding(b)) = (&mut fast, &backend) {
                f.share_names(&b.param_names());
            }
            // Shared with the fast schema, so that its key checks compare pointers.
            let names = match &fast {
                Some(f) => f.names().cloned().collect(),
                None => declared
                    .iter()
                    .flatten()
                    .map(|n: &String| Arc::from(n.as_str()))
                    .collect(),
            };
            if is_advertised {
                advertised.push(spec);
            }
            entries.push(Entry {
                backend,
                validator,
                fast,
                declared,
                names,
            });
        }
        Ok(ToolEnvironmentFactory(Arc::new(Shared {
            entries,
            index,
            advertised,
            validation: self.validation,
            prompt: self.prompt,
            state: self.state,
            teardown: self.teardown,
            outcome: self.outcome,
        })))
    }
}

fn default_prompt(task: &Task, _tools: &[ToolSpec]) -> mtrl_core::Result<Vec<Message>> {
    Ok(vec![
        Message::system(
            "Complete the task by calling the tools you are given. When you are done, reply \
             with your final answer and no tool call.",
        ),
        Message::user(Value::Object(task.inputs().clone()).to_string()),
    ])
}

/// Makes one fresh [`ToolEnvironment`] per episode; cheap to clone and share.
pub struct ToolEnvironmentFactory<S = ()>(Arc<Shared<S>>);

impl<S> Clone for ToolEnvironmentFactory<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: Send + 'static> ToolEnvironmentFactory<S> {
    /// A new environment, not yet reset.
    pub fn environment(&self) -> ToolEnvironment<S> {
        ToolEnvironment {
            shared: self.0.clone(),
            episode: None,
        }
    }

    /// The advertised tools, in registration order.
    pub fn advertised(&self) -> &[ToolSpec] {
        &self.0.advertised
    }

    /// The names of every served tool, advertised or not. A binding tool counts only when its
    /// binding is implemented: an unimplemented one answers every call with an error.
    pub fn served(&self) -> impl Iterator<Item = &str> {
        self.0
            .entries
            .iter()
            .filter(|e| match &e.backend {
                Backend::Tool(_) => true,
                Backend::Binding(b) => b.implemented(),
            })
            .map(|e| e.backend.spec().name())
    }
}

impl<S: Send + 'static> EnvironmentFactory for ToolEnvironmentFactory<S> {
    type Env = ToolEnvironment<S>;

    fn create(&self, _task: &Task, _episode: &Episode) -> mtrl_core::Result<Self::Env> {
        Ok(self.environment())
    }

    fn served_tools(&self) -> Option<Vec<String>> {
        Some(self.served().map(str::to_string).collect())
    }
}

struct EpisodeData<S> {
    task: Task,
    state: Option<S>,
    sources: EpisodeSources,
}

/// An environment that serves simulated tools.
///
/// Each assistant message is answered tool call by tool call, in order, with one tool message
/// each. A message without tool calls is the final answer and ends the episode. Malformed calls
/// (an unknown tool, arguments that are not JSON or break the schema) are answered with a
/// structured error the model can read, and the episode goes on:
///
/// ```json
/// {"error": {"type": "missing_argument", "message": "…", "tool": "getOrder",
///            "problems": [{"type": "missing_argument", "argument": "order_id"}]}}
/// ```
///
/// The error types are `unknown_tool`, `invalid_json`, `missing_argument`,
/// `unexpected_argument`, `wrong_type`, `invalid_value` and `invalid_arguments` (several kinds at
/// once). Problems are listed by argument name, then by check, whichever validation path found
/// them. Each step's `info` holds `tool_results`: one `{"call_id", "tool", "ok", "error"}` per
/// call (a [`mtrl_core::ToolResult`]). A panicking tool ends the episode with an environment error.
pub struct ToolEnvironment<S = ()> {
    shared: Arc<Shared<S>>,
    episode: Option<EpisodeData<S>>,
}

impl<S> ToolEnvironment<S> {
    /// Ends the running episode, if any, tearing its state down.
    fn end_episode(&mut self) {
        if let Some(mut episode) = self.episode.take() {
            if let (Some(state), Some(teardown)) = (episode.state.take(), &self.shared.teardown) {
                teardown(state);
            }
        }
    }
}

impl<S: Send + 'static> ToolEnvironment<S> {
    /// Starts an episode without the async machinery (what [`Environment::reset`] does).
    ///
    /// # Errors
    /// What the prompt or state functions return.
    pub fn reset_sync(&mut self, task: &Task, episode: &Episode) -> mtrl_core::Result<Reset> {
        self.end_episode();
        let mut sources = EpisodeSources::new(episode.seed);
        let state = (self.shared.state)(task, &mut sources)?;
        let messages = (self.shared.prompt)(task, &self.shared.advertised)?;
        self.episode = Some(EpisodeData {
            task: task.clone(),
            state: Some(state),
            sources,
        });
        Ok(Reset {
            messages,
            tools: self.shared.advertised.clone(),
            metadata: Map::new(),
        })
    }

    /// Runs one tool call through the whole path: find the tool, parse and validate the
    /// arguments, run it.
    ///
    /// # Errors
    /// [`mtrl_core::Error::Environment`] when no episode is running or the tool panicked.
    pub fn call_tool(&mut self, call: &ToolCall) -> mtrl_core::Result<ToolOutput> {
        let shared = &*self.shared;
        let episode = self
            .episode
            .as_mut()
            .ok_or_else(|| mtrl_core::Error::environment("step called before reset"))?;
        let Some(&i) = shared.index.get(&call.name) else {
            let available: Vec<&str> = shared.advertised.iter().map(ToolSpec::name).collect();
            return Ok(ToolOutput::error_with(
                "unknown_tool",
                format!(
                    "there is no tool named `{}`; the tools are: {}",
                    call.name,
                    available.join(", ")
                ),
                tool_field(&call.name),
            ));
        };
        let entry = &shared.entries[i];
        if let Backend::Binding(binding) = &entry.backend {
            return Self::call_binding(shared, entry, binding, episode, call);
        }
        let parsed: Value = match serde_json::from_str(&call.arguments) {
            Ok(v) => v,
            Err(e) => return Ok(invalid_json(&call.name, &e)),
        };
        let Value::Object(args) = &parsed else {
            return Ok(not_an_object(&call.name, &call.arguments));
        };
        if shared.validation == Validation::Strict {
            if let Some(output) = strict_problems(entry, &call.name, &parsed, args) {
                return Ok(output);
            }
        }
        let Backend::Tool(tool) = &entry.backend else {
            unreachable!("bindings returned above")
        };
        let state = episode
            .state
            .as_mut()
            .ok_or_else(|| mtrl_core::Error::environment("the episode state was torn down"))?;
        let mut cx = ToolContext {
            state,
            sources: &mut episode.sources,
            task: &episode.task,
        };
        guard(&call.name, || tool.call(args, &mut cx))
    }

    fn call_binding(
        shared: &Shared<S>,
        entry: &Entry<S>,
        binding: &BindingTool,
        episode: &mut EpisodeData<S>,
        call: &ToolCall,
    ) -> mtrl_core::Result<ToolOutput> {
        let args: Py = match parse_json_with_keys(&call.arguments, &entry.names) {
            Some(v) => v,
            None => match serde_json::from_str(&call.arguments) {
                Ok(v) => v,
                Err(e) => return Ok(invalid_json(&call.name, &e)),
            },
        };
        let Py::Dict(pairs) = &args else {
            return Ok(not_an_object(&call.name, &call.arguments));
        };
        if shared.validation == Validation::Strict {
            let fast_ok = entry
                .fast
                .as_ref()
                .is_some_and(|f| f.is_valid_closed(&args));
            if !fast_ok {
                if let Some(output) = fast_problems(entry, &call.name, pairs) {
                    return Ok(output);
                }
                // The slow path: jsonschema decides, and explains.
                let parsed: Value = serde_json::from_str(&call.arguments)?;
                if let Value::Object(map) = &parsed {
                    if let Some(output) = strict_problems(entry, &call.name, &parsed, map) {
                        return Ok(output);
                    }
                }
            }
        }
        let sources = &mut episode.sources;
        guard(&call.name, || binding.run(&args, sources))
    }

    /// Answers one assistant message (what [`Environment::step`] does).
    ///
    /// # Errors
    /// As [`ToolEnvironment::call_tool`].
    pub fn step_sync(&mut self, action: &Message) -> mtrl_core::Result<Step> {
        if self.episode.is_none() {
            return Err(mtrl_core::Error::environment("step called before reset"));
        }
        answer_calls(action, |call| self.call_tool(call))
    }
}

/// Answers an assistant message call by call with `call`: one tool message and one
/// [`ToolResult`] per call, in order. A message without calls ends the episode.
pub(crate) fn answer_calls(
    action: &Message,
    mut call: impl FnMut(&ToolCall) -> mtrl_core::Result<ToolOutput>,
) -> mtrl_core::Result<Step> {
    if action.tool_calls.is_empty() {
        return Ok(Step::done(Vec::new()));
    }
    let mut messages = Vec::with_capacity(action.tool_calls.len());
    let mut results = Vec::with_capacity(action.tool_calls.len());
    for c in &action.tool_calls {
        let output = call(c)?;
        results.push(ToolResult {
            call_id: c.id.clone(),
            tool: c.name.clone(),
            ok: !output.is_error,
            error: output.error_kind,
        });
        messages.push(Message::tool(&c.id, &c.name, output.text));
    }
    Ok(Step::next(messages).with_tool_results(&results))
}

fn invalid_json(tool: &str, e: &serde_json::Error) -> ToolOutput {
    ToolOutput::error_with(
        "invalid_json",
        format!("the arguments are not valid JSON: {e}"),
        tool_field(tool),
    )
}

fn not_an_object(tool: &str, text: &str) -> ToolOutput {
    ToolOutput::error_with(
        "wrong_type",
        format!(
            "the arguments must be a JSON object, got {:.80}",
            text.trim()
        ),
        tool_field(tool),
    )
}

/// Runs a tool, turning a panic into an environment error.
fn guard(tool: &str, f: impl FnOnce() -> ToolOutput) -> mtrl_core::Result<ToolOutput> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic".into());
        mtrl_core::Error::environment(format!("tool `{tool}` panicked: {msg}"))
    })
}

fn tool_field(name: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("tool".into(), Value::String(name.to_string()));
    m
}

/// The structured error for arguments that break the tool's schema, or `None` when they are
/// valid.
fn strict_problems<S>(
    entry: &Entry<S>,
    tool: &str,
    parsed: &Value,
    args: &Map<String, Value>,
) -> Option<ToolOutput> {
    let undeclared = |k: &String| entry.declared.as_ref().is_some_and(|d| !d.contains(k));
    if entry.validator.is_valid(parsed) && !args.keys().any(undeclared) {
        return None;
    }
    let mut problems: Vec<Problem> = args
        .keys()
        .filter(|k| undeclared(k))
        .map(|key| Problem::unexpected(tool, key))
        .collect();
    for err in entry.validator.iter_errors(parsed) {
        use jsonschema::error::ValidationErrorKind as K;
        let path = err.instance_path().to_string();
        let argument = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let rank = match err.kind() {
            // Reported above for every undeclared key, whatever the schema says.
            K::AdditionalProperties { .. } => continue,
            K::Required { property } => {
                problems.push(Problem::missing(property.as_str().unwrap_or_default()));
                continue;
            }
            K::Type { .. } => Rank::Type,
            K::Enum { .. } => Rank::Enum,
            K::MinLength { .. } => Rank::MinLength,
            K::MaxLength { .. } => Rank::MaxLength,
            K::Pattern { .. } => Rank::Pattern,
            K::Minimum { .. } => Rank::Minimum,
            K::Maximum { .. } => Rank::Maximum,
            K::MinItems { .. } => Rank::MinItems,
            K::MaxItems { .. } => Rank::MaxItems,
            _ => Rank::Other,
        };
        problems.push(Problem {
            kind: if rank == Rank::Type {
                "wrong_type"
            } else {
                "invalid_value"
            },
            argument,
            message: format!("{path}: {err}"),
            rank,
        });
    }
    problems_output(tool, problems)
}

/// The structured error for a binding call whose arguments the fast schema refused, or `None`
/// when only the slow path can describe them (it then takes over).
fn fast_problems<S>(entry: &Entry<S>, tool: &str, pairs: &[(Py, Py)]) -> Option<ToolOutput> {
    let fast = entry.fast.as_ref()?;
    let mut problems = Vec::new();
    for (k, v) in pairs {
        let Py::Str(k) = k else { return None };
        match fast.property(k) {
            Some(schema) => {
                for (rank, message) in schema.explain(v)? {
                    problems.push(Problem {
                        kind: if rank == 0 {
                            "wrong_type"
                        } else {
                            "invalid_value"
                        },
                        argument: k.to_string(),
                        message: format!("/{k}: {message}"),
                        rank: Rank::from_index(rank),
                    });
                }
            }
            None if entry.declared.is_some() => problems.push(Problem::unexpected(tool, k)),
            None => {}
        }
    }
    for name in fast.required() {
        if !pairs
            .iter()
            .any(|(k, _)| matches!(k, Py::Str(s) if &**s == name))
        {
            problems.push(Problem::missing(name));
        }
    }
    if problems.is_empty() {
        return None;
    }
    problems_output(tool, problems)
}

/// Which check a problem comes from; problems are listed by argument, then in this order, so
/// that both validation paths say the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Type,
    Enum,
    MinLength,
    MaxLength,
    Pattern,
    Minimum,
    Maximum,
    MinItems,
    MaxItems,
    Required,
    Other,
    Unexpected,
}

impl Rank {
    fn from_index(i: u8) -> Rank {
        match i {
            0 => Rank::Type,
            1 => Rank::Enum,
            2 => Rank::MinLength,
            3 => Rank::MaxLength,
            4 => Rank::Pattern,
            5 => Rank::Minimum,
            6 => Rank::Maximum,
            7 => Rank::MinItems,
            8 => Rank::MaxItems,
            _ => Rank::Other,
        }
    }
}

struct Problem {
    kind: &'static str,
    argument: String,
    message: String,
    rank: Rank,
}

impl Problem {
    fn unexpected(tool: &str, key: &str) -> Self {
        Problem {
            kind: "unexpected_argument",
            argument: key.to_string(),
            message: format!("`{key}` is not an argument of `{tool}`"),
            rank: Rank::Unexpected,
        }
    }

    fn missing(name: &str) -> Self {
        Problem {
            kind: "missing_argument",
            argument: name.to_string(),
            message: format!("the required argument `{name}` is missing"),
            rank: Rank::Required,
        }
    }
}

/// The text of a validation error: `{"error": {"type", "message", "tool", "problems": [...]}}`.
fn problems_output(tool: &str, mut problems: Vec<Problem>) -> Option<ToolOutput> {
    problems.sort_by(|a, b| (&a.argument, a.rank).cmp(&(&b.argument, b.rank)));
    let first = problems.first()?;
    let kind = if problems.iter().all(|p| p.kind == first.kind) {
        first.kind
    } else {
        "invalid_arguments"
    };
    // Written directly: this is the hot path of a model that keeps getting arguments wrong.
    // Each problem's words appear once, in `message`; `problems` says which argument and kind.
    let mut text = String::with_capacity(256);
    text.push_str("{\"error\":{\"type\":");
    push_json_str(&mut text, kind);
    text.push_str(",\"message\":");
    let mut joined = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            joined.push_str("; ");
        }
        joined.push_str(&p.message);
    }
    push_json_str(&mut text, &joined);
    text.push_str(",\"tool\":");
    push_json_str(&mut text, tool);
    text.push_str(",\"problems\":[");
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str("{\"type\":");
        push_json_str(&mut text, p.kind);
        text.push_str(",\"argument\":");
        push_json_str(&mut text, &p.argument);
        text.push('}');
    }
    text.push_str("]}}");
    Some(ToolOutput::error_text(kind, text))
}

/// Appends `s` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(off) = bytes[start..]
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
    {
        let i = start + off;
        out.push_str(&s[start..i]);
        match bytes[i] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b => {
                let _ = std::fmt::Write::write_fmt(out, format_args!("\\u{b:04x}"));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

impl<S: Send + 'static> ToolEnvironment<S> {
    /// Runs `work` on an environment holding this one's episode, on tokio's blocking pool
    /// (inline outside a runtime), and takes the episode back when it is done. If this future
    /// is dropped first, the episode stays with the work and is torn down when it returns.
    async fn off_the_workers<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut ToolEnvironment<S>) -> mtrl_core::Result<T> + Send + 'static,
    ) -> mtrl_core::Result<T> {
        let mut env = ToolEnvironment {
            shared: self.shared.clone(),
            episode: self.episode.take(),
        };
        if tokio::runtime::Handle::try_current().is_err() {
            let result = work(&mut env);
            self.episode = env.episode.take();
            return result;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = tokio::task::spawn_blocking(move || {
            let result = work(&mut env);
            let episode = env.episode.take();
            if let Err((episode, _)) = tx.send((episode, result)) {
                // Nobody waits any more (a time limit fired): end the episode here.
                env.episode = episode;
                env.end_episode();
            }
        });
        match rx.await {
            Ok((episode, result)) => {
                self.episode = episode;
                result
            }
            // The work panicked (a state or prompt function; tools' panics are caught): the
            // panic goes on from here, as it would have inline, for the driver to report.
            Err(_) => match handle.await {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                _ => Err(mtrl_core::Error::environment(
                    "the environment's work ended without an answer",
                )),
            },
        }
    }
}

impl<S> Drop for ToolEnvironment<S> {
    fn drop(&mut self) {
        self.end_episode();
    }
}

#[async_trait]
impl<S: Send + 'static> Environment for ToolEnvironment<S> {
    /// Runs the prompt and state functions off the async workers, as [`Environment::step`]
    /// runs tools.
    async fn reset(&mut self, task: &Task, episode: &Episode) -> mtrl_core::Result<Reset> {
        self.end_episode();
        let (task, episode) = (task.clone(), *episode);
        self.off_the_workers(move |env| env.reset_sync(&task, &episode))
            .await
    }

    /// Runs the step's tool calls on tokio's blocking pool, so that a slow tool neither stalls
    /// an async worker nor escapes a [`TimeLimit`](crate::layers::TimeLimit) or the driver's
    /// episode timeout: when this future is dropped at a limit, the call is abandoned, the
    /// episode's state is torn down once the call returns, and the environment needs a new
    /// `reset`. Outside a tokio runtime the calls run inline ([`ToolEnvironment::step_sync`]).
    async fn step(&mut self, action: &Message) -> mtrl_core::Result<Step> {
        if self.episode.is_none() {
            return Err(mtrl_core::Error::environment(
                "step called before reset (or after a step abandoned at a time limit)",
            ));
        }
        let action = action.clone();
        self.off_the_workers(move |env| env.step_sync(&action))
            .await
    }

    /// The builder's [`outcome`](ToolEnvironmentBuilder::outcome) snapshot of the episode's
    /// state, taken off the async workers; `None` without one, or when no episode is running.
    async fn outcome(&mut self) -> mtrl_core::Result<Option<Value>> {
        if self.shared.outcome.is_none() || self.episode.is_none() {
            return Ok(None);
        }
        self.off_the_workers(|env| {
            let (Some(snapshot), Some(episode)) = (&env.shared.outcome, &env.episode) else {
                return Ok(None);
            };
            match &episode.state {
                Some(state) => snapshot(&episode.task, state).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn close(&mut self) -> mtrl_core::Result<()> {
        self.end_episode();
        Ok(())
    }
}
