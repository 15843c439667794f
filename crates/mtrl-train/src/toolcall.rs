//! Tool-call formats: how a model writes calls in its text, and how they are read back. The
//! format is pluggable ([`ToolCallFormat`]); [`Hermes`] (`<tool_call>{…}</tool_call>`, Qwen's
//! and Hermes') and [`JsonList`] (a bare JSON list of calls) come with mtrl.

use mtrl_core::{ToolCall, ToolSpec};
use serde_json::Value;

/// Calls read out of one assistant message.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCalls {
    /// The calls, in order. A malformed call is kept with the raw text as its arguments (and
    /// an empty name when none could be read), so that the environment answers it with a
    /// structured error rather than the turn losing it.
    pub calls: Vec<ToolCall>,
    /// How many of them were malformed.
    pub malformed: usize,
}

/// A way of writing tool calls in text.
pub trait ToolCallFormat: Send + Sync {
    /// Reads the calls in `text`; never fails, never panics. `turn` numbers the call ids.
    fn parse(&self, text: &str, turn: usize) -> ParsedCalls;

    /// The instructions and tool list for a system message, for chat templates without a tool
    /// section of their own.
    fn system_section(&self, tools: &[ToolSpec]) -> String;

    /// The text a model writes to make `calls`, which [`ToolCallFormat::parse`] reads back as
    /// the same names and arguments: how demonstrations put a scripted agent's calls into the
    /// policy's own words.
    fn render(&self, calls: &[ToolCall]) -> String;
}

/// A call as the JSON text `{"name": …, "arguments": {…}}`, name first as the tool
/// instructions show it; arguments that are not JSON are kept as a string.
fn call_json(call: &ToolCall) -> String {
    let arguments = serde_json::from_str::<Value>(&call.arguments)
        .unwrap_or_else(|_| Value::String(call.arguments.clone()));
    format!(
        "{{\"name\": {}, \"arguments\": {arguments}}}",
        Value::String(call.name.clone())
    )
}

fn call_id(turn: usize, i: usize) -> String {
    format!("call_{turn}_{i}")
}

/// A call object `{"name": …, "arguments": {…}}` (also `parameters`, or OpenAI's nested
/// `function`), or `None` when it is not one.
fn call_from_value(v: &Value) -> Option<(String, String)> {
    let obj = v.get("function").filter(|f| f.is_object()).unwrap_or(v);
    let name = obj.get("name")?.as_str()?.to_string();
    let args = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "{}".to_string(),
    };
    Some((name, args))
}

fn tools_json(tools: &[ToolSpec]) -> String {
    tools
        .iter()
        .map(|t| t.to_openai().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `<tool_call>\n{"name": "…", "arguments": {…}}\n</tool_call>`, one block per call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hermes;

impl ToolCallFormat for Hermes {
    fn parse(&self, text: &str, turn: usize) -> ParsedCalls {
        let mut calls = Vec::new();
        let mut malformed = 0;
        let mut rest = text;
        while let Some(start) = rest.find("<tool_call>") {
            let body_start = start + "<tool_call>".len();
            let (body, next) = match rest[body_start..].find("</tool_call>") {
                Some(end) => (
                    &rest[body_start..body_start + end],
                    &rest[body_start + end + "</tool_call>".len()..],
                ),
                // An unclosed block runs to the end of the message.
                None => (&rest[body_start..], ""),
            };
            let id = call_id(turn, calls.len());
            match serde_json::from_str::<Value>(body.trim())
                .ok()
                .as_ref()
                .and_then(call_from_value)
            {
                Some((name, args)) => calls.push(ToolCall {
                    id,
                    name,
                    arguments: args,
                }),
                None => {
                    malformed += 1;
                    calls.push(ToolCall {
                        id,
                        name: String::new(),
                        arguments: body.trim().to_string(),
                    });
                }
            }
            rest = next;
        }
        ParsedCalls { calls, malformed }
    }

    fn system_section(&self, tools: &[ToolSpec]) -> String {
        format!(
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
             You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{}\n</tools>\n\n\
             For each function call, return a json object with function name and arguments within \
             <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": \
             <args-json-object>}}\n</tool_call>",
            tools_json(tools)
        )
    }

    fn render(&self, calls: &[ToolCall]) -> String {
        calls
            .iter()
            // `<` appears in JSON only inside strings, where `\u003c` reads back the same: a
            // `</tool_call>` in an argument cannot close the block early.
            .map(|c| {
                format!(
                    "<tool_call>\n{}\n</tool_call>",
                    call_json(c).replace('<', "\\u003c")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A message that is (or ends with) a JSON list of calls:
/// `[{"name": "…", "arguments": {…}}, …]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonList;

impl ToolCallFormat for JsonList {
    fn parse(&self, text: &str, turn: usize) -> ParsedCalls {
        let trimmed = text.trim();
        let Some(start) = trimmed.find('[') else {
            return ParsedCalls {
                calls: Vec::new(),
                malformed: 0,
            };
        };
        let candidate = &trimmed[start..];
        let Ok(Value::Array(items)) = serde_json::from_str::<Value>(candidate) else {
            // Text with brackets that is not a call list is plain text, unless it looks like
            // an attempted call list.
            let attempted = candidate.contains("\"name\"");
            return ParsedCalls {
                calls: if attempted {
                    vec![ToolCall {
                        id: call_id(turn, 0),
                        name: String::new(),
                        arguments: candidate.to_string(),
                    }]
                } else {
                    Vec::new()
                },
                malformed: usize::from(attempted),
            };
        };
        let mut calls = Vec::new();
        let mut malformed = 0;
        for (i, item) in items.iter().enumerate() {
            match call_from_value(item) {
                Some((name, args)) => calls.push(ToolCall {
                    id: call_id(turn, i),
                    name,
                    arguments: args,
                }),
                None => {
                    malformed += 1;
                    calls.push(ToolCall {
                        id: call_id(turn, i),
                        name: String::new(),
                        arguments: item.to_string(),
                    });
                }
            }
        }
        ParsedCalls { calls, malformed }
    }

    fn system_section(&self, tools: &[ToolSpec]) -> String {
        format!(
            "# Tools\n\nYou can call these functions:\n{}\n\nTo call functions, reply with only a JSON \
             list of calls: [{{\"name\": <function-name>, \"arguments\": <args-json-object>}}]",
            tools_json(tools)
        )
    }

    fn render(&self, calls: &[ToolCall]) -> String {
        let items: Vec<String> = calls.iter().map(call_json).collect();
        format!("[{}]", items.join(", "))
    }
}
