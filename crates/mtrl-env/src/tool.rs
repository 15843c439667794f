//! [`Tool`]: one simulated tool, written in Rust as a type or a closure.

use mtrl_core::{Task, ToolSpec};
use serde_json::{Map, Value};

use crate::sources::EpisodeSources;

/// What a tool call gives back to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// The text the model sees in the tool message.
    pub text: String,
    /// Whether the call failed.
    pub is_error: bool,
    /// For a failure: a short machine-readable kind (`unknown_tool`, `missing_argument`, …, or
    /// the tool's own).
    pub error_kind: Option<String>,
}

impl ToolOutput {
    /// A successful result, rendered as compact JSON.
    pub fn json(value: &Value) -> Self {
        Self::text(value.to_string())
    }

    /// A successful result given as text.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            is_error: false,
            error_kind: None,
        }
    }

    /// A failure, rendered as the structured error the model reads:
    /// `{"error": {"type": kind, "message": message}}`.
    pub fn error(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self::error_with(kind, message, Map::new())
    }

    /// A failure with extra structured fields, written after `type` and `message` in the
    /// `error` object.
    pub fn error_with(
        kind: impl Into<String>,
        message: impl Into<String>,
        extra: Map<String, Value>,
    ) -> Self {
        let kind = kind.into();
        let mut text = String::with_capacity(96);
        text.push_str("{\"error\":{\"type\":");
        push_json(&mut text, &Value::String(kind.clone()));
        text.push_str(",\"message\":");
        push_json(&mut text, &Value::String(message.into()));
        for (k, v) in &extra {
            text.push(',');
            push_json(&mut text, &Value::String(k.clone()));
            text.push(':');
            push_json(&mut text, v);
        }
        text.push_str("}}");
        Self {
            text,
            is_error: true,
            error_kind: Some(kind),
        }
    }

    /// A failure whose text is given verbatim (for tools that must reproduce an upstream's
    /// exact error text).
    pub fn error_text(kind: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            is_error: true,
            error_kind: Some(kind.into()),
        }
    }
}

fn push_json(out: &mut String, v: &Value) {
    // Serializing a `Value` cannot fail; its bytes are UTF-8.
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    out.push_str(std::str::from_utf8(&bytes).unwrap_or_default());
}

/// What a tool can reach during a call: the episode's state, its seeded sources and the task.
pub struct ToolContext<'a, S> {
    /// The episode's private state (see
    /// [`ToolEnvironmentBuilder::with_state`](crate::ToolEnvironmentBuilder::with_state)).
    pub state: &'a mut S,
    /// The episode's seeded random, clock and uuid sources.
    pub sources: &'a mut EpisodeSources,
    /// The task of the episode (trusted side: tools may read what the agent may not).
    pub task: &'a Task,
}

/// A tool the environment can serve. `S` is the per-episode state it works on (`()` for
/// stateless tools).
///
/// A tool reports failures as [`ToolOutput::error`]s the model can read and recover from. A
/// panic ends the episode with an environment error, and never the process.
///
/// A call may block (I/O, a subprocess, a slow computation): the environment runs it on
/// tokio's blocking pool, so a [`TimeLimit`](crate::layers::TimeLimit) or the driver's episode
/// timeout still holds. A call past a limit is abandoned: it finishes on its own thread, and
/// its episode's state is torn down then.
pub trait Tool<S = ()>: Send + Sync {
    /// The advertised spec.
    fn spec(&self) -> &ToolSpec;

    /// Runs one call. In strict mode the arguments have been validated against the spec.
    fn call(&self, args: &Map<String, Value>, cx: &mut ToolContext<'_, S>) -> ToolOutput;
}

/// A tool made of a spec and a closure (see [`tool_fn`]).
pub struct FnTool<F> {
    spec: ToolSpec,
    f: F,
}

/// Makes a tool from a spec and a closure.
///
/// ```
/// use mtrl_env::{tool_fn, ToolOutput};
/// use mtrl_core::ToolSpec;
/// use serde_json::json;
/// let spec = ToolSpec::new("echo", "Echoes its text.", json!({"type": "object",
///     "properties": {"text": {"type": "string"}}, "required": ["text"]}))?;
/// let echo = tool_fn(spec, |args, _cx: &mut mtrl_env::ToolContext<'_, ()>| {
///     ToolOutput::json(&args["text"])
/// });
/// # Ok::<(), mtrl_core::Error>(())
/// ```
pub fn tool_fn<S, F>(spec: ToolSpec, f: F) -> FnTool<F>
where
    F: Fn(&Map<String, Value>, &mut ToolContext<'_, S>) -> ToolOutput + Send + Sync,
{
    FnTool { spec, f }
}

impl<S, F> Tool<S> for FnTool<F>
where
    F: Fn(&Map<String, Value>, &mut ToolContext<'_, S>) -> ToolOutput + Send + Sync,
{
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call(&self, args: &Map<String, Value>, cx: &mut ToolContext<'_, S>) -> ToolOutput {
        (self.f)(args, cx)
    }
}
