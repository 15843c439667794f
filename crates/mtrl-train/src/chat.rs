//! [`ChatTemplate`]: the model's own Jinja chat template, rendered with minijinja.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use minijinja::{Environment, ErrorKind, Value as JinjaValue};
use serde_json::Value;

use crate::Error;
use crate::tokenizer::Tokenizer;

/// A chat template and the special tokens it refers to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("tools", &self.supports_tools())
            .field("chars", &self.source.len())
            .finish()
    }
}

impl ChatTemplate {
    /// A template from its Jinja source, with the bos and eos token texts it may use.
    ///
    /// # Errors
    /// [`Error::Template`] when it does not compile.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<JinjaValue, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |_fmt: String| "26 Nov 2026".to_string());
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Template(e.to_string()))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The `chat_template` of a `tokenizer_config.json`.
    ///
    /// # Errors
    /// [`Error::Io`], or [`Error::Template`] when there is no template.
    pub fn from_tokenizer_config(path: &Path, tokenizer: &Tokenizer) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Template(format!("{}: {e}", path.display())))?;
        let source = match &json["chat_template"] {
            Value::String(s) => s.clone(),
            // A list of named templates: take the default one.
            Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .or_else(|| list.first())
                .and_then(|t| t["template"].as_str())
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        if source.is_empty() {
            return Err(Error::Template(format!(
                "{} has no chat_template",
                path.display()
            )));
        }
        Self::new(
            &source,
            tokenizer.bos_token().unwrap_or_default(),
            tokenizer.eos_token().unwrap_or_default(),
        )
    }

    /// The `tokenizer.chat_template` of GGUF metadata.
    ///
    /// # Errors
    /// [`Error::Template`] when there is none or it does not compile.
    pub fn from_gguf(
        md: &HashMap<String, gguf_file::Value>,
        tokenizer: &Tokenizer,
    ) -> Result<Self, Error> {
        let source = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| Error::Template("the GGUF file has no chat template".into()))?;
        Self::new(
            source,
            tokenizer.bos_token().unwrap_or_default(),
            tokenizer.eos_token().unwrap_or_default(),
        )
    }

    /// The token that ends an assistant turn in this template (`<|im_end|>` for ChatML,
    /// `<|eot_id|>` for Llama 3): the first of the tokenizer's stop tokens the template writes
    /// right after an assistant message.
    pub fn end_of_turn(&self, tokenizer: &Tokenizer) -> Option<u32> {
        let probe = [
            serde_json::json!({"role": "user", "content": "ping"}),
            serde_json::json!({"role": "assistant", "content": "pong"}),
        ];
        let text = self.render(&probe, None, false).ok()?;
        let after = &text[text.rfind("pong")? + 4..];
        let after = after.trim_start_matches([' ', '\n']);
        tokenizer.stop_ids().iter().copied().find(|id| {
            tokenizer
                .decode(&[*id])
                .is_ok_and(|t| !t.is_empty() && after.starts_with(&t))
        })
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template renders tool definitions itself (it reads `tools`).
    pub fn supports_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// Renders `messages` (OpenAI-style JSON objects) with `tools` (OpenAI function
    /// definitions, passed only when the template supports them), optionally ending with the
    /// assistant's generation prompt.
    ///
    /// # Errors
    /// [`Error::Template`] when rendering fails (the template may raise on bad input).
    pub fn render(
        &self,
        messages: &[Value],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, Error> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        let tools = tools.filter(|t| !t.is_empty());
        let ctx = minijinja::context! {
            messages => JinjaValue::from_serialize(messages),
            tools => tools.map(JinjaValue::from_serialize),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone(),
            eos_token => self.eos.clone(),
        };
        template
            .render(ctx)
            .map_err(|e| Error::Template(format!("rendering the chat template: {e:#}")))
    }
}

/// Python's `json.dumps(value, ensure_ascii=False)` as Hugging Face's templates see it:
/// `", "` and `": "` separators, keys in the given order.
fn tojson(value: JinjaValue, indent: Option<usize>) -> Result<JinjaValue, minijinja::Error> {
    let json: Value = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_json(&json, indent, 0, &mut out);
    Ok(JinjaValue::from_safe_string(out))
}

fn write_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str(s, out),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(o) if o.is_empty() => out.push_str("{}"),
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_str(k, out);
                out.push_str(": ");
                write_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
